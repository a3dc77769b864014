//! Helpers for the gateway-topology test (`tests/gateway.rs`, docs/gateway.md): one of
//! the host's own addresses, for the server in a fake container
//! (`crate::container::ContainerServer`) to listen on, and rotel collectors forwarding
//! OTLP, one as the node-local agent, one as the gateway.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use crate::otlp::{parse_rotel_spans, rotel_agent, RotelSpan};
use crate::{free_port, wait_listening, Running, PATIENCE};

/// One of this host's own non-loopback addresses (what a pod's IP is to the pod):
/// the first global-scope IPv4 address `ip -o addr` lists, else the first global
/// IPv6 one that is usable (not tentative, deprecated or failed DAD). `None` when the
/// host has none (or `ip` is missing).
pub fn host_address() -> Option<IpAddr> {
    let out = Command::new("ip")
        .args(["-o", "addr", "show", "scope", "global", "up"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `4: eth0    inet 192.0.2.2/24 brd ... scope global eth0\ ...`
    let addrs: Vec<IpAddr> = text
        .lines()
        .filter(|l| {
            !["tentative", "deprecated", "dadfailed"]
                .iter()
                .any(|w| l.contains(w))
        })
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = f.iter().position(|w| *w == "inet" || *w == "inet6")?;
            f.get(at + 1)?.split('/').next()?.parse::<IpAddr>().ok()
        })
        .filter(|ip| !ip.is_loopback())
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

/// A rotel collector receiving OTLP on 127.0.0.1 (gRPC and HTTP) and forwarding
/// everything over OTLP/gRPC (`--exporter otlp`) to another collector or a backend,
/// adding the gRPC metadata `x-tandem-hop: <name>` to what it sends (so the next hop
/// can tell where data came from); it logs every span it forwards (detailed debug
/// output). Its pid and log files are in `dir`, so collectors run side by side.
pub struct Collector {
    pub name: String,
    pub process: Running,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Collector {
    /// Starts collector `name` forwarding to `to` (`http://host:port`, OTLP/gRPC);
    /// returns once it listens.
    pub fn forwarding(dir: &Path, name: &str, to: &str) -> Collector {
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut cmd = Command::new(rotel_agent());
        cmd.args(collector_args(name, grpc_port, http_port, to))
            .arg("--pid-file")
            .arg(dir.join(format!("rotel-{name}.pid")))
            .arg("--log-file")
            .arg(dir.join(format!("rotel-{name}.log")));
        let mut process = Running::spawn(cmd, &format!("rotel-agent ({name})"));
        wait_listening(&mut process, grpc_port, PATIENCE);
        wait_listening(&mut process, http_port, PATIENCE);
        Collector {
            name: name.to_owned(),
            process,
            grpc_port,
            http_port,
        }
    }

    /// Its OTLP/gRPC endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The spans it logged so far.
    pub fn spans(&self) -> Vec<RotelSpan> {
        parse_rotel_spans(&self.process.stdout.text())
    }

    /// Its output, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "{} stdout:\n{}\n{} stderr:\n{}",
            self.name,
            self.process.stdout.text(),
            self.name,
            self.process.stderr.text()
        )
    }
}

/// `rotel-agent` arguments of a forwarding collector (the command docs/gateway.md
/// shows, minus the pid and log files).
pub fn collector_args(name: &str, grpc_port: u16, http_port: u16, to: &str) -> Vec<String> {
    [
        "start",
        "--otlp-grpc-endpoint",
        &format!("127.0.0.1:{grpc_port}"),
        "--otlp-http-endpoint",
        &format!("127.0.0.1:{http_port}"),
        "--exporter",
        "otlp",
        "--otlp-exporter-endpoint",
        to,
        "--otlp-exporter-protocol",
        "grpc",
        "--otlp-exporter-custom-headers",
        &format!("x-tandem-hop={name}"),
        "--debug-log",
        "traces",
        "--debug-log-verbosity",
        "detailed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
