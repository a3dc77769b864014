//! Fake containers for the end-to-end tests: a real server process inside a cgroup v2
//! directory named like a container runtime's, so the loader reads a container id
//! from its cgroup path (`tests/kube.rs`'s pods, `tests/gateway.rs`'s container).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::otlp::{curl_get, CurlRun};
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

/// `ip` as the host part of a URL (`[...]` around IPv6).
pub fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The container runtime whose cgroup naming a [`ContainerServer`] imitates.
#[derive(Clone, Copy, Debug)]
pub enum Runtime {
    /// docker: `docker-<64 hex>.scope`.
    Docker,
    /// containerd's CRI plugin (a Kubernetes node's): `cri-containerd-<64 hex>.scope`.
    Containerd,
}

impl Runtime {
    /// The name of the cgroup directory of container `cid`.
    fn scope(self, cid: &str) -> String {
        match self {
            Runtime::Docker => format!("docker-{cid}.scope"),
            Runtime::Containerd => format!("cri-containerd-{cid}.scope"),
        }
    }
}

/// A python HTTP server inside a cgroup v2 directory named like `runtime`'s
/// (`tandem-test-<pid>-<name>-<port>.slice/<runtime's scope>`): a container, as the
/// loader sees it (the id is taken from the cgroup path). It listens on `bind:port`
/// only. Dropping it stops the server and removes the cgroup directories.
pub struct ContainerServer {
    server: Option<Running>,
    cgroup: PathBuf,
    pub bind: IpAddr,
    pub port: u16,
    www: tempfile::TempDir,
}

impl ContainerServer {
    /// Serves `pages` (path under the document root, content) on `bind`, in the
    /// cgroup of container `cid` of `runtime`.
    pub fn start(
        runtime: Runtime,
        cid: &str,
        bind: IpAddr,
        name: &str,
        pages: &[(&str, &str)],
    ) -> ContainerServer {
        let port = free_port();
        let www = tempfile::tempdir().expect("temp dir");
        for (path, content) in pages {
            write_page(&www, path, content);
        }
        // One slice per server: removing it never races with another test's server.
        let slice = cgroup2_root().join(format!(
            "tandem-test-{}-{name}-{port}.slice",
            std::process::id()
        ));
        let cgroup = slice.join(runtime.scope(cid));
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
            www,
        }
    }

    /// Serves `content` at `path` (under the document root) from now on.
    pub fn add_page(&self, path: &str, content: &str) {
        write_page(&self.www, path, content);
    }

    pub fn pid(&self) -> i32 {
        self.server.as_ref().expect("running").pid()
    }

    /// `curl` of `path` at the server's address, with `headers`.
    pub fn get(&self, path: &str, headers: &[&str]) -> CurlRun {
        curl_get(
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

/// Writes `content` at `path` under the document root `www`.
fn write_page(www: &tempfile::TempDir, path: &str, content: &str) {
    let file = www.path().join(path.trim_start_matches('/'));
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).expect("create the page's directory");
    }
    std::fs::write(&file, content).expect("write page");
}
