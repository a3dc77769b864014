//! tandem's kernel programs. See `ebpf/README.md` for the design and for the
//! tracepoint formats each classic tracepoint program relies on (user space
//! checks those formats against tracefs before attaching).
//!
//! Every program that runs in a process's context looks the current tgid up in
//! `PIDS` first and returns when it is absent, so unselected processes pay one
//! hash lookup per socket read or write (and nothing on other syscalls: no
//! syscall tracepoint is attached outside the pid-namespace mode).
//!
//! Process ids: every pid the programs compare with `PIDS` or send to user space is
//! a pid as the loader sees it. In the initial pid namespace that is the kernel's
//! global id (`bpf_get_current_pid_tgid`); when the loader runs in another pid
//! namespace (a Kubernetes sidecar sharing its pod's namespace), `CONFIG` names that
//! namespace and [`current_id`] asks the kernel for the task's ids in it
//! (`bpf_get_ns_current_pid_tgid`); tasks outside it are not traced. Maps private to
//! the kernel side that are keyed by thread (`SSL_ACTIVE`, `FORKING`) use the global ids, which need no translation.
#![no_std]
#![no_main]

use core::ptr;

use aya_ebpf::{
    bindings::{
        bpf_pidns_info, BPF_ANY, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{
            bpf_get_attach_cookie, bpf_get_current_task, bpf_get_current_task_btf,
            bpf_get_ns_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
            bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use tandem_ebpf_common::{
    config_flags, conn_flags, counter, data_offset, direction, go_fn, kind, port_how, reason, role,
    ssl_fn, syscall, CloseEvent, Config, ConnEvent, ConnInfo, Header, PortSelectEvent,
    ProcessEvent, SslCall, SslConn, SslKey, DATA_OFFSET, MAX_CAPTURE_BYTES,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: u32 = 2;

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// Traced processes: tgid -> one of `reason` (thread ids of traced processes may
/// appear too, added at fork and removed at their exit; they never match a tgid
/// lookup of another process because a live thread keeps its id).
#[map]
static PIDS: HashMap<u32, u32> = HashMap::with_max_entries(65_536, 0);

/// Run-time settings written by user space (one entry).
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Selected TCP ports as a bitmap: bit `p & 63` of word `p >> 6`.
#[map]
static PORTS: Array<u64> = Array::with_max_entries(1024, 0);

/// TCP sockets: `struct sock *` -> tuple, role and connection id. Filled at
/// TCP_ESTABLISHED for every socket, or at first use for sockets established before
/// the programs were attached (tuple unknown: user space resolves it via /proc).
#[map]
static CONNS: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(65_536, 0);

/// Pid-namespace mode only: children of traced processes between
/// sched_process_fork (parent side, where only the child's global id is known) and
/// the child's own return from clone/fork (where its id in the loader's namespace
/// is known): global child tid -> parent (tgid << 32 | tid) in the namespace.
#[map]
static FORKING: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4_096, 0);

/// Per-CPU counters, indexed by `counter::*`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// OpenSSL calls of traced threads in flight (TLS uprobes): pid_tgid -> SslCall.
#[map]
static SSL_ACTIVE: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// The socket each `SSL *` of a traced process was last seen using.
#[map]
static SSL_CONNS: LruHashMap<SslKey, SslConn> = LruHashMap::with_max_entries(65_536, 0);

/// Go crypto/tls calls in flight, by goroutine: (tgid, g) -> the call. Keyed by the
/// goroutine, not the thread: a goroutine blocked in the netpoller resumes on any
/// thread.
#[map]
static GO_ACTIVE: LruHashMap<SslKey, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// The socket each `*tls.Conn` of a Go process was last seen using.
#[map]
static GO_CONNS: LruHashMap<SslKey, SslConn> = LruHashMap::with_max_entries(65_536, 0);

/// The socket of the last TLS record a thread of an OpenSSL-using process read
/// outside any `SSL_*` call (pid_tgid -> socket): OpenSSL over memory BIOs (Node.js)
/// reads the ciphertext itself, then calls `SSL_read` on that connection's `SSL *`.
#[map]
static SSL_LAST_READ: LruHashMap<u64, SslConn> = LruHashMap::with_max_entries(16_384, 0);

/// Records for user space. Resized by the loader (`--ring-buffer-kib`). Records are
/// written with BPF_RB_NO_WAKEUP; user space polls every few milliseconds.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Reads an integer field of the tracepoint record at `offset` (direct context
/// access: one load instruction at ctx + offset, which the verifier requires; every
/// field read is naturally aligned in the format).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: tracepoint programs may read their context record; the offsets are
    // those of the tracepoint's format file, checked by user space before attaching.
    unsafe { ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Reads a 16-byte address field as two 8-byte loads.
#[inline(always)]
fn field16(ctx: &TracePointContext, offset: usize) -> [u8; 16] {
    let lo: u64 = field(ctx, offset);
    let hi: u64 = field(ctx, offset + 8);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_ne_bytes());
    out[8..].copy_from_slice(&hi.to_ne_bytes());
    out
}

#[inline(always)]
fn is_traced(tgid: u32) -> bool {
    PIDS.get_ptr(&tgid).is_some()
}

/// Set in a `PIDS` value by `ssl_enter` (every OpenSSL call of the process sets it
/// again, so a value rewritten by user space regains it before the call's first
/// socket syscall): only then do the data programs look for an OpenSSL call in
/// flight (`SSL_ACTIVE`).
const PIDS_USES_SSL: u32 = 1 << 31;

/// Set in a `PIDS` value by `go_tls`: the data programs look for a crypto/tls call
/// of the current goroutine in flight (`GO_ACTIVE`).
const PIDS_USES_GO_TLS: u32 = 1 << 30;

/// Set in a `PIDS` value by `go_goroutines` (every new goroutine sets it again): a
/// Go process, whose data records say which goroutine moved the bytes
/// (`goroutines::task`).
const PIDS_GO: u32 = 1 << 29;

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// The current task's `tgid << 32 | tid` as the loader sees them, from its global
/// ids `global` (`bpf_get_current_pid_tgid`): the same in the initial pid
/// namespace (one branch on a config value), else the ids in the loader's
/// namespace; `None` for a task outside that namespace (not traced).
#[inline(always)]
fn current_id(global: u64) -> Option<u64> {
    let (dev, ino) = match CONFIG.get(0) {
        Some(c) if c.pidns_ino != 0 => (c.pidns_dev, c.pidns_ino),
        _ => return Some(global),
    };
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `info` is a live stack value of the size passed.
    let r = unsafe {
        bpf_get_ns_current_pid_tgid(
            dev,
            ino,
            ptr::addr_of_mut!(info),
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    if r != 0 || info.tgid == 0 {
        return None;
    }
    Some((u64::from(info.tgid) << 32) | u64::from(info.pid))
}

/// Whether the loader runs outside the initial pid namespace.
#[inline(always)]
fn pidns_mode() -> bool {
    CONFIG.get(0).is_some_and(|c| c.pidns_ino != 0)
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU value; tracepoint programs do not nest on one CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn emit<T>(record: &T) {
    if EVENTS.output::<T>(record, BPF_RB_NO_WAKEUP as u64).is_err() {
        bump(counter::RINGBUF_LOST);
    }
}

#[inline(always)]
fn header(kind: u32, pid: u32, tid: u32) -> Header {
    Header {
        kind,
        pid,
        tid,
        _pad: 0,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// The current task's name (`comm`), NUL-padded.
#[inline(always)]
fn comm() -> [u8; 16] {
    bpf_get_current_comm().unwrap_or([0; 16])
}

/// A connection id unique for this loader run: `base + (n << 10 | cpu)`, where `n`
/// counts ids handed out on this CPU.
#[inline(always)]
fn next_conn_id() -> u64 {
    let base = config().map_or(0, |c| c.conn_id_base);
    // SAFETY: helper without preconditions.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() }) & 1023;
    let n = match COUNTERS.get_ptr_mut(counter::CONN_IDS) {
        // SAFETY: per-CPU value; tracepoint programs do not nest on one CPU.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    base.wrapping_add((n << 10) | cpu)
}

// ---------------------------------------------------------------------------
// Process lifecycle
// ---------------------------------------------------------------------------

/// sched/sched_process_exec: `pid` (offset 12) is the tgid after exec.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(id) = current_id(global) else {
        return 0;
    };
    let tgid = (id >> 32) as u32;
    if !is_traced(tgid) {
        let exec_all = config().is_some_and(|c| c.flags & config_flags::EXEC_ALL != 0);
        if !exec_all {
            return 0;
        }
    }
    // The tgid after exec: the field (a global id) when the loader sees global ids;
    // else the current tgid in its namespace, the same process after exec.
    let pid = if id == global {
        field::<i32>(&ctx, 12) as u32
    } else {
        tgid
    };
    emit(&ProcessEvent {
        header: header(kind::EXEC, pid, id as u32),
        child_pid: 0,
        exit_code: 0,
        comm: comm(),
    });
    0
}

/// sched/sched_process_fork: runs in the parent; `child_pid` at offset 20.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(id) = current_id(global) else {
        return 0;
    };
    let tgid = (id >> 32) as u32;
    if !is_traced(tgid) {
        let all = config()
            .is_some_and(|c| c.flags & config_flags::TRACE_ALL != 0 && c.loader_pid != tgid);
        if !all {
            return 0;
        }
    }
    let child: i32 = field(&ctx, 20);
    let child = child as u32;
    if pidns_mode() {
        // `child_pid` is a global id: the child registers itself when it returns
        // from clone/fork (`sys_exit_fork_child`), before it runs any user code.
        let _ = FORKING.insert(&child, &id, BPF_ANY as u64);
        return 0;
    }
    if PIDS
        .insert(&child, &reason::FORKED, BPF_NOEXIST as u64)
        .is_err()
        && !is_traced(child)
    {
        bump(counter::PIDS_FULL);
    }
    emit(&ProcessEvent {
        header: header(kind::FORK, tgid, id as u32),
        child_pid: child,
        exit_code: 0,
        comm: comm(),
    });
    0
}

/// Pid-namespace mode only: sys_exit_{clone,clone3,fork,vfork} (`ret` at 16). In
/// the child (ret 0) of a traced parent: adds the child's id in the loader's
/// namespace to `PIDS` and reports the fork, as sched_process_fork does in the
/// initial namespace. A child in another pid namespace (CLONE_NEWPID) is not
/// traced.
#[tracepoint]
pub fn sys_exit_fork_child(ctx: TracePointContext) -> u32 {
    let ret: i64 = field(&ctx, 16);
    if ret != 0 {
        return 0;
    }
    let global = bpf_get_current_pid_tgid();
    let gtid = global as u32;
    // SAFETY: the value is copied out at once.
    let Some(parent) = (unsafe { FORKING.get(&gtid) }).copied() else {
        return 0;
    };
    let _ = FORKING.remove(&gtid);
    let Some(id) = current_id(global) else {
        return 0;
    };
    let child = id as u32;
    if PIDS
        .insert(&child, &reason::FORKED, BPF_NOEXIST as u64)
        .is_err()
        && !is_traced(child)
    {
        bump(counter::PIDS_FULL);
    }
    emit(&ProcessEvent {
        header: header(kind::FORK, (parent >> 32) as u32, parent as u32),
        child_pid: child,
        exit_code: 0,
        comm: comm(),
    });
    0
}

/// sched/sched_process_exit: `pid` (the thread id) at 24, `group_dead` at 32.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(id) = current_id(global) else {
        return 0;
    };
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    if tid != tgid && is_traced(tid) {
        // A thread entry added at fork.
        let _ = PIDS.remove(&tid);
    }
    let traced = is_traced(tgid);
    if traced {
        // A thread that dies inside an SSL_* call never returns from it: do not let
        // a later thread with the same id look like it is inside one.
        let _ = SSL_ACTIVE.remove(&global);
    }
    let group_dead: u8 = field(&ctx, 32);
    if group_dead == 0 || !traced {
        return 0;
    }
    emit(&ProcessEvent {
        header: header(kind::EXIT, tgid, tid),
        child_pid: 0,
        exit_code: exit_code(),
        comm: comm(),
    });
    let _ = PIDS.remove(&tgid);
    0
}

/// The exit status of the current (exiting) task: `task_struct.exit_code`, set by
/// do_exit before sched_process_exit fires (for the last thread of a process that
/// called exit_group, the group's code), at the offset user space found in the
/// kernel's BTF. The code passed to exit/exit_group, or -1 when killed by a signal
/// (or when the offset is unknown).
#[inline(always)]
fn exit_code() -> i32 {
    let off = match CONFIG.get(0) {
        Some(c) if c.task_exit_code_offset != 0 => u64::from(c.task_exit_code_offset),
        _ => return -1,
    };
    let mut status: i32 = 0;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let r = unsafe {
        let task = bpf_get_current_task();
        bpf_probe_read_kernel(
            ptr::addr_of_mut!(status).cast(),
            4,
            (task + off) as *const _,
        )
    };
    if r != 0 || status & 0x7f != 0 {
        return -1;
    }
    (status >> 8) & 0xff
}

// ---------------------------------------------------------------------------
// TCP state: sock/inet_sock_set_state
// ---------------------------------------------------------------------------

#[inline(always)]
fn port_selected(port: u16) -> bool {
    PORTS
        .get(u32::from(port >> 6))
        .is_some_and(|w| *w & (1u64 << (port & 63)) != 0)
}

/// Listening on / connecting to a selected port selects the current process.
#[inline(always)]
fn select_by_port(port: u16, how: u16) {
    if port == 0 || !port_selected(port) {
        return;
    }
    let Some(id) = current_id(bpf_get_current_pid_tgid()) else {
        return;
    };
    let tgid = (id >> 32) as u32;
    if tgid == 0 || is_traced(tgid) || config().is_none_or(|c| c.loader_pid == tgid) {
        return;
    }
    if PIDS
        .insert(&tgid, &reason::PORT, BPF_NOEXIST as u64)
        .is_err()
    {
        bump(counter::PIDS_FULL);
        return;
    }
    emit(&PortSelectEvent {
        header: header(kind::PORT_SELECTED, tgid, id as u32),
        port,
        how,
        _pad: 0,
        comm: comm(),
    });
}

/// sock/inet_sock_set_state. Fields: skaddr 8, oldstate 16, newstate 20, sport 24,
/// dport 26 (host order), family 28, protocol 30, saddr 32, daddr 36, saddr_v6 40,
/// daddr_v6 56.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let protocol: u16 = field(&ctx, 30);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let old: i32 = field(&ctx, 16);
    let new: i32 = field(&ctx, 20);
    let sk: u64 = field(&ctx, 8);
    match new {
        TCP_ESTABLISHED => {
            let role = match old {
                TCP_SYN_SENT => role::CLIENT,
                TCP_SYN_RECV => role::SERVER,
                _ => return 0,
            };
            let family: u16 = field(&ctx, 28);
            let mut info = ConnInfo {
                conn_id: next_conn_id(),
                announced_pid: 0,
                family,
                role,
                flags: conn_flags::TUPLE_KNOWN,
                local_port: field(&ctx, 24),
                peer_port: field(&ctx, 26),
                _pad: 0,
                local_addr: [0; 16],
                peer_addr: [0; 16],
            };
            if family == AF_INET {
                let s: u32 = field(&ctx, 32);
                let d: u32 = field(&ctx, 36);
                info.local_addr[..4].copy_from_slice(&s.to_ne_bytes());
                info.peer_addr[..4].copy_from_slice(&d.to_ne_bytes());
            } else if family == AF_INET6 {
                info.local_addr = field16(&ctx, 40);
                info.peer_addr = field16(&ctx, 56);
            } else {
                return 0;
            }
            let _ = CONNS.insert(&sk, &info, BPF_ANY as u64);
        }
        TCP_CLOSE => {
            // SAFETY: the value is copied out at once.
            if let Some(c) = unsafe { CONNS.get(&sk) }.copied() {
                if c.announced_pid != 0 {
                    emit(&CloseEvent {
                        header: header(kind::CONN_CLOSE, c.announced_pid, 0),
                        conn_id: c.conn_id,
                    });
                }
                let _ = CONNS.remove(&sk);
            }
        }
        TCP_LISTEN if old == TCP_CLOSE => select_by_port(field(&ctx, 24), port_how::LISTEN),
        TCP_SYN_SENT if old == TCP_CLOSE => select_by_port(field(&ctx, 26), port_how::CONNECT),
        _ => {}
    }
    0
}

// ---------------------------------------------------------------------------
// Data: sock/sock_{recv,send}_length as BTF tracepoints
// ---------------------------------------------------------------------------

/// Syscall numbers and the saved user registers holding the syscall number and
/// its first two arguments, per architecture (`bpf_target_arch` is set by
/// aya-build to the loader's target). Offsets are those of the kernel's
/// `struct pt_regs`, a fixed ABI (ptrace's `user_regs_struct` has the same layout).
#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    use tandem_ebpf_common::syscall;
    /// `orig_ax`, `di`, `si`, `dx`.
    pub const NR: usize = 120;
    pub const ARG0: usize = 112;
    pub const ARG1: usize = 104;
    pub const ARG2: usize = 96;
    /// Go's register ABI (Go >= 1.17): `ax` (receiver / first result), `bx`,
    /// `cx` (a slice's pointer and length), and `r14` (the goroutine, `g`).
    pub const GO_ARG0: usize = 80;
    pub const GO_ARG1: usize = 40;
    pub const GO_ARG2: usize = 88;
    /// `di`: Go 1.17's `newproc1` creating goroutine.
    pub const GO_ARG3: usize = 112;
    pub const GO_G: usize = 8;
    #[inline(always)]
    pub fn syscall(nr: u64) -> u8 {
        match nr {
            0 => syscall::READ,
            1 => syscall::WRITE,
            19 => syscall::READV,
            20 => syscall::WRITEV,
            40 => syscall::SENDFILE,
            275 => syscall::SPLICE,
            44 => syscall::SENDTO,
            45 => syscall::RECVFROM,
            46 => syscall::SENDMSG,
            47 => syscall::RECVMSG,
            _ => 0,
        }
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    use tandem_ebpf_common::syscall;
    /// `syscallno` (s32; the next 4 bytes are `pmr`, masked off), `orig_x0`,
    /// `regs[1]`, `regs[2]`.
    pub const NR: usize = 280;
    pub const ARG0: usize = 272;
    pub const ARG1: usize = 8;
    pub const ARG2: usize = 16;
    /// Go's register ABI: `x0`, `x1`, `x2`; the goroutine in `x28`.
    pub const GO_ARG0: usize = 0;
    pub const GO_ARG1: usize = 8;
    pub const GO_ARG2: usize = 16;
    pub const GO_ARG3: usize = 24;
    pub const GO_G: usize = 224;
    #[inline(always)]
    pub fn syscall(nr: u64) -> u8 {
        match nr & 0xffff_ffff {
            63 => syscall::READ,
            64 => syscall::WRITE,
            65 => syscall::READV,
            66 => syscall::WRITEV,
            71 => syscall::SENDFILE,
            76 => syscall::SPLICE,
            206 => syscall::SENDTO,
            207 => syscall::RECVFROM,
            211 => syscall::SENDMSG,
            212 => syscall::RECVMSG,
            _ => 0,
        }
    }
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
mod arch {
    pub const NR: usize = 0;
    pub const ARG0: usize = 0;
    pub const ARG1: usize = 0;
    pub const ARG2: usize = 0;
    pub const GO_ARG0: usize = 0;
    pub const GO_ARG1: usize = 0;
    pub const GO_ARG2: usize = 0;
    pub const GO_ARG3: usize = 0;
    pub const GO_G: usize = 0;
    /// Syscall arguments are not decoded on this architecture: no data records.
    #[inline(always)]
    pub fn syscall(_nr: u64) -> u8 {
        0
    }
}

/// The current syscall (one of [`syscall`], 0 for another one), the socket's fd
/// (the first argument; splice's third) and the second argument (the buffer,
/// iovec array or msghdr; 0 for sendfile and splice, whose bytes come from a file
/// or a pipe and are not captured), from the registers the task saved on
/// entering the kernel.
#[inline(always)]
fn syscall_args() -> (u8, i32, u64) {
    // SAFETY: helpers of tracing programs; the returned pt_regs pointer is a
    // BTF-typed kernel pointer the verifier lets us load fixed offsets from.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const u8;
        let nr = ptr::read_volatile(regs.add(arch::NR).cast::<u64>());
        let kind = arch::syscall(nr);
        if kind == 0 {
            return (0, 0, 0);
        }
        match kind {
            syscall::SENDFILE => {
                let fd = ptr::read_volatile(regs.add(arch::ARG0).cast::<u64>());
                (kind, fd as i32, 0)
            }
            syscall::SPLICE => {
                let fd = ptr::read_volatile(regs.add(arch::ARG2).cast::<u64>());
                (kind, fd as i32, 0)
            }
            _ => {
                let fd = ptr::read_volatile(regs.add(arch::ARG0).cast::<u64>());
                let buf = ptr::read_volatile(regs.add(arch::ARG1).cast::<u64>());
                (kind, fd as i32, buf)
            }
        }
    }
}

/// The goroutine (`g`) register the task saved on entering the kernel: in a Go
/// process's syscall it is the goroutine making it (Go's syscall stubs keep it).
#[inline(always)]
fn current_goroutine() -> u64 {
    // SAFETY: as in `syscall_args`.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const u8;
        ptr::read_volatile(regs.add(arch::GO_G).cast::<u64>())
    }
}

/// Whether `sk` (not in `CONNS`) is an AF_INET/AF_INET6 TCP socket: `skc_family`
/// at offset 16 of `struct sock_common` (unchanged since Linux 2.6), `sk_protocol`
/// at the offset user space found in the kernel's BTF (`Config::sk_protocol_offset`).
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    let off = match CONFIG.get(0) {
        Some(c) if c.sk_protocol_offset != 0 => u64::from(c.sk_protocol_offset),
        _ => return false,
    };
    let mut family: u16 = 0;
    let mut protocol: u16 = 0;
    // SAFETY: bpf_probe_read_kernel checks the addresses.
    unsafe {
        if bpf_probe_read_kernel(ptr::addr_of_mut!(family).cast(), 2, (sk + 16) as *const _) != 0
            || bpf_probe_read_kernel(
                ptr::addr_of_mut!(protocol).cast(),
                2,
                (sk + off) as *const _,
            ) != 0
        {
            return false;
        }
    }
    protocol == IPPROTO_TCP && (family == AF_INET || family == AF_INET6)
}

