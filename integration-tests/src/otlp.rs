//! Helpers for the OTLP export tests (`tests/otlp.rs`): a real OTLP receiver, a
//! processor exporting to it, curl reporting its source port.
//!
//! The receiver is `testdata/otlp_receiver.py`, a servicer built on PyPI's `grpcio`
//! and `opentelemetry-proto` (installed by `scripts/setup.sh`): it decodes what the
//! processor sends with the OpenTelemetry project's own protobuf definitions, over
//! OTLP/gRPC and OTLP/HTTP protobuf, and prints one JSON line per span and per metric.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{processor_bin, Running, PATIENCE};

/// The OTLP transports the processor exports with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn env_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// The receiver's name for it (`transport` of each record).
    pub fn transport(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http",
        }
    }
}

/// The receiver script.
pub fn receiver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/otlp_receiver.py")
}

/// A running OTLP receiver and every record it printed so far.
pub struct Receiver {
    pub process: Running,
    pub grpc_port: u16,
    pub http_port: u16,
    /// Every span and metric record received so far, in arrival order.
    pub records: Vec<Value>,
}

impl Receiver {
    /// A receiver on ephemeral ports.
    pub fn start() -> Receiver {
        Self::start_on(0, 0)
    }

    /// A receiver on the given ports (0: ephemeral), once both listen.
    pub fn start_on(grpc_port: u16, http_port: u16) -> Receiver {
        Self::start_with(grpc_port, http_port, &[])
    }

    /// A receiver listening with TLS on both ports (ephemeral): `cert`/`key` its
    /// certificate; with `client_ca`, clients must present a certificate it signed.
    pub fn start_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Receiver {
        let mut env = vec![("RECEIVER_TLS_CERT", cert), ("RECEIVER_TLS_KEY", key)];
        if let Some(ca) = client_ca {
            env.push(("RECEIVER_CLIENT_CA", ca));
        }
        Self::start_with(0, 0, &env)
    }

    fn start_with(grpc_port: u16, http_port: u16, env: &[(&str, &Path)]) -> Receiver {
        let probe = Command::new("python3")
            .args(["-c", "import grpc, opentelemetry.proto"])
            .output()
            .expect("python3 is needed for the OTLP receiver");
        assert!(
            probe.status.success(),
            "python3 lacks grpcio/opentelemetry-proto (run scripts/setup.sh, or pip install \
             grpcio opentelemetry-proto): {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(receiver_script())
            .arg(grpc_port.to_string())
            .arg(http_port.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = Running::spawn(cmd, "otlp_receiver.py");
        let Some(ready) = process.stdout.next(PATIENCE) else {
            panic!(
                "the OTLP receiver did not start; stderr:\n{}",
                process.stderr.text()
            );
        };
        let ports: Vec<u16> = ready
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected first receiver line {ready:?}"))
            .split(' ')
            .map(|p| p.parse().expect("receiver port"))
            .collect();
        if grpc_port != 0 {
            assert_eq!(ports, [grpc_port, http_port], "receiver ports");
        }
        Receiver {
            process,
            grpc_port: ports[0],
            http_port: ports[1],
            records: Vec::new(),
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for `protocol` (the processor appends
    /// `/v1/traces` and `/v1/metrics` for HTTP).
    pub fn endpoint(&self, protocol: Protocol) -> String {
        endpoint(protocol, self.grpc_port, self.http_port)
    }

    fn push(&mut self, line: &str) {
        let v = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("bad JSON line from the receiver {line:?}: {e}"));
        self.records.push(v);
    }

    /// Reads records until `done(all records so far)` holds; panics after `timeout`
    /// naming `what`, with what was received and `context` (e.g. processor logs).
    pub fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        context: &dyn Fn() -> String,
        done: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(line) = self.process.stdout.next(Duration::ZERO) {
                self.push(&line);
            }
            if done(&self.records) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .process
                .stdout
                .next(left.min(Duration::from_millis(200)))
            {
                Some(line) => self.push(&line),
                None if left.is_zero() => panic!(
                    "timed out after {timeout:?} waiting for {what}; received:\n{}\n\
                     receiver stderr:\n{}\n{}",
                    self.dump(),
                    self.process.stderr.text(),
                    context()
                ),
                None => {}
            }
        }
    }

    /// Reads whatever arrives for `period`.
    pub fn settle(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(line) = self.process.stdout.next(left) {
                self.push(&line);
            }
        }
    }

    /// The span records received so far.
    pub fn spans(&self) -> Vec<&Value> {
        spans(&self.records)
    }

    /// Everything received so far, one record per line (for assertion messages).
    pub fn dump(&self) -> String {
        self.records
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The endpoint of a receiver listening on these ports.
pub fn endpoint(protocol: Protocol, grpc_port: u16, http_port: u16) -> String {
    match protocol {
        Protocol::Grpc => format!("http://127.0.0.1:{grpc_port}"),
        Protocol::HttpProtobuf => format!("http://127.0.0.1:{http_port}"),
    }
}

/// The span records among `records`.
pub fn spans(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["signal"] == "traces").collect()
}

/// The latest data point (metrics are cumulative) of histogram `metric` from the
/// process `pid` whose attributes equal `attributes` exactly; `None` before one came.
pub fn latest_point<'a>(
    records: &'a [Value],
    metric: &str,
    pid: i64,
    attributes: &Value,
) -> Option<&'a Value> {
    records
        .iter()
        .rev()
        .filter(|r| {
            r["signal"] == "metrics" && r["name"] == metric && r["resource"]["process.pid"] == pid
        })
        .find_map(|r| {
            r["points"]
                .as_array()?
                .iter()
                .find(|p| &p["attributes"] == attributes)
        })
}

