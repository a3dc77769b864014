//! Database servers of their own for the tests: PostgreSQL (initdb + postgres as
//! `nobody`, in a temp dir) and Redis, on spare loopback ports.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{free_port, wait_listening, Running, PATIENCE};

/// uid/gid `nobody`: initdb and postgres refuse to run as root.
pub const NOBODY: u32 = 65534;

/// The PostgreSQL binaries (Debian puts them under /usr/lib/postgresql/<major>/bin;
/// /usr/bin/psql is a Perl wrapper, so the real executables are used).
pub fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/setup.sh: postgresql-15)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join(name).exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql/*/bin"))
        .join(name)
}

pub fn setpriv_nobody(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
    ])
    .arg(program);
    cmd
}

pub fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
}

/// A PostgreSQL server of its own, in a temp dir, on a spare loopback port.
pub struct Postgres {
    pub server: Running,
    pub port: u16,
}

impl Postgres {
    pub fn start(dir: &Path) -> Postgres {
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).expect("create pgdata");
        chown_nobody(dir);
        chown_nobody(&data);
        let out = setpriv_nobody(&pg_bin("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .env("LC_ALL", "C")
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut cmd = setpriv_nobody(&pg_bin("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "ssl=off", "-k"])
            .arg(dir);
        let mut server = Running::spawn(cmd, "postgres");
        wait_listening(&mut server, port, PATIENCE);
        Postgres { server, port }
    }

    pub fn psql(&self, commands: &[&str]) -> (i64, std::process::Output) {
        let mut cmd = Command::new(pg_bin("psql"));
        cmd.args([
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-p",
        ])
        .arg(self.port.to_string());
        for c in commands {
            cmd.args(["-c", c]);
        }
        run(cmd)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown: no waiting for clients.
        self.server.signal(nix::sys::signal::Signal::SIGINT);
        let _ = self.server.wait(PATIENCE);
    }
}

/// Runs `cmd` to completion; (its pid, its output).
pub fn run(mut cmd: Command) -> (i64, std::process::Output) {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn client");
    let pid = i64::from(child.id());
    let out = child.wait_with_output().expect("wait client");
    (pid, out)
}

/// A redis-server of its own on a spare loopback port, no persistence.
pub fn start_redis(port: u16) -> Running {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let mut server = Running::spawn(cmd, "redis-server");
    wait_listening(&mut server, port, PATIENCE);
    server
}
