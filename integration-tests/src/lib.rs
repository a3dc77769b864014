//! Helpers shared by the end-to-end tests: build and start the real binaries, read
//! their output, and talk to the loader over its real Unix socket.

pub mod container;
pub mod db;
pub mod fake_apiserver;
pub mod gateway;
pub mod golang;
pub mod otlp;
pub mod pki;

pub use pki::{make_pki, Pki};

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_proto::v1::loader_client::LoaderClient;
use tandem_proto::v1::{InfoRequest, InfoResponse};

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Directory holding the workspace's binaries, built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-q",
            "-p",
            "tandem-loader",
            "-p",
            "tandem-processor",
            "-p",
            "tandem-integration-tests",
            "--bin",
            "tandem-loader",
            "--bin",
            "tandem-processor",
            "--bin",
            "tandem-test-server",
            "--bin",
            "tandem-grpc-server",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the binaries");
        assert!(
            status.success(),
            "cargo build of tandem-loader/tandem-processor/tandem-test-server failed"
        );
        profile_dir
    })
}

pub fn loader_bin() -> PathBuf {
    bin_dir().join("tandem-loader")
}

pub fn processor_bin() -> PathBuf {
    bin_dir().join("tandem-processor")
}

/// The integration tests' hyper server (`src/bin/tandem-test-server.rs`).
pub fn test_server_bin() -> PathBuf {
    bin_dir().join("tandem-test-server")
}

/// The HTTP/2 tests' tonic gRPC server/client and h2c server
/// (`src/bin/tandem-grpc-server.rs`).
pub fn grpc_server_bin() -> PathBuf {
    bin_dir().join("tandem-grpc-server")
}

/// Lines a child wrote to one of its pipes, collected by a thread.
#[derive(Clone)]
pub struct Lines {
    all: Arc<Mutex<Vec<String>>>,
    rx: Arc<Mutex<Receiver<String>>>,
}