/// sock_recv_length / sock_send_length (`TP_PROTO(struct sock *sk, int ret, int
/// flags)`) fire in `sock_recvmsg`/`sock_sendmsg`, in the caller's context, for
/// read/write/readv/writev on sockets as well as recv*/send*: the bytes have just
/// been copied to (recv) or from (send) the user buffer named by the syscall's
/// arguments. One `PIDS` lookup for every process; for traced ones, the data record.
/// No syscall tracepoint is needed, so untraced tasks keep the fast syscall path.
#[inline(always)]
fn on_sock_io(ctx: &BtfTracePointContext, dir: u8) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(id) = current_id(global) else {
        return 0;
    };
    let Some(traced) = PIDS.get_ptr(&((id >> 32) as u32)) else {
        return 0;
    };
    let ret: i64 = ctx.arg::<i32>(1).into();
    if ret <= 0 {
        return 0;
    }
    if dir == direction::INGRESS && ctx.arg::<u32>(2) & MSG_PEEK != 0 {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let known = CONNS.get_ptr_mut(&sk);
    if known.is_none() && !is_tcp(sk) {
        return 0;
    }
    let (kind, fd, buf) = syscall_args();
    let expected = match kind {
        syscall::READ | syscall::READV | syscall::RECVFROM | syscall::RECVMSG => direction::INGRESS,
        syscall::WRITE
        | syscall::WRITEV
        | syscall::SENDTO
        | syscall::SENDMSG
        | syscall::SENDFILE
        | syscall::SPLICE => direction::EGRESS,
        _ => 0,
    };
    if expected != dir {
        // io_uring, sendmmsg/recvmmsg: bytes tandem does not see.
        bump(counter::UNCAPTURED_SYSCALL);
        return 0;
    }
    // SAFETY: pointer to a live map value (a plain integer).
    let traced = unsafe { *traced };
    let io = SockIo {
        global,
        id,
        traced,
        sk,
        ret: ret as u64,
        dir,
        kind,
        fd,
        buf,
    };
    sock_io::<true>(&io, known)
}

