//! The Prometheus scrape endpoint: `prometheus_export.port` /
//! `OTEL_EBPF_PROMETHEUS_PORT` and `prometheus_export.path` /
//! `OTEL_EBPF_PROMETHEUS_PATH` (default `/metrics`), as in OBI.
//!
//! **Serving.** It listens on `0.0.0.0:PORT` (every IPv4 interface, as OBI listens
//! on all interfaces; restrict access with a firewall or network policy). `GET` and
//! `HEAD` of the path answer `200` with the text exposition format 0.0.4; another
//! path `404`, another method `405`. One request per connection (`Connection:
//! close`). Bounds: [`MAX_CONNECTIONS`] connections at once (more wait in the
//! listen backlog), a request head of at most [`MAX_REQUEST_BYTES`] (else `431`),
//! [`READ_TIMEOUT`] to send it (else the connection is closed), [`WRITE_TIMEOUT`]
//! to take the answer.
//!
//! **Content.** Each path renders what its source holds now: the applications'
//! metrics ([`crate::pipeline::metrics::MetricsRegistry::snapshot`], cumulative, the
//! same values the OTLP push sends) and, when `internal_metrics` asks for them on
//! this port, tandem's own at their path; [`render`] says how they are named.

pub(crate) mod render;
#[cfg(test)]
mod tests;

pub use render::{label_name, metric_name, render};

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::pipeline::metrics::MetricsRegistry;

/// The path served when none is configured (OBI's).
pub const DEFAULT_PATH: &str = "/metrics";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait, after answering, for the client to close (reading what it still sends).
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An endpoint that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error(
        "cannot listen on {addr} for the Prometheus endpoint (prometheus_export.port / \
         OTEL_EBPF_PROMETHEUS_PORT): {source}; choose a free port"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("prometheus_export.path / OTEL_EBPF_PROMETHEUS_PATH {path:?} must start with '/' and contain no '?', '#' or spaces")]
    BadPath { path: String },
    #[error("the Prometheus endpoint on port {port} would serve {path:?} twice (prometheus_export.path and internal_metrics.prometheus.path must differ when they share a port)")]
    SamePath { port: u16, path: String },
}

/// What a path answers now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status line after `HTTP/1.1 ` (`200 OK`).
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

/// What one path of the endpoint serves: its answer now.
pub type Source = Arc<dyn Fn() -> Answer + Send + Sync>;

/// One path and its source.
#[derive(Clone)]
pub struct Route {
    pub path: String,
    pub source: Source,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("path", &self.path).finish()
    }
}

impl Route {
    /// `path` answering `200` with the text exposition of what `text` renders.
    pub fn text(path: &str, text: impl Fn() -> String + Send + Sync + 'static) -> Route {
        Route {
            path: path.to_string(),
            source: Arc::new(move || Answer {
                status: "200 OK",
                content_type: CONTENT_TYPE,
                body: text(),
            }),
        }
    }

    /// `path` (empty: [`DEFAULT_PATH`]) serving the applications' metrics of
    /// `registry`.
    pub fn registry(path: &str, registry: Arc<Mutex<MetricsRegistry>>) -> Route {
        let path = if path.is_empty() { DEFAULT_PATH } else { path };
        Route::text(path, move || match registry.lock() {
            Ok(r) => render(&r.snapshot()),
            Err(_) => String::new(),
        })
    }
}

/// The running endpoint; stops when shut down or dropped.
#[derive(Debug)]
pub struct PrometheusEndpoint {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl PrometheusEndpoint {
    /// Listens on `0.0.0.0:port` (`port` 0: a free port) and serves `registry` at
    /// `path` (empty: [`DEFAULT_PATH`]) on the current Tokio runtime.
    pub fn start(
        port: u16,
        path: &str,
        registry: Arc<Mutex<MetricsRegistry>>,
    ) -> Result<Self, PrometheusError> {
        Self::serve_routes(port, vec![Route::registry(path, registry)])
    }

    /// Listens on `0.0.0.0:port` and serves each route at its path.
    pub fn serve_routes(port: u16, routes: Vec<Route>) -> Result<Self, PrometheusError> {
        check_routes(port, &routes)?;
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let bind = |source| PrometheusError::Bind { addr, source };
        let listener = StdTcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let listener = TcpListener::from_std(listener).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let endpoint = Self::serve_on(Listener::Tcp(listener), addr, routes, "Prometheus");
        Ok(endpoint)
    }