impl Lines {
    fn spawn(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = all.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                keep.lock().expect("lines lock").push(line.clone());
                if tx.send(line).is_err() {
                    // Nobody reads the stream any more; keep collecting into `all`.
                }
            }
        });
        Lines {
            all,
            rx: Arc::new(Mutex::new(rx)),
        }
    }

    /// Everything so far, joined.
    pub fn text(&self) -> String {
        self.all.lock().expect("lines lock").join("\n")
    }

    /// The next line not yet taken with `next`, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.rx.lock().expect("rx lock").recv_timeout(timeout).ok()
    }

    /// Waits until some line (seen before or after the call) contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .all
                .lock()
                .expect("lines lock")
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for a line containing {needle:?}; got:\n{}",
                self.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.all
            .lock()
            .expect("lines lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// A running binary whose stdout and stderr are collected. Killed on drop.
pub struct Running {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    name: String,
}

impl Running {
    pub fn spawn(mut cmd: Command, name: &str) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("TANDEM_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Lines::spawn(child.stdout.take().expect("stdout piped"));
        let stderr = Lines::spawn(child.stderr.take().expect("stderr piped"));
        Running {
            child,
            stdout,
            stderr,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .unwrap_or_else(|e| panic!("cannot signal {}: {e}", self.name));
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(PATIENCE)
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loader started with `args` on a socket in `dir`.
pub fn start_loader(socket: &Path, args: &[&str]) -> Running {
    let mut cmd = Command::new(loader_bin());
    cmd.arg("--socket").arg(socket).args(args);
    let loader = Running::spawn(cmd, "tandem-loader");
    loader.stderr.wait_for("serving tandem.loader.v1", PATIENCE);
    loader
}

/// A processor printing JSON lines, subscribed as `name`.
pub fn start_processor(socket: &Path, name: &str, args: &[&str]) -> Running {
    let mut cmd = Command::new(processor_bin());
    cmd.arg("--socket")
        .arg(socket)
        .args(["--name", name, "--print", "json"])
        .args(args);
    Running::spawn(cmd, &format!("tandem-processor {name}"))
}

/// Reads JSON events from a processor until `n` arrived or `timeout` passed.
pub fn read_events(p: &Running, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = p.stdout.next(left) else {
            panic!(
                "got {} of {n} events before the timeout; processor stderr:\n{}",
                out.len(),
                p.stderr.text()
            );
        };
        out.push(
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}")),
        );
    }
    out
}

/// Calls the loader's `Info` over its socket.
pub fn loader_info(socket: &Path) -> InfoResponse {
    runtime().block_on(async {
        let channel = tandem_proto::uds::connect(socket)
            .await
            .expect("connect to loader");
        LoaderClient::new(channel)
            .info(InfoRequest {})
            .await
            .expect("Info")
            .into_inner()
    })
}

/// A small runtime for the gRPC calls tests make themselves.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A capture file of `requests` synthetic HTTP exchanges (4 events each, plus the
/// process start), written by `tandem-loader record`.
pub fn synthetic_capture(dir: &Path, requests: u64) -> PathBuf {
    let path = dir.join(format!("synthetic-{requests}.tcap"));
    let status = Command::new(loader_bin())
        .args(["record", "--source", "synthetic", "--synthetic-requests"])
        .arg(requests.to_string())
        .arg("--output")
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("run tandem-loader record");
    assert!(status.success(), "tandem-loader record failed");
    path
}

/// Reads a capture file's events.
pub fn capture_events(path: &Path) -> Vec<tandem_proto::Event> {
    tandem_proto::capture::CaptureReader::open(path)
        .expect("open capture")
        .map(|e| e.expect("capture event"))
        .collect()
}

/// The `seq` numbers of non-loss events.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["kind"] != "loss")
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

// ---------------------------------------------------------------------------------
// Real capture (`--source ebpf`): privileges, ports, servers, event streams.

/// Set to `1` (CI does) to make a privileged test fail instead of skipping.
pub const REQUIRE_PRIVILEGED_ENV: &str = "TANDEM_REQUIRE_PRIVILEGED_TESTS";

/// Whether a test that loads eBPF programs can run here. When it cannot (not root) it
/// prints `SKIP <test>: needs root (eBPF)` on stderr and returns false, and the test
/// returns early; with `TANDEM_REQUIRE_PRIVILEGED_TESTS=1` it panics instead, so a
/// machine that must run the privileged tests cannot silently skip them.
pub fn require_root_bpf(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = "needs root (eBPF)";
    if std::env::var(REQUIRE_PRIVILEGED_ENV).is_ok_and(|v| v == "1") {
        panic!("{test} {why}, and {REQUIRE_PRIVILEGED_ENV}=1 requires it to run here");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests,
    // and the SKIP line must be seen (scripts and CI look for it).
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    false
}

/// A TCP port that is free on both 127.0.0.1 and ::1, chosen below the ephemeral
/// range (so no client's source port can take it meanwhile) and never handed out
/// twice by this process (tests run in parallel).
pub fn free_port() -> u16 {
    use std::collections::hash_map::RandomState;
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..1000 {
        let port = 20_000 + (RandomState::new().hash_one(Instant::now()) % 12_000) as u16;
        let mut taken = taken.lock().expect("ports lock");
        if taken.contains(&port) {
            continue;
        }
        let v4 = std::net::TcpListener::bind(("127.0.0.1", port));
        let v6 = std::net::TcpListener::bind(("::1", port));
        if v4.is_ok() && v6.is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("found no free TCP port in 20000-31999");
}

/// Whether a socket listens on TCP `port` (any address), read from
/// /proc/net/tcp{,6}: unlike a probe connection, this adds no traffic to a capture.
pub fn is_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                // State 0A is TCP_LISTEN.
                local_port == Some(port) && fields.get(3) == Some(&"0A")
            })
        })
    })
}

