//! User-space half of the kernel source: which processes are traced (kept in sync
//! with the kernel's pid map), and turning ring buffer records into API events
//! (announcing each process with `ProcessStarted` before anything else of it, and
//! resolving connections the kernel saw no handshake for through /proc).

use std::collections::{HashMap, HashSet};
use std::io;

use tandem_ebpf_common::{config_flags, reason, Config, ConnEvent};
use tandem_proto::v1::{Role, SocketAddress};
use tandem_proto::{selection, Event, Selection};
use tracing::{debug, info, warn};

use super::convert::{self, Record};
use super::proc::{self, ProcFs, ProcessInfo};
use super::programs::{port_bitmap, Kernel};
use super::tls::Tls;
use crate::clock::monotonic_ns;
use crate::selection::{Matcher, ProcessFacts};

/// What the tracker knows of one process.
#[derive(Debug, Clone)]
struct Proc {
    info: ProcessInfo,
    /// Ports it listens on, and peer ports of its client connections (port
    /// selection), from /proc scans and the kernel's port-selection records.
    ports: Vec<u16>,
    /// Forked (without exec) from this traced parent: traced while it is.
    inherited_from: Option<u32>,
    /// In the kernel's pid map.
    in_kernel: bool,
    /// `ProcessStarted` was published.
    announced: bool,
    /// Found by a /proc scan rather than seen starting.
    preexisting: bool,
}

impl Proc {
    fn new(info: ProcessInfo, preexisting: bool) -> Self {
        Proc {
            info,
            ports: Vec::new(),
            inherited_from: None,
            in_kernel: false,
            announced: false,
            preexisting,
        }
    }

    fn is_kernel_thread(&self) -> bool {
        self.info.cmdline.is_empty() && self.info.exe_error == Some(io::ErrorKind::NotFound)
    }
}

/// Counters for logs and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrackerStats {
    pub records: u64,
    pub bad_records: u64,
    pub unresolved_connections: u64,
}

pub struct Tracker {
    kernel: Kernel,
    procfs: ProcFs,
    self_pid: u32,
    /// Selection given by loader flags (added to the subscribers' union).
    flags: Option<Selection>,
    matcher: Option<Matcher>,
    trace_all: bool,
    procs: HashMap<u32, Proc>,
    /// Task names (`comm`) from the kernel's exec and selection records, by pid,
    /// for processes gone before /proc is read (at most [`MAX_NAMES`]; removed at
    /// their exit).
    names: HashMap<u32, String>,
    /// Inodes of TCP connections that existed at the first scan.
    startup_established: HashSet<u64>,
    first_scan_done: bool,
    warned_ptrace: bool,
    warned_fds: bool,
    /// Root, or CAP_SYS_PTRACE held: /proc of other users' processes is readable.
    has_ptrace: bool,
    /// TLS uprobes (libssl discovery and attachment).
    tls: Tls,
    pub stats: TrackerStats,
}

/// `Tls::scan_process` stages.
const TLS_SCAN_SELECTED: u8 = 0;
const TLS_SCAN_FIRST_CONNECTION: u8 = 1;
/// Most task names remembered for processes gone before /proc is read.
const MAX_NAMES: usize = 4096;