/// One socket read or write of a traced process, as a data path found it.
struct SockIo {
    /// `bpf_get_current_pid_tgid()`, and the ids as the loader sees them.
    global: u64,
    id: u64,
    /// The process's `PIDS` value.
    traced: u32,
    sk: u64,
    /// Bytes moved (> 0).
    ret: u64,
    dir: u8,
    /// One of [`syscall`]; the descriptor and the buffer (iovec array, msghdr).
    kind: u8,
    fd: i32,
    buf: u64,
}

/// The data records of one socket read or write (both data paths). `BTF`: the
/// task's saved user registers can be read (`bpf_task_pt_regs`, the BTF path's
/// kernels): only then is the goroutine of a Go process known (the syscall path
/// leaves Go's goroutines and crypto/tls calls unrecognised).
#[inline(always)]
fn sock_io<const BTF: bool>(io: &SockIo, known: Option<*mut ConnInfo>) -> u32 {
    let SockIo {
        global,
        id,
        traced,
        sk,
        ret,
        dir,
        kind,
        fd,
        buf,
    } = *io;
    let uses_ssl = traced & PIDS_USES_SSL != 0;
    let uses_go_tls = traced & PIDS_USES_GO_TLS != 0;
    // Inside an OpenSSL call of this thread, or a Go crypto/tls call of this
    // goroutine: these are TLS records; remember the socket for the call's
    // plaintext record, emitted when the call returns.
    let in_call = uses_ssl
        .then(|| SSL_ACTIVE.get_ptr_mut(&global))
        .flatten()
        .or_else(|| {
            (BTF && uses_go_tls)
                .then(|| {
                    GO_ACTIVE.get_ptr_mut(&SslKey {
                        tgid: (id >> 32) as u32,
                        _pad: 0,
                        ssl: current_goroutine(),
                    })
                })
                .flatten()
        });
    if let Some(call) = in_call {
        // SAFETY: pointer to a live map value of this thread's (goroutine's) key.
        unsafe {
            (*call).sk = sk;
            (*call).fd = fd;
        }
        // Announced (and marked) only if the call yields plaintext: a close_notify
        // written after the socket reached TCP_CLOSE must not open a connection.
        if let Some(c) = known {
            // SAFETY: pointer to a live map value; fields are plain integers.
            unsafe { (*c).flags |= conn_flags::TLS };
        }
        bump(counter::TLS_CIPHERTEXT_SKIPPED);
        return 0;
    }
    if (uses_ssl || uses_go_tls) && tls::is_tls_record(kind, buf, ret) {
        // A TLS record moved outside the probed calls (OpenSSL over memory BIOs, as
        // Node.js uses it): never data; a read is remembered for the `SSL_read` that
        // follows on this thread.
        if let Some(c) = known {
            // SAFETY: pointer to a live map value; fields are plain integers.
            unsafe { (*c).flags |= conn_flags::TLS };
        }
        if dir == direction::INGRESS {
            let conn = SslConn { sk, fd, _pad: 0 };
            let _ = SSL_LAST_READ.insert(&global, &conn, BPF_ANY as u64);
        }
        bump(counter::TLS_CIPHERTEXT_SKIPPED);
        return 0;
    }
    let (conn_id, flags) = connection_of(known, sk, id, fd, false);
    let task = if BTF && traced & (PIDS_GO | PIDS_USES_GO_TLS) != 0 {
        goroutines::task((id >> 32) as u32, current_goroutine())
    } else {
        NO_TASK
    };
    if flags & conn_flags::TLS != 0 {
        // TLS records outside the probed calls (e.g. a handshake step of a function
        // that is not probed): never delivered as data.
        bump(counter::TLS_CIPHERTEXT_SKIPPED);
        return 0;
    }
    let Some(iov) = iovec_array(kind, buf) else {
        let src = match kind {
            // Their bytes come from (or go to) a file, not user memory.
            syscall::SENDFILE | syscall::SPLICE => 0,
            _ => buf,
        };
        emit_data(id, conn_id, ret, src, ret, dir, kind, task);
        return 0;
    };
    // readv/writev/recvmsg/sendmsg: one record per iovec (each captured up to
    // capture_bytes), so a message split over iovecs (a head, a chunk-size line, a
    // body: Node.js writes chunked responses so) keeps its framing; the bytes past
    // MAX_IOVECS iovecs are counted, uncaptured, in the last record.
    let mut left = ret;
    for i in 0..MAX_IOVECS {
        if left == 0 {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; }. `left > 0` means the
        // syscall moved bytes into (or out of) this iovec, so it exists.
        let mut v = [0u64; 2];
        // SAFETY: bpf_probe_read_user checks the address.
        let r =
            unsafe { bpf_probe_read_user(v.as_mut_ptr().cast(), 16, (iov + 16 * i) as *const _) };
        if r != 0 {
            emit_data(id, conn_id, left, 0, 0, dir, kind, task);
            break;
        }
        let len = v[1].min(left);
        if len == 0 {
            continue;
        }
        let total = if i + 1 == MAX_IOVECS { left } else { len };
        emit_data(id, conn_id, total, v[0], len, dir, kind, task);
        left -= total;
    }
    0
}