/// Waits until something listens on `port`; `server` is checked to be still alive.
pub fn wait_listening(server: &mut Running, port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !is_listening(port) {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "{} exited ({status}) before listening on port {port}; stderr:\n{}\nstdout:\n{}",
                server.name,
                server.stderr.text(),
                server.stdout.text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {port} within {timeout:?}; stderr:\n{}",
            server.name,
            server.stderr.text()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a loader started by `start_loader` (or spawned otherwise) has attached
/// its eBPF probes.
pub fn wait_ebpf_ready(loader: &Running) {
    loader.stderr.wait_for("ebpf source ready", PATIENCE);
}

/// A loader with `--source ebpf` (the default), probes attached.
pub fn start_ebpf_loader(socket: &Path, args: &[&str]) -> Running {
    let loader = start_loader(socket, args);
    wait_ebpf_ready(&loader);
    loader
}

/// A loader running as uid/gid 65534 with exactly `caps` (setpriv names, e.g.
/// `SYS_PTRACE`; [`loader_caps`] for the model's), probes attached, checked: after
/// attaching it keeps only what following new processes takes (SYS_PTRACE and
/// DAC_READ_SEARCH for processes, CHECKPOINT_RESTORE for TLS libraries) and sets
/// no_new_privs. Its socket directory is created by the loader under `dir`, which is
/// made writable for uid 65534; the processors of the tests run as root (uid 0 is
/// allowed explicitly).
pub fn start_unprivileged_ebpf_loader(
    caps: &[&str],
    dir: &Path,
    socket: &Path,
    args: &[&str],
) -> Running {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .expect("chmod 0777 the socket's parent directory");
    let mut cmd = as_nobody(caps, &loader_bin());
    cmd.arg("--socket")
        .arg(socket)
        .args(["--allow-uid", "0"])
        .args(args);
    let loader = Running::spawn(cmd, "tandem-loader (uid 65534)");
    loader.stderr.wait_for("serving tandem.loader.v1", PATIENCE);
    wait_ebpf_ready(&loader);
    let status = std::fs::read_to_string(format!("/proc/{}/status", loader.pid()))
        .expect("read the loader's /proc status");
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
    };
    assert_eq!(line("Uid:"), ["65534"; 4], "{status}");
    let want: u64 = caps
        .iter()
        .filter(|c| matches!(**c, "SYS_PTRACE" | "DAC_READ_SEARCH" | "CHECKPOINT_RESTORE"))
        .map(|c| cap_bit(c))
        .sum();
    let eff = u64::from_str_radix(line("CapEff:")[0], 16).expect("CapEff hex");
    assert_eq!(eff, want, "effective capabilities {eff:#x}, want {want:#x}");
    assert_eq!(line("NoNewPrivs:"), ["1"], "{status}");
    loader
}

/// A processor printing JSON lines, once it has subscribed.
pub fn start_subscribed_processor(socket: &Path, name: &str, args: &[&str]) -> Running {
    let p = start_processor(socket, name, args);
    p.stderr
        .wait_for("connected to loader; subscribed", PATIENCE);
    p
}

/// Waits until the loader's eBPF source has taken up a selection whose description
/// contains `selection` (e.g. `ports 8080`, `executables */nginx`). The source logs
/// just before it programs the kernel's maps and rescans /proc, which takes a few
/// milliseconds: this waits a little longer than that.
pub fn wait_instrumenting(loader: &Running, selection: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = loader
            .stderr
            .all
            .lock()
            .expect("lines lock")
            .iter()
            .any(|l| l.contains("ebpf: instrumenting") && l.contains(selection));
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the loader never logged `ebpf: instrumenting` with {selection:?}; stderr:\n{}",
            loader.stderr.text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
}

/// JSON events printed by a processor (`--print json`), gathered as they arrive.
pub struct EventLog<'a> {
    processor: &'a Running,
    /// Every event received so far, in arrival order.
    pub events: Vec<Value>,
}

impl<'a> EventLog<'a> {
    pub fn new(processor: &'a Running) -> Self {
        EventLog {
            processor,
            events: Vec::new(),
        }
    }

    fn push_line(&mut self, line: &str) {
        let v = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("bad JSON line from the processor {line:?}: {e}"));
        self.events.push(v);
    }

    /// Reads events until `done(all events so far)` holds; panics after `timeout`
    /// naming `what`.
    pub fn until(&mut self, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            // Take everything already there before checking: `done` may be costly.
            while let Some(line) = self.processor.stdout.next(Duration::ZERO) {
                self.push_line(&line);
            }
            if done(&self.events) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.processor.stdout.next(left) {
                Some(line) => self.push_line(&line),
                None => panic!(
                    "timed out after {timeout:?} waiting for {what}; {} events so far:\n{}\nprocessor stderr:\n{}",
                    self.events.len(),
                    self.events
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.processor.stderr.text()
                ),
            }
        }
    }

    /// Reads whatever arrives until nothing new came for `quiet`.
    pub fn settle(&mut self, quiet: Duration) {
        while let Some(line) = self.processor.stdout.next(quiet) {
            self.push_line(&line);
        }
    }

    /// All events so far, one JSON object per line (for assertion messages).
    pub fn dump(&self) -> String {
        self.events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `curl -sS --max-time 20 ARGS`, returning its pid and output; panics when it
/// fails.
pub fn curl(args: &[&str]) -> (u32, std::process::Output) {
    let child = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start curl");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, out)
}

/// `python3 -m http.server PORT --bind BIND --directory DIR`, listening.
pub fn start_python_http_server(dir: &Path, bind: &str, port: u16) -> Running {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-m", "http.server", &port.to_string(), "--bind", bind])
        .arg("--directory")
        .arg(dir);
    let mut server = Running::spawn(cmd, &format!("python3 http.server :{port}"));
    wait_listening(&mut server, port, PATIENCE);
    server
}

/// `tandem-test-server --listen ADDR` (hyper, keep-alive), listening.
pub fn start_test_server(listen: &str, port: u16, args: &[&str]) -> Running {
    let mut cmd = Command::new(test_server_bin());
    cmd.args(["--listen", listen]).args(args);
    let mut server = Running::spawn(cmd, &format!("tandem-test-server {listen}"));
    wait_listening(&mut server, port, PATIENCE);
    server
}

/// An nginx instance of its own: a copy of the system binary at `<dir>/bin/nginx` (so
/// an executable glob can select exactly this instance), its configuration, pid file,
/// logs and temp paths in `dir`, serving `<dir>/www` on 127.0.0.1 and ::1. Runs in its
/// own process group; dropping it kills master and workers.
pub struct Nginx {
    pub server: Running,
    pub port: u16,
    /// The copied executable.
    pub exe: PathBuf,
    /// The document root.
    pub www: PathBuf,
}

/// The system's nginx executable.
pub fn system_nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed (bash scripts/setup.sh installs nginx-light)")
}

