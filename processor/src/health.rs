//! The health endpoint, OBI's `health_check` (`port` / `OTEL_EBPF_HEALTH_CHECK_PORT`,
//! `listen_address` / `OTEL_EBPF_HEALTH_CHECK_LISTEN_ADDRESS`, default `127.0.0.1`,
//! `unix_socket_path` / `OTEL_EBPF_HEALTH_CHECK_UNIX_SOCKET_PATH`, an absolute path
//! or `@name` for an abstract socket, which wins over the port). Off by default.
//!
//! - `GET /healthz` (liveness, as OBI): `200` with a JSON object — `status` `ok`,
//!   `version`, `time_unix` (seconds), `uptime_seconds`, `loader_connected`;
//! - `GET /readyz` (readiness, tandem's addition): `200` while the processor is
//!   subscribed to the loader, else `503` with the reason — a DaemonSet's readiness
//!   probe then shows a processor cut off from its loader.
//!
//! Served by the same small HTTP/1.1 server as the Prometheus endpoint (bounded
//! connections, request size and time; `export::prometheus`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::export::prometheus::{Answer, Listener, PrometheusEndpoint, Route};

/// OBI's default `listen_address`.
pub const DEFAULT_LISTEN_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Where the endpoint listens; `port` 0 and no socket path: off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub port: u16,
    pub listen_address: IpAddr,
    pub unix_socket_path: Option<String>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            port: 0,
            listen_address: DEFAULT_LISTEN_ADDRESS,
            unix_socket_path: None,
        }
    }
}

impl HealthSettings {
    pub fn enabled(&self) -> bool {
        self.port != 0 || self.unix_socket_path.is_some()
    }
}

/// What the endpoint reports, updated by the processor's loop.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Subscribed to the loader now.
    pub connected: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            connected: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The `/healthz` body.
    pub fn liveness(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!(
            "{{\"status\":\"ok\",\"version\":\"{}\",\"time_unix\":{now},\"uptime_seconds\":{},\"loader_connected\":{}}}\n",
            env!("CARGO_PKG_VERSION"),
            self.started.elapsed().as_secs(),
            self.connected(),
        )
    }

    /// The `/readyz` answer.
    pub fn readiness(&self) -> Answer {
        let (status, body) = if self.connected() {
            ("200 OK", "{\"status\":\"ready\"}\n".to_string())
        } else {
            (
                "503 Service Unavailable",
                "{\"status\":\"not ready\",\"reason\":\"not subscribed to the loader\"}\n"
                    .to_string(),
            )
        };
        Answer {
            status,
            content_type: JSON,
            body,
        }
    }
}

const JSON: &str = "application/json";

/// An endpoint that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen on {what} for the health check (health_check / OTEL_EBPF_HEALTH_CHECK_*): {source}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("health_check.unix_socket_path / OTEL_EBPF_HEALTH_CHECK_UNIX_SOCKET_PATH {0:?} must be an absolute path or @name (an abstract socket)")]
    BadPath(String),
}

/// Starts the endpoint when `settings` ask for one (on the current Tokio runtime).
pub fn start(
    settings: &HealthSettings,
    health: Arc<Health>,
) -> Result<Option<PrometheusEndpoint>, HealthError> {
    if !settings.enabled() {
        return Ok(None);
    }
    let live = health.clone();
    let routes = vec![
        Route {
            path: "/healthz".into(),
            source: Arc::new(move || Answer {
                status: "200 OK",
                content_type: JSON,
                body: live.liveness(),
            }),
        },
        Route {
            path: "/readyz".into(),
            source: Arc::new(move || health.readiness()),
        },
    ];
    let (listener, addr) = match &settings.unix_socket_path {
        Some(path) => (Listener::Unix(bind_unix(path)?), None),
        None => {
            let addr = SocketAddr::new(settings.listen_address, settings.port);
            let bind = |source| HealthError::Bind {
                what: addr.to_string(),
                source,
            };
            let l = std::net::TcpListener::bind(addr).map_err(bind)?;
            l.set_nonblocking(true).map_err(bind)?;
            let l = tokio::net::TcpListener::from_std(l).map_err(bind)?;
            let local = l.local_addr().map_err(bind)?;
            (Listener::Tcp(l), Some(local))
        }
    };
    let shown = addr.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    if let Some(path) = &settings.unix_socket_path {
        tracing::info!(socket = %path, "health check endpoint on a Unix socket");
    }
    Ok(Some(PrometheusEndpoint::serve_on(
        listener,
        shown,
        routes,
        "health check",
    )))
}

fn bind_unix(path: &str) -> Result<tokio::net::UnixListener, HealthError> {
    use std::os::linux::net::SocketAddrExt;
    let bind = |source| HealthError::Bind {
        what: path.to_string(),
        source,
    };
    let std_listener = if let Some(name) = path.strip_prefix('@') {
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(bind)?;
        std::os::unix::net::UnixListener::bind_addr(&addr).map_err(bind)?
    } else if path.starts_with('/') {
        // A socket left by a previous run is replaced; any other file is not.
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        std::os::unix::net::UnixListener::bind(path).map_err(bind)?
    } else {
        return Err(HealthError::BadPath(path.to_string()));
    };
    std_listener.set_nonblocking(true).map_err(bind)?;
    tokio::net::UnixListener::from_std(std_listener).map_err(bind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn liveness_always_readiness_when_subscribed() {
        let health = Arc::new(Health::default());
        let settings = HealthSettings {
            port: {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            },
            ..HealthSettings::default()
        };
        let ep = start(&settings, health.clone()).unwrap().expect("enabled");
        let addr = ep.local_addr();
        assert_eq!(addr.ip(), DEFAULT_LISTEN_ADDRESS);
        let live = get(addr, "/healthz").await;
        assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
        assert!(live.contains("Content-Type: application/json"), "{live}");
        assert!(live.contains("\"loader_connected\":false"), "{live}");
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        assert!(ready.contains("not subscribed to the loader"), "{ready}");
        health.connected.store(true, Ordering::Relaxed);
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
        assert!(get(addr, "/healthz")
            .await
            .contains("\"loader_connected\":true"));
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 404 "));
        ep.shutdown().await;
    }

    #[tokio::test]
    async fn unix_socket_path_wins_and_bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("health.sock");
        let settings = HealthSettings {
            port: 9,
            unix_socket_path: Some(path.display().to_string()),
            ..HealthSettings::default()
        };
        let ep = start(&settings, Arc::new(Health::default()))
            .unwrap()
            .expect("enabled");
        let mut s = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        ep.shutdown().await;
        let bad = HealthSettings {
            unix_socket_path: Some("relative.sock".into()),
            ..HealthSettings::default()
        };
        let e = start(&bad, Arc::new(Health::default())).unwrap_err();
        assert!(e.to_string().contains("absolute path or @name"), "{e}");
        assert!(
            start(&HealthSettings::default(), Arc::new(Health::default()))
                .unwrap()
                .is_none()
        );
    }
}