/// Most iovecs of one readv/writev/recvmsg/sendmsg given a record each.
const MAX_IOVECS: u64 = 8;

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    on_sock_io(&ctx, direction::INGRESS)
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    on_sock_io(&ctx, direction::EGRESS)
}

/// The connection id of `sk` for process `tgid` and its `conn_flags`, announcing
/// the connection to user space the first time this process uses it (`id`: the
/// current ids as the loader sees them). `tls`: the socket is used inside an
/// OpenSSL call, mark it.
#[inline(always)]
fn connection(sk: u64, id: u64, fd: i32, tls: bool) -> (u64, u8) {
    connection_of(CONNS.get_ptr_mut(&sk), sk, id, fd, tls)
}

/// [`connection`] with the socket's `CONNS` entry already looked up.
#[inline(always)]
fn connection_of(known: Option<*mut ConnInfo>, sk: u64, id: u64, fd: i32, tls: bool) -> (u64, u8) {
    let tgid = (id >> 32) as u32;
    if let Some(c) = known {
        // SAFETY: pointer to a live map value; fields are plain integers.
        let c = unsafe { &mut *c };
        if tls {
            c.flags |= conn_flags::TLS;
        }
        if c.announced_pid != tgid {
            c.announced_pid = tgid;
            emit(&ConnEvent {
                header: header(kind::CONN_OPEN, tgid, id as u32),
                conn_id: c.conn_id,
                fd,
                family: c.family,
                role: c.role,
                flags: c.flags,
                local_port: c.local_port,
                peer_port: c.peer_port,
                _pad: 0,
                local_addr: c.local_addr,
                peer_addr: c.peer_addr,
            });
        }
        return (c.conn_id, c.flags);
    }
    // Established before the programs were attached (or evicted from the LRU map):
    // user space resolves fd -> socket inode -> /proc/net/tcp{,6}.
    let conn_id = next_conn_id();
    let flags = if tls { conn_flags::TLS } else { 0 };
    let info = ConnInfo {
        conn_id,
        announced_pid: tgid,
        flags,
        ..ConnInfo::default()
    };
    let _ = CONNS.insert(&sk, &info, BPF_NOEXIST as u64);
    emit(&ConnEvent {
        header: header(kind::CONN_OPEN, tgid, id as u32),
        conn_id,
        fd,
        flags,
        ..ConnEvent::default()
    });
    (conn_id, flags)
}

