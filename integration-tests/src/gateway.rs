//! Helpers for the gateway-topology test (`tests/gateway.rs`, docs/gateway.md): a
//! server in a fake container reached over one of the host's own addresses, and rotel
//! collectors forwarding OTLP, one as the node-local agent, one as the gateway.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::otlp::{parse_rotel_spans, rotel_agent, CurlRun, RotelSpan};
use crate::{free_port, wait_listening, Running, PATIENCE};

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid hierarchy).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount: these tests need cgroup v2 (unified or hybrid)")
}

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

/// `ip` as the host part of a URL (`[...]` around IPv6).
pub fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A python HTTP server inside a cgroup v2 directory named like docker's
/// (`tandem-test-<pid>-<name>.slice/docker-<64 hex>.scope`): a container, as the
/// loader sees it (the id is taken from the cgroup path). It listens on `bind:port`
/// only. Dropping it stops the server and removes the cgroup directories.
pub struct ContainerServer {
    server: Option<Running>,
    cgroup: PathBuf,
    pub bind: IpAddr,
    pub port: u16,
    _www: tempfile::TempDir,
}

impl ContainerServer {
    /// Serves `pages` (path under the document root, content) on `bind`, in the
    /// cgroup of container `cid`.
    pub fn start(cid: &str, bind: IpAddr, name: &str, pages: &[(&str, &str)]) -> ContainerServer {
        let port = free_port();
        let www = tempfile::tempdir().expect("temp dir");
        for (path, content) in pages {
            let file = www.path().join(path.trim_start_matches('/'));
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).expect("create the page's directory");
            }
            std::fs::write(&file, content).expect("write page");
        }
        // One slice per server: removing it never races with another test's server.
        let slice = cgroup2_root().join(format!(
            "tandem-test-{}-{name}-{port}.slice",
            std::process::id()
        ));
        let cgroup = slice.join(format!("docker-{cid}.scope"));
        std::fs::create_dir_all(&cgroup)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", cgroup.display()));
        // The shell moves itself into the cgroup, then becomes the server: the server
        // never runs outside it, and the loader reads the container id at its start.
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec python3 -u -m http.server {port} --bind {bind} --directory {}",
            cgroup.display(),
            www.path().display()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let mut server = Running::spawn(cmd, &format!("container server {name}"));
        wait_listening(&mut server, port, PATIENCE);
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid()))
            .expect("read the server's cgroup");
        assert!(cg.contains(cid), "the server is not in its cgroup: {cg}");
        ContainerServer {
            server: Some(server),
            cgroup,
            bind,
            port,
            _www: www,
        }
    }

    pub fn pid(&self) -> i32 {
        self.server.as_ref().expect("running").pid()
    }

    /// `curl` of `path` at the server's address, with `headers`.
    pub fn get(&self, path: &str, headers: &[&str]) -> CurlRun {
        crate::otlp::curl_get(
            &format!("http://{}:{}{path}", url_host(self.bind), self.port),
            headers,
        )
    }
}

impl Drop for ContainerServer {
    fn drop(&mut self) {
        // The server first: a cgroup directory holding a process cannot be removed.
        drop(self.server.take());
        let _ = std::fs::remove_dir(&self.cgroup);
        if let Some(slice) = self.cgroup.parent() {
            let _ = std::fs::remove_dir(slice);
        }
    }
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
