//! Helpers shared by the end-to-end tests: build and start the real binaries, read
//! their output, and talk to the loader over its real Unix socket.

use std::io::{BufRead, BufReader, Read};
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
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the binaries");
        assert!(
            status.success(),
            "cargo build of tandem-loader/tandem-processor failed"
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