    /// Serves `routes` on `listener` (`addr` is what it listens on, for the log).
    pub fn serve_on(
        listener: Listener,
        addr: SocketAddr,
        routes: Vec<Route>,
        what: &'static str,
    ) -> Self {
        let paths: Vec<String> = routes.iter().map(|r| r.path.clone()).collect();
        let path = paths.join(",");
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::new(routes), stop.clone()));
        match what {
            "Prometheus" => info!(%addr, paths = %path, "Prometheus endpoint listening"),
            _ => info!(%addr, paths = %path, "{what} endpoint listening"),
        }
        PrometheusEndpoint {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening; a scrape being answered finishes within its timeouts.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                debug!("Prometheus endpoint task: {e}");
            }
        }
    }
}

impl Drop for PrometheusEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every path well formed and served once.
fn check_routes(port: u16, routes: &[Route]) -> Result<(), PrometheusError> {
    for (i, r) in routes.iter().enumerate() {
        let path = r.path.as_str();
        if !path.starts_with('/') || path.contains(['?', '#', ' ', '\r', '\n', '\t']) {
            return Err(PrometheusError::BadPath {
                path: path.to_string(),
            });
        }
        if routes[..i].iter().any(|o| o.path == r.path) {
            return Err(PrometheusError::SamePath {
                port,
                path: path.to_string(),
            });
        }
    }
    Ok(())
}

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Box<dyn Stream>, String)> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, peer)| (Box::new(s) as Box<dyn Stream>, peer.to_string())),
            Listener::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| (Box::new(s) as Box<dyn Stream>, "unix socket".to_string())),
        }
    }
}

/// A connection of either kind.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn serve(listener: Listener, routes: Arc<Vec<Route>>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let routes = routes.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &routes).await {
                        debug!(%peer, "Prometheus scrape connection: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                warn!("Prometheus endpoint cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    debug!("Prometheus endpoint stopped");
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// Route number `route`.
    Metrics {
        route: usize,
        head_only: bool,
    },
    NotFound,
    BadMethod,
    Malformed,
    TooLarge,
}

/// Reads one request head (bounded in size and time) and answers it.
async fn answer(mut stream: Box<dyn Stream>, routes: &[Route]) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let request = match head {
        Head::Complete(bytes) => parse(&bytes, routes),
        Head::TooLarge => Request::TooLarge,
    };
    let mut content_type = "text/plain; charset=utf-8";
    let (status, extra, body, head_only) = match request {
        Request::Metrics { route, head_only } => {
            let source = routes.get(route).map(|r| r.source.clone());
            let a = tokio::task::spawn_blocking(move || source.map(|s| s()))
                .await
                .map_err(std::io::Error::other)?
                .unwrap_or(Answer {
                    status: "404 Not Found",
                    content_type: "text/plain; charset=utf-8",
                    body: String::new(),
                });
            content_type = a.content_type;
            (a.status, "", a.body, head_only)
        }
        Request::NotFound => {
            let paths: Vec<&str> = routes.iter().map(|r| r.path.as_str()).collect();
            (
                "404 Not Found",
                "",
                format!("not found; metrics are at {}\n", paths.join(", ")),
                false,
            )
        }
        Request::BadMethod => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD\n".to_string(),
            false,
        ),
        Request::Malformed => ("400 Bad Request", "", "bad request\n".to_string(), false),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "request head too large\n".to_string(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client too slow to take the answer",
            ))
        }
    }
    // Lingering close: closing with unread request bytes would reset the connection
    // and could destroy the answer before the client read it (a refused request
    // whose head was too large).
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
}

/// The bytes up to the end of the request head; `None` if the client went away first.
async fn read_head(stream: &mut Box<dyn Stream>) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf[searched_from..], b"\r\n\r\n") {
            buf.truncate(searched_from + end);
            return Ok(Some(Head::Complete(buf)));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Some(Head::TooLarge));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(head: &[u8], routes: &[Route]) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Malformed;
    };
    let line = text.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::Malformed;
    }
    let target_path = target.split(['?', '#']).next().unwrap_or_default();
    let Some(route) = routes.iter().position(|r| r.path == target_path) else {
        return Request::NotFound;
    };
    match method {
        "GET" => Request::Metrics {
            route,
            head_only: false,
        },
        "HEAD" => Request::Metrics {
            route,
            head_only: true,
        },
        _ => Request::BadMethod,
    }
}
