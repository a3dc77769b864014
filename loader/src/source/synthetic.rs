//! The synthetic source: deterministic, clearly labelled demo traffic of one HTTP
//! server process (pid 4242, `/usr/local/bin/demo-server` on port 8080). It exists to
//! make capture files for demos and processor benchmarks without any privilege; it is
//! never used to stand in for the kernel source in tests of capture.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tandem_proto::v1::{self, Direction, Role, SocketAddress};
use tandem_proto::{Event, EventKind};
use tracing::info;

use super::{probe, wait_for_subscribers, EventSource, SourceContext};
use crate::clock::monotonic_ns;

pub const DEMO_PID: u32 = 4242;
pub const DEMO_PORT: u32 = 8080;
pub const DEMO_EXE: &str = "/usr/local/bin/demo-server";

/// Emits `requests` HTTP/1.1 exchanges, each on its own connection.
pub struct SyntheticSource {
    pub requests: u64,
    /// Requests per second; 0 means as fast as possible.
    pub rate: f64,
    pub wait_subscribers: usize,
}

/// The events of the demo process's start.
pub fn process_start(mono_ns: u64) -> Event {
    Event {
        seq: 0,
        mono_ns,
        kind: Some(EventKind::ProcessStarted(v1::ProcessStarted {
            pid: DEMO_PID,
            ppid: 1,
            exe_path: DEMO_EXE.into(),
            cmdline: vec![DEMO_EXE.into(), "--port".into(), DEMO_PORT.to_string()],
            cgroup_path: "/system.slice/demo-server.service".into(),
            container_id: String::new(),
            pid_namespace: 4026531836,
            uid: 1000,
            preexisting: true,
            otel_env: Vec::new(),
            comm: String::new(),
            ports: Vec::new(),
        })),
    }
}

/// The events of request number `i`: open, request, response, close.
pub fn exchange(i: u64, mono_ns: u64) -> Vec<Event> {
    let conn_id = 1_000 + i;
    let client_port = 40_000 + (i % 20_000) as u32;
    let path = match i % 4 {
        0 => format!("/users/{}", i % 97),
        1 => "/health".to_string(),
        2 => format!("/orders/{}/items?page={}", i % 31, i % 3),
        _ => "/missing".to_string(),
    };
    let status = if i % 4 == 3 {
        "404 Not Found"
    } else {
        "200 OK"
    };
    let body = format!("{{\"request\":{i}}}");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{DEMO_PORT}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let ip = bytes::Bytes::from_static(&[127, 0, 0, 1]);
    let ev = |offset: u64, kind: EventKind| Event {
        seq: 0,
        mono_ns: mono_ns + offset,
        kind: Some(kind),
    };
    let data = |direction: Direction, bytes: String| v1::Data {
        pid: DEMO_PID,
        tid: DEMO_PID,
        conn_id,
        direction: direction as i32,
        total_len: bytes.len() as u64,
        payload: bytes.into_bytes().into(),
        truncated: false,
        ..Default::default()
    };
    vec![
        ev(
            0,
            EventKind::ConnectionOpened(v1::ConnectionOpened {
                pid: DEMO_PID,
                tid: DEMO_PID,
                conn_id,
                local: Some(SocketAddress {
                    ip: ip.clone(),
                    port: DEMO_PORT,
                }),
                peer: Some(SocketAddress {
                    ip,
                    port: client_port,
                }),
                role: Role::Server as i32,
                preexisting: false,
            }),
        ),
        ev(20_000, EventKind::Data(data(Direction::Ingress, request))),
        ev(850_000, EventKind::Data(data(Direction::Egress, response))),
        ev(
            900_000,
            EventKind::ConnectionClosed(v1::ConnectionClosed {
                pid: DEMO_PID,
                tid: DEMO_PID,
                conn_id,
            }),
        ),
    ]
}

impl SyntheticSource {
    async fn generate(self, ctx: SourceContext) -> anyhow::Result<()> {
        let hub = ctx.sink.clone();
        hub.set_probes(vec![probe("synthetic:demo-server", "synthetic", Ok(()))]);
        if !wait_for_subscribers(&ctx, self.wait_subscribers).await? {
            return Ok(());
        }
        info!(
            requests = self.requests,
            rate = self.rate,
            "synthetic traffic started"
        );
        let start = monotonic_ns();
        // Every publish first waits for room in the subscribers' queues: at once when
        // serving, while the file writer catches up when recording (backpressure).
        hub.wait_for_room(1).await;
        hub.publish(vec![process_start(start)]);
        let mut ticker = (self.rate > 0.0)
            .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate)));
        for i in 0..self.requests {
            if let Some(t) = ticker.as_mut() {
                tokio::select! {
                    _ = t.tick() => {}
                    _ = ctx.shutdown.cancelled() => break,
                }
            } else if ctx.shutdown.is_cancelled() {
                break;
            } else if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
            let events = exchange(i, start + i * 1_000_000);
            tokio::select! {
                _ = hub.wait_for_room(events.len()) => {}
                _ = ctx.shutdown.cancelled() => break,
            }
            hub.publish(events);
        }
        info!(requests = self.requests, "synthetic traffic finished");
        Ok(())
    }
}

impl EventSource for SyntheticSource {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>> {
        self.generate(ctx).boxed()
    }
}