/// The `count` of [`latest_point`], 0 before one came.
pub fn latest_count(records: &[Value], metric: &str, pid: i64, attributes: &Value) -> u64 {
    latest_point(records, metric, pid, attributes)
        .and_then(|p| p["count"].as_u64())
        .unwrap_or(0)
}

/// Writes an OBI-style YAML configuration file.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("obi-config.yml");
    std::fs::write(&path, yaml).expect("write the configuration file");
    path
}

/// The environment of a processor exporting to `receiver` over OTLP/gRPC and
/// selecting the processes that use `port`.
pub fn grpc_export_env(receiver: &Receiver, port: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            receiver.endpoint(Protocol::Grpc),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_EBPF_OPEN_PORT", port.to_string()),
    ]
}

/// The standard error of each of `parts` under its name: what a failed wait shows.
pub fn stderr_of(parts: &[(&str, &Running)]) -> String {
    parts
        .iter()
        .map(|(name, p)| format!("{name}:\n{}", p.stderr.text()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A processor with `--config config`, printing nothing on stdout, with the extra
/// environment `env`; returned once subscribed.
pub fn start_exporting_processor(
    socket: &Path,
    name: &str,
    config: &Path,
    env: &[(&str, String)],
) -> Running {
    let mut cmd = Command::new(processor_bin());
    cmd.arg("--socket")
        .arg(socket)
        .args(["--name", name, "--print", "none", "--config"])
        .arg(config);
    // Nothing from the test's own environment decides what the processor does.
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = Running::spawn(cmd, &format!("tandem-processor {name}"));
    p.stderr
        .wait_for("connected to loader; subscribed", PATIENCE);
    p
}

/// The file name of a process's executable, as the loader reports it.
pub fn exe_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/<pid>/exe")
}

/// This machine's host name, as the processor reports it (`host.name`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The resource the processor exports a live process's spans and metrics under, with
/// tandem's own decoration off: its executable (read from /proc now), pid and host.
pub fn process_resource(pid: i32) -> Value {
    let exe = exe_of(pid);
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .expect("exe name")
        .to_string();
    let host = host_name();
    json!({
        "host.name": host,
        "process.executable.name": name,
        "process.executable.path": exe.to_str().expect("exe path"),
        "process.pid": pid,
        "service.instance.id": format!("{host}-{pid}"),
        "service.name": name,
        "telemetry.sdk.name": "tandem",
        "telemetry.sdk.version": env!("CARGO_PKG_VERSION"),
    })
}

/// What one curl run did.
#[derive(Debug)]
pub struct CurlRun {
    pub pid: i64,
    /// The client's source port.
    pub local_port: u16,
    pub status: u16,
    pub body: String,
}

/// `curl -sS URL` with extra `headers`; panics when curl fails.
pub fn curl_get(url: &str, headers: &[&str]) -> CurlRun {
    let args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h]).collect();
    curl_with(url, &args)
}