/// The user address of the iovec array of a vectored call (`None` for the others).
#[inline(always)]
fn iovec_array(kind: u8, buf: u64) -> Option<u64> {
    match kind {
        syscall::READV | syscall::WRITEV => Some(buf),
        syscall::RECVMSG | syscall::SENDMSG => {
            // struct user_msghdr: msg_name 0, msg_namelen 8, msg_iov 16.
            let mut msg_iov: u64 = 0;
            // SAFETY: bpf_probe_read_user checks the address.
            let r = unsafe {
                bpf_probe_read_user(ptr::addr_of_mut!(msg_iov).cast(), 8, (buf + 16) as *const _)
            };
            // An unreadable msghdr: the bytes are counted, not captured.
            Some(if r == 0 { msg_iov } else { 0 })
        }
        _ => None,
    }
}

/// A data record reserved in the ring buffer with room for `N` payload bytes: the
/// layout of [`DataEvent`] with a smaller array (user space reads `captured_len`).
#[repr(C)]
struct DataRecord<const N: usize> {
    header: Header,
    conn_id: u64,
    total_len: u64,
    captured_len: u32,
    direction: u8,
    syscall: u8,
    _pad: u16,
    goroutine: u64,
    goroutine_parent: u64,
    data: [u8; N],
}

const _: () = assert!(core::mem::offset_of!(DataRecord<256>, data) == DATA_OFFSET);
const _: () = assert!(
    core::mem::offset_of!(DataRecord<256>, goroutine) == data_offset::GOROUTINE
        && core::mem::offset_of!(DataRecord<256>, goroutine_parent)
            == data_offset::GOROUTINE_PARENT
);

