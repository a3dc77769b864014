//! Throughput against a real collector (rotel, blackhole exporter), by hand:
//!
//!     CARGO_TARGET_DIR=... cargo test --release -p tandem-processor transport_throughput \
//!         -- --ignored --nocapture
//!
//! Bodies of 512 spans (~250 KB) through an [`Exporter`] (4 in flight) for a few
//! seconds per protocol; prints spans/s and whether anything failed or was lost.
//! Environment: `TANDEM_THROUGHPUT_SECS` (default 5).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::servers::closed_port;
use super::*;

const SPANS: u64 = 512;

fn rotel_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("rotel-agent"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3 is needed to find rotel-agent");
    assert!(
        out.status.success(),
        "rotel is not installed (pip install rotel): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

struct Rotel(Child);

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "rotel does not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "throughput figures against rotel; run by hand with --release --nocapture"]
async fn transport_throughput_against_rotel() {
    let secs: u64 = std::env::var("TANDEM_THROUGHPUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (grpc_port, http_port) = (closed_port(), closed_port());
    let child = Command::new(rotel_agent())
        .arg("start")
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
        .args(["--exporter", "blackhole"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rotel-agent");
    let _rotel = Rotel(child);
    wait_listening(grpc_port);
    wait_listening(http_port);

    let bodies: Vec<Bytes> = (0..16).map(|i| traces_body(i * SPANS, SPANS)).collect();
    println!(
        "body: {SPANS} spans, {} bytes ({} bytes/span)",
        bodies[0].len(),
        bodies[0].len() as u64 / SPANS
    );
    let cases = [
        ("grpc", OtlpProtocol::Grpc, None),
        ("http/protobuf", OtlpProtocol::HttpProtobuf, None),
        ("grpc+gzip", OtlpProtocol::Grpc, Some(Compression::Gzip)),
        (
            "http/protobuf+gzip",
            OtlpProtocol::HttpProtobuf,
            Some(Compression::Gzip),
        ),
    ];
    let mut all_ok = true;
    for (name, protocol, compression) in cases {
        let endpoint = match protocol {
            OtlpProtocol::Grpc => format!("http://127.0.0.1:{grpc_port}"),
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                format!("http://127.0.0.1:{http_port}/v1/traces")
            }
        };
        let mut s = TransportSettings::new(endpoint, protocol);
        s.compression = compression;
        let exporter = Exporter::spawn(Transport::new(Signal::Traces, s).expect("transport"), 8);
        let started = Instant::now();
        let mut n = 0usize;
        while started.elapsed() < Duration::from_secs(secs) {
            let body = bodies[n % bodies.len()].clone();
            exporter.send(body, SPANS).await.expect("queued");
            n += 1;
        }
        let st = exporter.shutdown(Duration::from_secs(60)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let t = st.transport;
        let rate = t.items_exported as f64 / elapsed;
        let lost = st.items_queued - t.items_exported;
        println!(
            "{name:>20}: {:>9.0} spans/s, {:>6.1} MB/s of protobuf, {} spans in {elapsed:.2} s; \
             failed {}, rejected {}, abandoned {}, dropped {}, retries {}",
            rate,
            t.bytes_sent as f64 / elapsed / 1e6,
            t.items_exported,
            t.items_failed,
            t.items_rejected,
            st.items_abandoned,
            st.items_dropped,
            t.retries,
        );
        all_ok &= lost == 0 && st.items_dropped == 0;
    }
    assert!(all_ok, "something was lost");
}