/// `curl -sS ARGS URL` (e.g. `-k`, `-H ...`); panics when curl fails.
pub fn curl_with(url: &str, args: &[&str]) -> CurlRun {
    let body_file = tempfile::NamedTempFile::new().expect("temp file");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-o"])
        .arg(body_file.path())
        .args(["-w", "%{local_port} %{http_code}"])
        .args(args);
    let child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start curl");
    let pid = i64::from(child.id());
    let out = child.wait_with_output().expect("wait for curl");
    assert!(
        out.status.success(),
        "curl {url} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let written = String::from_utf8_lossy(&out.stdout).to_string();
    let (port, status) = written
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected curl -w output {written:?}"));
    CurlRun {
        pid,
        local_port: port.parse().expect("curl local_port"),
        status: status.parse().expect("curl http_code"),
        body: std::fs::read_to_string(body_file.path()).expect("read curl's body"),
    }
}

/// The processor's exit summary (the `processor stopped after ...:` line and the
/// lines after it), after stopping it.
pub fn stop_and_summary(processor: &mut Running) -> String {
    let status = processor.stop();
    assert!(
        status.success(),
        "processor exit {status}; stderr:\n{}",
        processor.stderr.text()
    );
    processor.stderr.wait_for("processor stopped", PATIENCE);
    let text = processor.stderr.text();
    text.find("processor stopped")
        .map(|i| text[i..].to_string())
        .unwrap_or(text)
}

/// The `rotel-agent` executable of PyPI's `rotel` (an OpenTelemetry collector written
/// in Rust, installed by `scripts/setup.sh`): on PATH, or inside the python package.
pub fn rotel_agent() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("rotel-agent"))
            .find(|p| p.is_file())
        {
            return p;
        }
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
        "rotel is not installed (run scripts/setup.sh, or pip install rotel): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "no rotel-agent at {}", path.display());
    path
}

/// A `rotel-agent` collector receiving OTLP on 127.0.0.1 (gRPC and HTTP), exporting
/// to nowhere, logging every span it receives in detail on stdout.
pub struct Rotel {
    pub process: Running,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Rotel {
    /// Starts it on two free ports; returns once both listen.
    pub fn start() -> Rotel {
        let (grpc_port, http_port) = (crate::free_port(), crate::free_port());
        let mut cmd = Command::new(rotel_agent());
        cmd.arg("start")
            .arg("--otlp-grpc-endpoint")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(["--exporter", "blackhole", "--debug-log", "traces"])
            .args(["--debug-log-verbosity", "detailed"]);
        let mut process = Running::spawn(cmd, "rotel-agent");
        crate::wait_listening(&mut process, grpc_port, PATIENCE);
        crate::wait_listening(&mut process, http_port, PATIENCE);
        Rotel {
            process,
            grpc_port,
            http_port,
        }
    }

    pub fn endpoint(&self, protocol: Protocol) -> String {
        endpoint(protocol, self.grpc_port, self.http_port)
    }

    /// The spans rotel logged so far, parsed from its detailed debug output.
    pub fn spans(&self) -> Vec<RotelSpan> {
        parse_rotel_spans(&self.process.stdout.text())
    }
}

/// One span as rotel's detailed debug exporter prints it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RotelSpan {
    pub resource: serde_json::Map<String, Value>,
    pub scope: String,
    pub trace_id: String,
    pub parent_id: String,
    pub span_id: String,
    pub name: String,
    /// `SPAN_KIND_SERVER`, ...
    pub kind: String,
    pub start: u64,
    pub end: u64,
    /// `STATUS_CODE_UNSET`, ...
    pub status: String,
    pub attributes: serde_json::Map<String, Value>,
}