/// The goroutine a data record is for and its creator ([`DataEvent`]'s fields).
type Task = (u64, u64);
/// Not a Go process (or its goroutine unknown).
const NO_TASK: Task = (0, 0);

/// Emits a data record: `total` bytes moved, the first `min(avail, capture_bytes)`
/// copied from the user memory at `src` straight into a ring buffer reservation
/// of the smallest size class that holds them (256 B, 1 KiB, 4 KiB, 16 KiB: a
/// reservation's size must be a constant); `task`: see [`goroutines::task`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit_data(
    id: u64,
    conn_id: u64,
    total: u64,
    src: u64,
    avail: u64,
    direction: u8,
    syscall: u8,
    task: Task,
) {
    let (capture, wakeup) = config().map_or((0, 0), |c| {
        (u64::from(c.capture_bytes), u64::from(c.wakeup_bytes))
    });
    let n = if src == 0 { 0 } else { avail.min(capture) };
    let h = header(kind::DATA, (id >> 32) as u32, id as u32);
    // Wake the loader only when enough is waiting, so the ring buffer can stay
    // small (and cache-resident) without a wake-up per record. Asking the ring
    // how full it is reads a cache line the loader writes, so every 32nd record
    // of a CPU asks; a wake-up costs this CPU an interrupt (irq_work), so a CPU
    // forces one at most every WAKEUP_GAP_NS (a loader that is awake already
    // needs none).
    let mut flags = BPF_RB_NO_WAKEUP as u64;
    if wakeup != 0 {
        if let (Some(tick), Some(last)) = (
            COUNTERS.get_ptr_mut(counter::WAKEUP_TICK),
            COUNTERS.get_ptr_mut(counter::WAKEUP_LAST_NS),
        ) {
            // SAFETY: per-CPU values; these programs do not nest on one CPU.
            unsafe {
                *tick += 1;
                if *tick & 31 == 0
                    && h.ts_ns.wrapping_sub(*last) >= WAKEUP_GAP_NS
                    && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup
                {
                    *last = h.ts_ns;
                    flags = BPF_RB_FORCE_WAKEUP as u64;
                }
            }
        }
    }
    let r = (h, conn_id, total, src, n, direction, syscall, flags, task);
    if n <= 256 {
        emit_sized::<256>(r);
    } else if n <= 1024 {
        emit_sized::<1024>(r);
    } else if n <= 4096 {
        emit_sized::<4096>(r);
    } else {
        emit_sized::<MAX_CAPTURE_BYTES>(r);
    }
}