impl Nginx {
    /// Writes the configuration and copies the binary; `start` runs it.
    pub fn prepare(dir: &Path, port: u16) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        for sub in ["bin", "www", "logs", "temp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create nginx directories");
        }
        let exe = dir.join("bin").join("nginx");
        std::fs::copy(system_nginx(), &exe).expect("copy the nginx binary");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
            .expect("chmod nginx");
        let d = dir.display();
        let user = if nix::unistd::geteuid().is_root() {
            "user root root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    # Bodies go through write/writev (captured), not sendfile (not captured).
    sendfile off;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    client_body_temp_path {d}/temp/client;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    server {{
        listen 127.0.0.1:{port};
        listen [::1]:{port};
        root {d}/www;
    }}
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        (exe, dir.join("www"))
    }

    /// Starts the prepared instance and waits until it listens.
    pub fn start(dir: &Path, port: u16) -> Nginx {
        use std::os::unix::process::CommandExt;
        let exe = dir.join("bin").join("nginx");
        let mut cmd = Command::new(&exe);
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("logs").join("error.log"))
            .args(["-g", "daemon off;"])
            .process_group(0);
        let mut server = Running::spawn(cmd, &format!("nginx :{port}"));
        wait_listening(&mut server, port, PATIENCE);
        Nginx {
            server,
            port,
            exe,
            www: dir.join("www"),
        }
    }

    pub fn master_pid(&self) -> i32 {
        self.server.pid()
    }

    /// The master and its children (the workers), from /proc.
    pub fn pids(&self) -> std::collections::BTreeSet<i64> {
        let master = i64::from(self.master_pid());
        let mut out = std::collections::BTreeSet::from([master]);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces: split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<i64>().ok());
            if ppid == Some(master) {
                out.insert(pid);
            }
        }
        out
    }

    /// Waits until the master has forked `workers` workers; returns all pids.
    pub fn wait_workers(&self, workers: usize) -> std::collections::BTreeSet<i64> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pids = self.pids();
            if pids.len() > workers {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "nginx has not forked {workers} workers: {pids:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Master and workers share the process group the master leads.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.master_pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The capabilities the loader is deployed with, from the capability model
/// (`tandem_security::loader_capabilities`), spelled as setpriv takes them (`SYS_PTRACE`).
pub fn loader_caps() -> Vec<&'static str> {
    tandem_security::loader_capabilities()
        .into_iter()
        .map(tandem_security::Capability::name)
        .collect()
}

/// The bit of capability `name` (setpriv or `CAP_` spelling) in /proc/<pid>/status's
/// `Cap*` masks.
pub fn cap_bit(name: &str) -> u64 {
    let cap = tandem_security::capability(name)
        .map(tandem_security::Capability::to_caps)
        .or_else(|| format!("CAP_{}", name.to_ascii_uppercase()).parse().ok())
        .unwrap_or_else(|| panic!("unknown capability {name}"));
    1u64 << cap.index()
}

/// A setpriv command running `program` as uid/gid 65534 with exactly `caps`
/// (effective, permitted, inheritable, ambient and bounding; none when empty).
pub fn as_nobody(caps: &[&str], program: &Path) -> Command {
    let plus: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let plus = plus.join(",");
    let (inh, bounding) = if caps.is_empty() {
        ("-all".to_owned(), "-all".to_owned())
    } else {
        (plus.clone(), format!("-all,{plus}"))
    };
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={inh}"),
        &format!("--ambient-caps={inh}"),
        &format!("--bounding-set={bounding}"),
    ])
    .arg(program);
    cmd
}

/// A self-signed certificate and key for 127.0.0.1 in `dir` (`openssl req`):
/// `(cert.pem, key.pem)`.
pub fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
