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
// aya's map methods take `impl Borrow<K>`: passing references keeps keys and values
// where they are instead of copying them into the call, and the BPF stack holds
// 512 bytes in all.
#![allow(clippy::needless_borrows_for_generic_args)]

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
    ssl_fn, syscall, tp, CloseEvent, Config, ConnEvent, ConnInfo, Header, PortSelectEvent,
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

mod data;
mod process;
mod tcp;
use data::*;

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
