//! Reading /proc: process descriptions, cgroup paths and container ids, and the TCP
//! socket tables (`/proc/<pid>/net/tcp{,6}`) used to find listeners and to resolve
//! connections that existed before the probes were attached.
//!
//! Parsers take text so they can be tested; readers take a `/proc` root so tests
//! can point them at a fake tree.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// TCP states as printed in /proc/net/tcp (hex).
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_LISTEN: u8 = 0x0A;

/// Where procfs is mounted.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        ProcFs {
            root: PathBuf::from("/proc"),
        }
    }
}

/// What the loader reports about a process (`ProcessStarted`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Thread group id: differs from `pid` for a thread.
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// Empty when unreadable (another user's process without CAP_SYS_PTRACE, or a
    /// kernel thread).
    pub exe_path: String,
    pub cmdline: Vec<String>,
    pub cgroup_path: String,
    pub container_id: String,
    pub pid_namespace: u64,
    pub net_namespace: u64,
    /// Start time in clock ticks since boot (field 22 of stat): tells a reused pid
    /// from the process that had it before.
    pub start_time: u64,
    /// Why `exe_path` is empty, if it is.
    pub exe_error: Option<io::ErrorKind>,
    /// The `OTEL_*` entries of its environment (see [`otel_env`]).
    pub otel_env: Vec<String>,
    /// The kernel's name of the task (`comm`) from its exec or selection record:
    /// the name of a process gone before /proc was read (empty when unknown).
    pub comm: String,
}

/// Most `OTEL_*` environment entries forwarded per process, and most bytes of one.
pub const MAX_OTEL_ENV: usize = 32;
pub const MAX_OTEL_ENV_ENTRY: usize = 4096;
/// Most bytes of /proc/<pid>/environ read.
const MAX_ENVIRON: u64 = 256 * 1024;

/// The `OTEL_*` entries of a NUL-separated environment block, raw (`NAME=value`): at
/// most [`MAX_OTEL_ENV`], each at most [`MAX_OTEL_ENV_ENTRY`] bytes, valid UTF-8;
/// nothing else is looked at (the processor interprets them, unprivileged).
pub fn otel_env(environ: &[u8]) -> Vec<String> {
    environ
        .split(|b| *b == 0)
        .filter(|e| e.starts_with(b"OTEL_") && e.len() <= MAX_OTEL_ENV_ENTRY)
        .filter_map(|e| std::str::from_utf8(e).ok())
        .take(MAX_OTEL_ENV)
        .map(str::to_owned)
        .collect()
}

/// One line of /proc/net/tcp or tcp6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: (IpAddr, u16),
    pub peer: (IpAddr, u16),
    pub state: u8,
    pub inode: u64,
}

impl ProcFs {
    /// A procfs mounted at `root` (tests use a temporary directory).
    #[cfg(test)]
    pub fn at(root: impl Into<PathBuf>) -> Self {
        ProcFs { root: root.into() }
    }

    fn path(&self, pid: u32, rest: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(rest)
    }