/// `Str(x)`, `Int(1)`, `Bool(true)`, `Double(0.5)` as JSON.
fn rotel_value(text: &str) -> Value {
    let (kind, rest) = text.split_once('(').unwrap_or(("", text));
    let inner = rest.strip_suffix(')').unwrap_or(rest);
    match kind {
        "Int" => inner.parse::<i64>().map_or(Value::Null, Value::from),
        "Double" => inner.parse::<f64>().map_or(Value::Null, Value::from),
        "Bool" => Value::from(inner == "true"),
        "Str" => Value::from(inner),
        _ => Value::from(text),
    }
}

/// Parses the `ResourceSpans` sections of rotel's `--debug-log-verbosity detailed`
/// output (the format of the OpenTelemetry collector's debug exporter).
pub fn parse_rotel_spans(text: &str) -> Vec<RotelSpan> {
    #[derive(PartialEq)]
    enum At {
        Elsewhere,
        ResourceAttributes,
        Span,
        SpanAttributes,
    }
    let mut spans: Vec<RotelSpan> = Vec::new();
    let mut in_traces = false;
    let mut at = At::Elsewhere;
    let mut resource = serde_json::Map::new();
    let mut scope = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if line.starts_with("ResourceSpans #") {
            in_traces = true;
            at = At::Elsewhere;
            resource = serde_json::Map::new();
            continue;
        }
        if line.starts_with("Resource") && !line.starts_with("ResourceSpans") && line.contains('#')
        {
            // ResourceMetrics / ResourceLogs.
            in_traces = false;
            continue;
        }
        if !in_traces {
            continue;
        }
        if line == "Resource attributes:" {
            at = At::ResourceAttributes;
        } else if let Some(s) = line.strip_prefix("InstrumentationScope ") {
            scope = s.to_string();
            at = At::Elsewhere;
        } else if line.starts_with("Span #") {
            spans.push(RotelSpan {
                resource: resource.clone(),
                scope: scope.clone(),
                ..Default::default()
            });
            at = At::Span;
        } else if line == "Attributes:" && at != At::Elsewhere {
            at = At::SpanAttributes;
        } else if let Some(kv) = trimmed.strip_prefix("-> ") {
            let Some((k, v)) = kv.split_once(": ") else {
                continue;
            };
            match at {
                At::ResourceAttributes => {
                    resource.insert(k.to_string(), rotel_value(v));
                }
                At::SpanAttributes => {
                    if let Some(s) = spans.last_mut() {
                        s.attributes.insert(k.to_string(), rotel_value(v));
                    }
                }
                _ => {}
            }
        } else if at == At::Span {
            let Some(s) = spans.last_mut() else { continue };
            let Some((k, v)) = trimmed.split_once(':') else {
                continue;
            };
            let v = v.trim().to_string();
            match k.trim() {
                "Trace ID" => s.trace_id = v,
                "Parent ID" => s.parent_id = v,
                "ID" => s.span_id = v,
                "Name" => s.name = v,
                "Kind" => s.kind = v,
                "Start time" => s.start = v.parse().unwrap_or(0),
                "End time" => s.end = v.parse().unwrap_or(0),
                "Status code" => s.status = v,
                _ => {}
            }
        } else if !line.starts_with(' ') {
            // Events:, Links:, ScopeSpans #, ...
            at = At::Elsewhere;
        }
    }
    spans
}