impl Tracker {
    pub fn new(mut kernel: Kernel, procfs: ProcFs, flags: Option<Selection>) -> Self {
        let tls = Tls::new(kernel.take_tls_programs(), kernel.take_go_program());
        Tracker {
            tls,
            kernel,
            procfs,
            self_pid: std::process::id(),
            flags,
            matcher: None,
            trace_all: false,
            procs: HashMap::new(),
            names: HashMap::new(),
            startup_established: HashSet::new(),
            first_scan_done: false,
            warned_ptrace: false,
            warned_fds: false,
            has_ptrace: tandem_security::effective_capabilities().map_or_else(
                |_| nix::unistd::geteuid().is_root(),
                |c| c.contains(&tandem_security::Capability::SysPtrace),
            ),
            stats: TrackerStats::default(),
        }
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The TLS uprobe manager.
    pub fn tls(&mut self) -> &mut Tls {
        &mut self.tls
    }

    /// Processes currently in the kernel's pid map (as far as user space knows).
    pub fn traced(&self) -> usize {
        self.procs.values().filter(|p| p.in_kernel).count()
    }

    /// Instruments `flags ∪ subscribers` (None: nobody subscribed). Rescans /proc
    /// and returns `ProcessStarted` for the processes that became traced.
    pub fn apply_selection(&mut self, subscribers: Option<Selection>) -> Vec<Event> {
        let effective = selection::union(self.flags.iter().chain(subscribers.iter()));
        let matcher = match effective.map(Matcher::new).transpose() {
            Ok(m) => m,
            Err(e) => {
                warn!("ignoring an invalid selection: {e}");
                return Vec::new();
            }
        };
        match matcher.as_ref().map(Matcher::selection) {
            None => info!("ebpf: nothing selected (no subscriber, no --open-port/--exe/--pid/--container-id): tracing no process"),
            Some(s) => info!(selection = %selection::describe(s), "ebpf: instrumenting"),
        }
        let sel = matcher.as_ref().map(Matcher::selection);
        self.trace_all = sel.is_some_and(Selection::is_empty);
        let mut flags = 0;
        if self.trace_all {
            flags |= config_flags::TRACE_ALL | config_flags::EXEC_ALL;
        } else if sel.is_some_and(|s| !s.exe_globs.is_empty() || !s.container_ids.is_empty()) {
            flags |= config_flags::EXEC_ALL;
        }
        let ports = match sel {
            Some(s) if !self.trace_all => port_bitmap(&s.ports),
            _ => port_bitmap(&[]),
        };
        let config = Config {
            flags,
            ..self.kernel.config()
        };
        if let Err(e) = self.kernel.set_config(config) {
            warn!("{e:#}");
        }
        if let Err(e) = self.kernel.set_ports(&ports) {
            warn!("{e:#}");
        }
        self.matcher = matcher;
        self.rescan();
        self.sync_all()
    }

    /// Refreshes the process table from /proc (keeping what is known of processes
    /// that are still the same), and their ports.
    fn rescan(&mut self) {
        let pids = match self.procfs.pids() {
            Ok(p) => p,
            Err(e) => {
                warn!("cannot list /proc: {e}");
                return;
            }
        };
        let mut fresh: HashMap<u32, Proc> = HashMap::with_capacity(pids.len());
        for pid in pids {
            let Ok(info) = self.procfs.process(pid) else {
                continue; // exited meanwhile
            };
            self.warn_unreadable(&info);
            let proc = match self.procs.remove(&pid) {
                Some(mut old) if old.info.start_time == info.start_time => {
                    old.info = info;
                    old
                }
                _ => Proc::new(info, true),
            };
            fresh.insert(pid, proc);
        }
        // Processes that disappeared were traced: drop them from the kernel map
        // (their exit record may still come; it is published then).
        for (pid, p) in self.procs.drain() {
            if p.in_kernel {
                self.kernel.untrace_pid(pid);
            }
        }
        // Fork without exec (e.g. nginx workers): inherit the parent's selection.
        let parents: HashMap<u32, (String, u64)> = fresh
            .iter()
            .map(|(pid, p)| (*pid, (p.info.exe_path.clone(), p.info.start_time)))
            .collect();
        for p in fresh.values_mut() {
            if p.inherited_from.is_none() && p.preexisting && !p.info.exe_path.is_empty() {
                if let Some((exe, _)) = parents.get(&p.info.ppid) {
                    if *exe == p.info.exe_path {
                        p.inherited_from = Some(p.info.ppid);
                    }
                }
            }
        }
        self.procs = fresh;

        let want_ports = self
            .matcher
            .as_ref()
            .is_some_and(|m| !m.selection().ports.is_empty());
        if want_ports || !self.first_scan_done {
            let list: Vec<(u32, u64)> = self
                .procs
                .iter()
                .filter(|(_, p)| !p.is_kernel_thread())
                .map(|(pid, p)| (*pid, p.info.net_namespace))
                .collect();
            let scan = self.procfs.scan_sockets(&list);
            if scan.unreadable_fds > 0 && !self.warned_fds && !self.has_ptrace {
                self.warned_fds = true;
                warn!(
                    processes = scan.unreadable_fds,
                    "cannot read /proc/<pid>/fd of processes owned by other users: CAP_SYS_PTRACE is \
                     missing (needed to {}); their listening ports and pre-existing connections are unknown",
                    tandem_security::Capability::SysPtrace.purpose()
                );
            }
            for (pid, p) in self.procs.iter_mut() {
                let mut ports: Vec<u16> = Vec::new();
                ports.extend(scan.listening.get(pid).into_iter().flatten());
                ports.extend(scan.client_peer_ports.get(pid).into_iter().flatten());
                for port in ports {
                    if !p.ports.contains(&port) {
                        p.ports.push(port);
                    }
                }
            }
            if !self.first_scan_done {
                self.startup_established = scan.established;
            }
        }
        self.first_scan_done = true;
    }

    fn warn_unreadable(&mut self, info: &ProcessInfo) {
        if info.exe_error != Some(io::ErrorKind::PermissionDenied) || self.warned_ptrace {
            return;
        }
        self.warned_ptrace = true;
        if self.has_ptrace {
            // Root or CAP_SYS_PTRACE and still refused: e.g. a process of another
            // user namespace, or a sandbox's init.
            info!(
                pid = info.pid,
                "cannot read /proc/{}/exe although CAP_SYS_PTRACE is held (process of \
                 another user namespace?); its executable path stays empty",
                info.pid
            );
        } else {
            warn!(
                pid = info.pid,
                uid = info.uid,
                "cannot read /proc/{}/exe: CAP_SYS_PTRACE is missing (needed to {}); executable paths \
                 of other users' processes stay empty and --exe/exe_globs cannot select them",
                info.pid,
                tandem_security::Capability::SysPtrace.purpose()
            );
        }
    }

    fn facts(p: &Proc) -> ProcessFacts {
        ProcessFacts {
            exe_path: p.info.exe_path.clone(),
            container_id: p.info.container_id.clone(),
            ports: p.ports.clone(),
        }
    }

    /// Whether `pid` should be traced under the current selection.
    fn wanted(&self, pid: u32) -> bool {
        let mut pid = pid;
        // Follow fork inheritance a bounded number of steps.
        for _ in 0..64 {
            if pid == self.self_pid || pid == 0 {
                return false;
            }
            let Some(p) = self.procs.get(&pid) else {
                return false;
            };
            if p.is_kernel_thread() {
                return false;
            }
            if self.trace_all {
                return true;
            }
            let Some(m) = &self.matcher else {
                return false;
            };
            if m.matches(pid, &Self::facts(p)) {
                return true;
            }
            match p.inherited_from {
                // The parent is gone: the child keeps what it inherited.
                Some(parent) if !self.procs.contains_key(&parent) => return p.in_kernel,
                Some(parent) => pid = parent,
                None => return false,
            }
        }
        false
    }

    /// Brings the kernel's pid map in line with the selection for every process and
    /// announces traced processes not announced yet.
    fn sync_all(&mut self) -> Vec<Event> {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        let mut events = Vec::new();
        let mut full = 0usize;
        for pid in pids {
            let want = self.wanted(pid);
            let Some(p) = self.procs.get_mut(&pid) else {
                continue;
            };
            if want && !p.in_kernel {
                match self.kernel.trace_pid(pid, reason::USER) {
                    Ok(()) => p.in_kernel = true,
                    Err(e) => {
                        full += 1;
                        debug!(pid, "cannot add to the pid map: {e}");
                        continue;
                    }
                }
            } else if !want && p.in_kernel {
                self.kernel.untrace_pid(pid);
                p.in_kernel = false;
            }
            if want {
                self.tls
                    .scan_process(pid, p.info.start_time, TLS_SCAN_SELECTED);
            }
            // Announced once; the hub hands the ProcessStarted to subscribers that
            // attach (or come to select the process) later.
            if want && !p.announced {
                p.announced = true;
                events.push(convert::process_started(
                    monotonic_ns(),
                    &p.info,
                    p.preexisting,
                ));
            }
        }
        if full > 0 {
            warn!(
                processes = full,
                "the kernel pid map is full: some selected processes are not traced (raise --max-traced-processes)"
            );
        }
        events
    }

    /// Publishes `ProcessStarted` for `pid` if it was not announced yet (reading
    /// /proc, or copying from `parent` when the process is already gone), stamped
    /// with `ts`, the kernel time of the record that revealed it.
    fn ensure_announced(&mut self, pid: u32, parent: Option<u32>, ts: u64, out: &mut Vec<Event>) {
        if self.procs.get(&pid).is_some_and(|p| p.announced) {
            return;
        }
        if !self.procs.contains_key(&pid) {
            let info = match self.procfs.process(pid) {
                Ok(info) => info,
                Err(_) => {
                    // Gone already: its name from the kernel's record (a process
                    // that ran an image of its own), else its parent's facts (a
                    // forked worker).
                    let name = self.names.get(&pid).cloned();
                    let mut info = match &name {
                        Some(_) => ProcessInfo::default(),
                        None => parent
                            .and_then(|pp| self.procs.get(&pp))
                            .map(|p| p.info.clone())
                            .unwrap_or_default(),
                    };
                    info.pid = pid;
                    info.tgid = pid;
                    if let Some(pp) = parent {
                        info.ppid = pp;
                    }
                    info
                }
            };
            let mut info = info;
            if info.comm.is_empty() {
                // Also an exited process not reaped yet (its status readable, its
                // executable not).
                info.comm = self.names.get(&pid).cloned().unwrap_or_default();
            }
            self.warn_unreadable(&info);
            self.procs.insert(pid, Proc::new(info, false));
        }
        if let Some(p) = self.procs.get_mut(&pid) {
            // It produced a record, so the kernel traces it.
            p.in_kernel = true;
            p.announced = true;
            out.push(convert::process_started(ts, &p.info, p.preexisting));
        }
    }

    /// Remembers the task name of a kernel record for `pid` (see `names`).
    fn remember_name(&mut self, pid: u32, comm: &[u8; 16]) {
        let len = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
        let Ok(name) = std::str::from_utf8(&comm[..len]) else {
            return;
        };
        if name.is_empty() {
            return;
        }
        if self.names.len() >= MAX_NAMES && !self.names.contains_key(&pid) {
            // Exits remove entries; a table full of processes whose exit was
            // missed starts afresh.
            self.names.clear();
        }
        self.names.insert(pid, name.to_string());
    }

    /// Drains the ring buffer (at most `max` records) into `out`.
    pub fn drain(&mut self, out: &mut Vec<Event>, max: usize) -> usize {
        let mut records = Vec::new();
        while records.len() < max {
            let Some(item) = self.kernel.ring.next() else {
                break;
            };
            match convert::parse(&item) {
                Ok(r) => records.push(r),
                Err(e) => {
                    self.stats.bad_records += 1;
                    if self.stats.bad_records == 1 {
                        warn!("{e}");
                    }
                }
            }
        }
        let n = records.len();
        for r in records {
            self.handle(r, out);
        }
        n
    }

    /// Turns one record into events.
    pub fn handle(&mut self, record: Record, out: &mut Vec<Event>) {
        self.stats.records += 1;
        match record {
            Record::Exec(ev) => {
                self.remember_name(ev.header.pid, &ev.comm);
                self.on_exec(ev.header.pid, ev.header.ts_ns, out)
            }
            Record::Fork(ev) => self.on_fork(ev.header.pid, ev.child_pid, ev.header.ts_ns, out),
            Record::Exit(ev) => {
                let pid = ev.header.pid;
                self.names.remove(&pid);
                if let Some(p) = self.procs.remove(&pid) {
                    if p.announced {
                        out.push(convert::process_exited(&ev));
                    }
                } else {
                    // Traced by the kernel without user space having seen it.
                    out.push(convert::process_exited(&ev));
                }
            }
            Record::PortSelected(ev) => {
                let pid = ev.header.pid;
                self.remember_name(pid, &ev.comm);
                self.ensure_announced(pid, None, ev.header.ts_ns, out);
                if let Some(p) = self.procs.get_mut(&pid) {
                    if !p.ports.contains(&ev.port) {
                        p.ports.push(ev.port);
                    }
                }
                debug!(
                    pid,
                    port = ev.port,
                    how = ev.how,
                    "process selected by port in the kernel"
                );
            }
            Record::ConnOpen(ev) => {
                self.ensure_announced(ev.header.pid, None, ev.header.ts_ns, out);
                // libssl may have been loaded (dlopen) after the process was selected.
                let start_time = self
                    .procs
                    .get(&ev.header.pid)
                    .map_or(0, |p| p.info.start_time);
                self.tls
                    .scan_process(ev.header.pid, start_time, TLS_SCAN_FIRST_CONNECTION);
                if convert::tuple_known(&ev) {
                    out.push(convert::connection_opened(&ev, None, false));
                } else {
                    let (resolved, preexisting) = self.resolve(&ev);
                    if resolved.is_none() {
                        self.stats.unresolved_connections += 1;
                    }
                    out.push(convert::connection_opened(&ev, resolved, preexisting));
                }
            }
            Record::ConnClose(ev) => out.push(convert::connection_closed(&ev)),
            Record::Data(d) => {
                self.ensure_announced(d.header.pid, None, d.header.ts_ns, out);
                out.push(convert::data(d));
            }
        }
    }

    fn on_exec(&mut self, pid: u32, ts: u64, out: &mut Vec<Event>) {
        let Ok(info) = self.procfs.process(pid) else {
            return; // gone already
        };
        self.warn_unreadable(&info);
        // The fork record of this process may have been handled after the exec
        // already happened, announcing the new image: do not announce it twice.
        let already_described = self.procs.get(&pid).is_some_and(|p| {
            p.announced
                && p.info.start_time == info.start_time
                && p.info.exe_path == info.exe_path
                && p.info.cmdline == info.cmdline
        });
        let was_in_kernel = self.procs.get(&pid).is_some_and(|p| p.in_kernel);
        let ports = self
            .procs
            .get(&pid)
            .map(|p| p.ports.clone())
            .unwrap_or_default();
        let mut proc = Proc::new(info, false);
        // Sockets survive exec; a new image is announced again.
        proc.ports = ports;
        proc.in_kernel = was_in_kernel;
        self.procs.insert(pid, proc);
        let want = self.wanted(pid);
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        if want {
            if !p.in_kernel {
                if let Err(e) = self.kernel.trace_pid(pid, reason::USER) {
                    warn!(pid, "cannot add to the pid map: {e}");
                    return;
                }
                p.in_kernel = true;
            }
            p.announced = true;
            if !already_described {
                out.push(convert::process_started(ts, &p.info, false));
            }
            // A new image: its libraries (usually mapped only after this record, by
            // the dynamic loader; the host's libssl is probed at start-up).
            self.tls.rescan_process(pid);
            // Children it forked before this record was handled (a daemon's workers)
            // were not in the pid map then, so the kernel did not add them.
            self.adopt_descendants(pid, ts, out);
        } else {
            if p.in_kernel {
                self.kernel.untrace_pid(pid);
            }
            // Not kept: with every exec reported, the table would grow with every
            // short-lived process. A rescan (on selection change) finds it again.
            self.procs.remove(&pid);
        }
    }

    /// Traces the running descendants of `root` that are not traced yet, as if they
    /// had been forked after `root` was selected.
    fn adopt_descendants(&mut self, root: u32, ts: u64, out: &mut Vec<Event>) {
        let Ok(pids) = self.procfs.pids() else {
            return;
        };
        let infos: Vec<ProcessInfo> = pids
            .into_iter()
            .filter(|pid| *pid != root)
            .filter_map(|pid| self.procfs.process(pid).ok())
            .filter(|info| info.tgid == info.pid)
            .collect();
        let mut parents = vec![root];
        while let Some(parent) = parents.pop() {
            for info in infos.iter().filter(|i| i.ppid == parent) {
                let child = info.pid;
                parents.push(child);
                if self.procs.get(&child).is_some_and(|p| p.in_kernel) {
                    continue;
                }
                if let Err(e) = self.kernel.trace_pid(child, reason::USER) {
                    warn!(pid = child, "cannot add to the pid map: {e}");
                    continue;
                }
                let mut p = Proc::new(info.clone(), false);
                p.inherited_from = Some(parent);
                self.procs.insert(child, p);
                self.ensure_announced(child, Some(parent), ts, out);
            }
        }
    }

    fn on_fork(&mut self, parent: u32, child: u32, ts: u64, out: &mut Vec<Event>) {
        match self.procfs.process(child) {
            Ok(info) if info.tgid != child => {} // a thread of a traced process
            Ok(info) => {
                let mut p = Proc::new(info, false);
                p.inherited_from = Some(parent);
                p.in_kernel = true;
                self.procs.insert(child, p);
                if self.wanted(child) {
                    self.ensure_announced(child, Some(parent), ts, out);
                } else {
                    self.kernel.untrace_pid(child);
                    if let Some(p) = self.procs.get_mut(&child) {
                        p.in_kernel = false;
                    }
                }
            }
            // Gone already (or a thread that exited): announced lazily if any
            // record of it arrives.
            Err(_) => {}
        }
    }

    /// Addresses and role of a connection the kernel saw no handshake for, from
    /// /proc/<pid>/fd/<fd> and /proc/<pid>/net/tcp{,6}; and whether it existed when
    /// the loader started.
    fn resolve(&self, ev: &ConnEvent) -> (Option<(SocketAddress, SocketAddress, Role)>, bool) {
        let pid = ev.header.pid;
        let inode = match self.procfs.fd_socket_inode(pid, ev.fd) {
            Ok(i) => i,
            Err(e) => {
                debug!(pid, fd = ev.fd, "cannot resolve a connection: {e}");
                return (None, true);
            }
        };
        let preexisting = self.startup_established.contains(&inode);
        let table = match self.procfs.tcp_sockets(pid) {
            Ok(t) => t,
            Err(e) => {
                debug!(pid, "cannot read the TCP table: {e}");
                return (None, preexisting);
            }
        };
        let Some(sock) = table.iter().find(|s| s.inode == inode) else {
            return (None, preexisting);
        };
        let listening = proc::listening_ports(&table);
        let role = if listening.contains(&sock.local.1) {
            Role::Server
        } else {
            Role::Client
        };
        (
            Some((
                convert::socket_address(sock.local.0, sock.local.1),
                convert::socket_address(sock.peer.0, sock.peer.1),
                role,
            )),
            preexisting,
        )
    }
}