/// Least time between two wake-ups of the loader forced by one CPU.
const WAKEUP_GAP_NS: u64 = 1_000_000;

/// What [`emit_sized`] writes: header, connection id, total bytes, source, bytes
/// to copy, direction, syscall, ring buffer submit flags, goroutines.
type Emit = (Header, u64, u64, u64, u64, u8, u8, u64, Task);

/// [`emit_data`] for one size class; `n <= N`, `N` a power of two.
#[inline(always)]
fn emit_sized<const N: usize>(
    (header, conn_id, total, src, n, direction, syscall, flags, task): Emit,
) {
    let Some(mut entry) = EVENTS.reserve::<DataRecord<N>>(0) else {
        bump(counter::RINGBUF_LOST);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points at the reserved record, large enough for a
    // DataRecord<N>; every field before `data` is written.
    unsafe {
        (*rec).header = header;
        (*rec).conn_id = conn_id;
        (*rec).total_len = total;
        (*rec).direction = direction;
        (*rec).syscall = syscall;
        (*rec)._pad = 0;
        (*rec).goroutine = task.0;
        (*rec).goroutine_parent = task.1;
        (*rec).captured_len = 0;
        if n > 0 {
            // In [1, N] by construction, which the verifier can see.
            let m = ((n - 1) & (N as u64 - 1)) + 1;
            let dst = ptr::addr_of_mut!((*rec).data).cast::<u8>();
            if bpf_probe_read_user(dst.cast(), m as u32, src as *const _) == 0 {
                (*rec).captured_len = m as u32;
            }
        }
    }
    entry.submit(flags);
}

mod goroutines;
mod syscalls;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
