//! The socket data capture point: the BTF tracepoints `sock_recv_length`/
//! `sock_send_length` and what both data paths share (`sock_io`: TLS records,
//! connections, the data records in the ring buffer). The syscall path is in
//! `syscalls.rs`.

use super::*;

// ---------------------------------------------------------------------------
// Data: sock/sock_{recv,send}_length as BTF tracepoints
// ---------------------------------------------------------------------------

/// Syscall numbers and the saved user registers holding the syscall number and
/// its first two arguments, per architecture (`bpf_target_arch` is set by
/// aya-build to the loader's target). Offsets are those of the kernel's
/// `struct pt_regs`, a fixed ABI (ptrace's `user_regs_struct` has the same layout).
#[cfg(bpf_target_arch = "x86_64")]
pub(crate) mod arch {
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
pub(crate) mod arch {
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
pub(crate) mod arch {
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
pub(crate) fn syscall_args() -> (u8, i32, u64) {
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
pub(crate) fn current_goroutine() -> u64 {
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
pub(crate) fn is_tcp(sk: u64) -> bool {
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
pub(crate) fn on_sock_io(ctx: &BtfTracePointContext, dir: u8) -> u32 {
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
pub(crate) struct SockIo {
    /// `bpf_get_current_pid_tgid()`, and the ids as the loader sees them.
    pub(crate) global: u64,
    pub(crate) id: u64,
    /// The process's `PIDS` value.
    pub(crate) traced: u32,
    pub(crate) sk: u64,
    /// Bytes moved (> 0).
    pub(crate) ret: u64,
    pub(crate) dir: u8,
    /// One of [`syscall`]; the descriptor and the buffer (iovec array, msghdr).
    pub(crate) kind: u8,
    pub(crate) fd: i32,
    pub(crate) buf: u64,
}

/// The data records of one socket read or write (both data paths). `BTF`: the
/// task's saved user registers can be read (`bpf_task_pt_regs`, the BTF path's
/// kernels): only then is the goroutine of a Go process known (the syscall path
/// leaves Go's goroutines and crypto/tls calls unrecognised).
#[inline(always)]
pub(crate) fn sock_io<const BTF: bool>(io: &SockIo, known: Option<*mut ConnInfo>) -> u32 {
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
pub(crate) const MAX_IOVECS: u64 = 8;

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
pub(crate) fn connection(sk: u64, id: u64, fd: i32, tls: bool) -> (u64, u8) {
    connection_of(CONNS.get_ptr_mut(&sk), sk, id, fd, tls)
}

/// [`connection`] with the socket's `CONNS` entry already looked up.
#[inline(always)]
pub(crate) fn connection_of(
    known: Option<*mut ConnInfo>,
    sk: u64,
    id: u64,
    fd: i32,
    tls: bool,
) -> (u64, u8) {
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
pub(crate) fn iovec_array(kind: u8, buf: u64) -> Option<u64> {
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
pub(crate) struct DataRecord<const N: usize> {
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
pub(crate) type Task = (u64, u64);
/// Not a Go process (or its goroutine unknown).
pub(crate) const NO_TASK: Task = (0, 0);

/// Emits a data record: `total` bytes moved, the first `min(avail, capture_bytes)`
/// copied from the user memory at `src` straight into a ring buffer reservation
/// of the smallest size class that holds them (256 B, 1 KiB, 4 KiB, 16 KiB: a
/// reservation's size must be a constant); `task`: see [`goroutines::task`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_data(
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
pub(crate) const WAKEUP_GAP_NS: u64 = 1_000_000;

/// What [`emit_sized`] writes: header, connection id, total bytes, source, bytes
/// to copy, direction, syscall, ring buffer submit flags, goroutines.
pub(crate) type Emit = (Header, u64, u64, u64, u64, u8, u8, u64, Task);

/// [`emit_data`] for one size class; `n <= N`, `N` a power of two.
#[inline(always)]
pub(crate) fn emit_sized<const N: usize>(
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