    /// Every numeric entry of /proc (processes, not threads).
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let mut pids = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        Ok(pids)
    }

    /// Describes `pid` (or a thread id). Fails only when the process is gone (or
    /// /proc/<pid>/status is unreadable); missing details stay empty.
    pub fn process(&self, pid: u32) -> io::Result<ProcessInfo> {
        let status = fs::read_to_string(self.path(pid, "status"))?;
        let st = parse_status(&status);
        let mut info = ProcessInfo {
            pid,
            tgid: st.tgid.unwrap_or(pid),
            ppid: st.ppid,
            uid: st.uid,
            ..ProcessInfo::default()
        };
        match fs::read_link(self.path(pid, "exe")) {
            Ok(p) => info.exe_path = strip_deleted(&p.to_string_lossy()).to_owned(),
            Err(e) => info.exe_error = Some(e.kind()),
        }
        if let Ok(raw) = fs::read(self.path(pid, "cmdline")) {
            info.cmdline = parse_cmdline(&raw);
        }
        if let Ok(text) = fs::read_to_string(self.path(pid, "cgroup")) {
            info.cgroup_path = parse_cgroup(&text);
            info.container_id = container_id(&info.cgroup_path).unwrap_or_default();
        }
        info.pid_namespace = self.namespace(pid, "pid").unwrap_or(0);
        info.net_namespace = self.namespace(pid, "net").unwrap_or(0);
        if let Ok(stat) = fs::read_to_string(self.path(pid, "stat")) {
            info.start_time = parse_stat_start_time(&stat).unwrap_or(0);
        }
        if let Ok(f) = fs::File::open(self.path(pid, "environ")) {
            use std::io::Read;
            let mut raw = Vec::new();
            if f.take(MAX_ENVIRON).read_to_end(&mut raw).is_ok() {
                info.otel_env = otel_env(&raw);
            }
        }
        Ok(info)
    }

    /// Inode of /proc/<pid>/ns/<kind> (`pid:[4026531836]`).
    pub fn namespace(&self, pid: u32, kind: &str) -> Option<u64> {
        let link = fs::read_link(self.path(pid, &format!("ns/{kind}"))).ok()?;
        parse_bracketed_inode(&link.to_string_lossy(), kind)
    }

    /// Socket inodes of the process's file descriptors: (fd, inode).
    pub fn socket_fds(&self, pid: u32) -> io::Result<Vec<(i32, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.path(pid, "fd"))? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(link) = fs::read_link(entry.path()) {
                if let Some(inode) = parse_bracketed_inode(&link.to_string_lossy(), "socket") {
                    out.push((fd, inode));
                }
            }
        }
        Ok(out)
    }

    /// The socket inode behind one file descriptor.
    pub fn fd_socket_inode(&self, pid: u32, fd: i32) -> io::Result<u64> {
        let link = fs::read_link(self.path(pid, &format!("fd/{fd}")))?;
        parse_bracketed_inode(&link.to_string_lossy(), "socket").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("fd {fd} of {pid} is not a socket"),
            )
        })
    }

    /// The TCP sockets (v4 and v6) of the network namespace `pid` lives in.
    pub fn tcp_sockets(&self, pid: u32) -> io::Result<Vec<TcpSocket>> {
        let mut out = parse_net_tcp(&fs::read_to_string(self.path(pid, "net/tcp"))?, false);
        // tcp6 is absent when IPv6 is disabled.
        if let Ok(text) = fs::read_to_string(self.path(pid, "net/tcp6")) {
            out.extend(parse_net_tcp(&text, true));
        }
        Ok(out)
    }
}

/// Fields of /proc/<pid>/status the loader needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub tgid: Option<u32>,
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
}

pub fn parse_status(text: &str) -> Status {
    let mut st = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let first = value.split_whitespace().next().and_then(|v| v.parse().ok());
        match key {
            "Tgid" => st.tgid = first,
            "PPid" => st.ppid = first.unwrap_or(0),
            "Uid" => st.uid = first.unwrap_or(0),
            _ => {}
        }
    }
    st
}

/// Field 22 (starttime) of /proc/<pid>/stat; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// NUL-separated arguments.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// `/usr/bin/x (deleted)` -> `/usr/bin/x`.
fn strip_deleted(path: &str) -> &str {
    path.strip_suffix(" (deleted)").unwrap_or(path)
}

/// The process's cgroup path: the cgroup v2 entry (`0::/path`) when present,
/// otherwise the v1 `name=systemd` hierarchy, otherwise the first line's path.
pub fn parse_cgroup(text: &str) -> String {
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some((controllers, path))
        })
        .collect();
    entries
        .iter()
        .find(|(c, _)| c.is_empty())
        .or_else(|| entries.iter().find(|(c, _)| *c == "name=systemd"))
        .or_else(|| entries.first())
        .map(|(_, p)| (*p).to_owned())
        .unwrap_or_default()
}

/// The container id (64 hex digits) in a cgroup path, as written by docker
/// (`/docker/<id>`, `docker-<id>.scope`), containerd (`cri-containerd-<id>.scope`,
/// `/kubepods/.../<id>`), cri-o (`crio-<id>.scope`) and podman (`libpod-<id>.scope`).
/// The innermost component that holds one wins.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        let candidate = name.rsplit(['-', ':']).next().unwrap_or(name);
        (candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| candidate.to_ascii_lowercase())
    })
}

/// `socket:[12345]` -> 12345 (with `kind` = "socket"); `pid:[4026531836]` likewise.
pub fn parse_bracketed_inode(link: &str, kind: &str) -> Option<u64> {
    link.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Parses /proc/net/tcp (`v6` = false) or /proc/net/tcp6; malformed lines are skipped.
pub fn parse_net_tcp(text: &str, v6: bool) -> Vec<TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if f.len() < 10 {
                return None;
            }
            Some(TcpSocket {
                local: parse_hex_addr(f[1], v6)?,
                peer: parse_hex_addr(f[2], v6)?,
                state: u8::from_str_radix(f[3], 16).ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:1F90` -> 127.0.0.1:8080. The kernel prints each 32-bit word of the
/// (network order) address as a native-endian integer.
fn parse_hex_addr(s: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        if addr.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some((ip, port))
}

/// The TCP view of a set of processes: which ports each listens on, which ports it
/// is connected to as a client, and which connections exist.
#[derive(Debug, Default)]
pub struct SocketScan {
    /// pid -> local ports it listens on.
    pub listening: HashMap<u32, Vec<u16>>,
    /// pid -> peer ports of its established client connections.
    pub client_peer_ports: HashMap<u32, Vec<u16>>,
    /// Inodes of every established TCP socket of the scanned processes.
    pub established: std::collections::HashSet<u64>,
    /// Processes whose file descriptors could not be read (other users' processes
    /// without CAP_SYS_PTRACE).
    pub unreadable_fds: usize,
}

/// Listening ports (per netns) of a socket table.
pub fn listening_ports(table: &[TcpSocket]) -> Vec<u16> {
    let mut ports: Vec<u16> = table
        .iter()
        .filter(|s| s.state == TCP_LISTEN)
        .map(|s| s.local.1)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

impl ProcFs {
    /// Scans the sockets of `pids`, reading each network namespace's table once.
    pub fn scan_sockets(&self, pids: &[(u32, u64)]) -> SocketScan {
        let mut scan = SocketScan::default();
        // netns inode (or, when unknown, the pid itself, tagged) -> inode table
        let mut tables: HashMap<(bool, u64), HashMap<u64, TcpSocket>> = HashMap::new();
        let mut listen_by_ns: HashMap<(bool, u64), Vec<u16>> = HashMap::new();
        for &(pid, netns) in pids {
            let fds = match self.socket_fds(pid) {
                Ok(f) if !f.is_empty() => f,
                Ok(_) => continue,
                Err(e) => {
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        scan.unreadable_fds += 1;
                    }
                    continue;
                }
            };
            let key = if netns != 0 {
                (true, netns)
            } else {
                (false, u64::from(pid))
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = tables.entry(key) {
                let table = self.tcp_sockets(pid).unwrap_or_default();
                listen_by_ns.insert(key, listening_ports(&table));
                slot.insert(table.into_iter().map(|s| (s.inode, s)).collect());
            }
            let (Some(table), Some(listen)) = (tables.get(&key), listen_by_ns.get(&key)) else {
                continue;
            };
            for (_, inode) in fds {
                let Some(s) = table.get(&inode) else { continue };
                match s.state {
                    TCP_LISTEN => scan.listening.entry(pid).or_default().push(s.local.1),
                    TCP_ESTABLISHED => {
                        scan.established.insert(inode);
                        if !listen.contains(&s.local.1) {
                            scan.client_peer_ports
                                .entry(pid)
                                .or_default()
                                .push(s.peer.1);
                        }
                    }
                    _ => {}
                }
            }
        }
        for ports in scan
            .listening
            .values_mut()
            .chain(scan.client_peer_ports.values_mut())
        {
            ports.sort_unstable();
            ports.dedup();
        }
        scan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_of_common_runtimes() {
        let id = "3f4e8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";
        for path in [
            format!("/docker/{id}"),
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods/burstable/pod1b2c-33/{id}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c_33.slice/cri-containerd-{id}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod9.slice/crio-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/system.slice/containerd.service/kubepods-besteffort-pod7.slice:cri-containerd:{id}"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(
            container_id(&format!("/docker/{}", id.to_uppercase())).as_deref(),
            Some(id)
        );
    }

    #[test]
    fn no_container_id_outside_containers() {
        for path in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/nginx.service",
            "/docker/abc123",
            // 63 and 65 digits
            "/docker/3f4e8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789a",
            "/docker/3f4e8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abc",
        ] {
            assert_eq!(container_id(path), None, "{path}");
        }
    }

    #[test]
    fn cgroup_v2_line_wins_then_systemd() {
        assert_eq!(
            parse_cgroup("0::/system.slice/x.service\n"),
            "/system.slice/x.service"
        );
        let v1 = "12:memory:/docker/aa\n1:name=systemd:/docker/bb\n0::/\n";
        assert_eq!(parse_cgroup(v1), "/");
        let v1_only = "12:memory:/docker/aa\n1:name=systemd:/docker/bb\n";
        assert_eq!(parse_cgroup(v1_only), "/docker/bb");
        assert_eq!(parse_cgroup(""), "");
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1234\nNgid:\t0\n\
                    Pid:\t1235\nPPid:\t1200\nTracerPid:\t0\nUid:\t1000\t1001\t1002\t1003\n";
        assert_eq!(
            parse_status(text),
            Status {
                tgid: Some(1234),
                ppid: 1200,
                uid: 1000
            }
        );
    }

    #[test]
    fn stat_start_time_survives_odd_command_names() {
        let stat = "77 (a) b (c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat_start_time(stat), Some(98765));
        assert_eq!(parse_stat_start_time("garbage"), None);
    }

    #[test]
    fn cmdline_and_links() {
        assert_eq!(
            parse_cmdline(b"python3\0-m\0http.server\0"),
            ["python3", "-m", "http.server"]
        );
        assert_eq!(parse_bracketed_inode("socket:[4242]", "socket"), Some(4242));
        assert_eq!(
            parse_bracketed_inode("pid:[4026531836]", "pid"),
            Some(4026531836)
        );
        assert_eq!(parse_bracketed_inode("/dev/null", "socket"), None);
        assert_eq!(parse_bracketed_inode("pipe:[5]", "socket"), None);
    }

    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 51240 1 0000000000000000 20 4 30 10 -1
   2: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:C350 0000000000000000FFFF00000100007F:0050 01 00000000:00000000 00:00000000 00000000  1000        0 778 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn net_tcp_v4() {
        let socks = parse_net_tcp(TCP4, false);
        assert_eq!(socks.len(), 2);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(
            socks[0],
            TcpSocket {
                local: (lo, 8080),
                peer: (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                state: TCP_LISTEN,
                inode: 51234
            }
        );
        assert_eq!(socks[1].peer, (lo, 0xD431));
        assert_eq!(socks[1].state, TCP_ESTABLISHED);
        assert_eq!(listening_ports(&socks), [8080]);
    }

    #[test]
    fn net_tcp_v6() {
        let socks = parse_net_tcp(TCP6, true);
        assert_eq!(socks.len(), 2);
        assert_eq!(socks[0].local, (IpAddr::V6(Ipv6Addr::LOCALHOST), 80));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("literal");
        assert_eq!(socks[1].local, (mapped, 50000));
        assert_eq!(socks[1].peer, (mapped, 80));
        assert_eq!(socks[1].inode, 778);
    }

    #[test]
    fn fake_proc_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("4321");
        fs::create_dir_all(p.join("fd")).expect("mkdir");
        fs::create_dir_all(p.join("net")).expect("mkdir");
        fs::create_dir_all(p.join("ns")).expect("mkdir");
        fs::write(
            p.join("status"),
            "Tgid:\t4321\nPPid:\t1\nUid:\t0\t0\t0\t0\n",
        )
        .expect("w");
        fs::write(p.join("cmdline"), b"srv\0--port\08080\0").expect("w");
        let id = "ab".repeat(32);
        fs::write(
            p.join("cgroup"),
            format!("0::/system.slice/docker-{id}.scope\n"),
        )
        .expect("w");
        fs::write(p.join("net/tcp"), TCP4).expect("w");
        std::os::unix::fs::symlink("/usr/bin/srv", p.join("exe")).expect("ln");
        std::os::unix::fs::symlink("socket:[51234]", p.join("fd/3")).expect("ln");
        std::os::unix::fs::symlink("socket:[51240]", p.join("fd/4")).expect("ln");
        std::os::unix::fs::symlink("/dev/null", p.join("fd/0")).expect("ln");
        std::os::unix::fs::symlink("net:[4026531840]", p.join("ns/net")).expect("ln");
        fs::create_dir_all(dir.path().join("self")).expect("mkdir");

        let procfs = ProcFs::at(dir.path());
        assert_eq!(procfs.pids().expect("pids"), [4321]);
        let info = procfs.process(4321).expect("process");
        assert_eq!(info.exe_path, "/usr/bin/srv");
        assert_eq!(info.cmdline, ["srv", "--port", "8080"]);
        assert_eq!(info.container_id, id);
        assert_eq!(info.ppid, 1);
        assert_eq!(info.net_namespace, 4026531840);
        let mut fds = procfs.socket_fds(4321).expect("fds");
        fds.sort_unstable();
        assert_eq!(fds, [(3, 51234), (4, 51240)]);
        assert_eq!(procfs.fd_socket_inode(4321, 4).expect("fd"), 51240);
        assert!(procfs.fd_socket_inode(4321, 0).is_err());
        let scan = procfs.scan_sockets(&[(4321, info.net_namespace)]);
        assert_eq!(
            scan.listening.get(&4321).map(Vec::as_slice),
            Some(&[8080][..])
        );
        // 51240's local port 8080 is a listening port: a server-side connection.
        assert!(scan.client_peer_ports.is_empty());
        assert!(scan.established.contains(&51240));
    }
}

#[cfg(test)]
mod otel_env_tests {
    use super::*;

    #[test]
    fn only_bounded_otel_entries_are_kept() {
        let mut env = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0SECRET=x\0OTEL_BAD=\xff\0".to_vec();
        let long = format!("OTEL_LONG={}", "v".repeat(MAX_OTEL_ENV_ENTRY));
        env.extend_from_slice(long.as_bytes());
        env.push(0);
        for i in 0..40 {
            env.extend_from_slice(format!("OTEL_X{i}=1\0").as_bytes());
        }
        let got = otel_env(&env);
        assert_eq!(got[0], "OTEL_SERVICE_NAME=checkout");
        assert_eq!(got.len(), MAX_OTEL_ENV);
        assert!(got
            .iter()
            .all(|e| e.starts_with("OTEL_") && e.len() <= MAX_OTEL_ENV_ENTRY));
        assert!(!got
            .iter()
            .any(|e| e.starts_with("OTEL_LONG") || e.starts_with("OTEL_BAD")));
    }
}
