//! The syscall data path: for kernels without the `sock_recv_length` /
//! `sock_send_length` tracepoints (added in Linux 6.3), the same data records from
//! the syscall tracepoints of the socket calls (`syscalls/sys_{enter,exit}_{read,
//! write,readv,writev,recvfrom,sendto,recvmsg,sendmsg}`). The loader attaches these
//! instead of the BTF ones when those are missing, or when `--data-path syscalls`
//! asks for it. They fire for every process's calls of those syscalls (one `PIDS`
//! lookup each); a traced process's arguments are kept from entry to exit, and at
//! the exit the descriptor is resolved to its socket through the kernel structs
//! whose offsets user space found in the BTF (`Config::fd_offsets`).
//!
//! What this path does not see: `sendfile`/`splice`, and the goroutine of a Go
//! process (no saved user registers on these kernels): Go's crypto/tls plaintext
//! and goroutine linking need the BTF path.

use super::*;

/// The arguments of a traced thread's socket syscall in flight: pid_tgid ->
/// (kind, fd, buffer).
#[map]
static SYS_ARGS: LruHashMap<u64, SysArgs> = LruHashMap::with_max_entries(16_384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct SysArgs {
    buf: u64,
    fd: i32,
    kind: u8,
    _pad: [u8; 3],
}

/// Fields of the `syscalls/sys_{enter,exit}_*` records (`tp`): the syscall number,
/// then each argument (the return value) as 8 bytes from 16.
const NR: usize = tp::SYS_NR.1;
const ARG: usize = tp::sys_arg("", 0).1;

/// `syscalls/sys_enter_{read,write,readv,writev,sendto,recvmsg,sendmsg}`. Reads
/// the first three arguments only: the kernel refuses to attach a program that
/// reads past the record of a three-argument syscall.
#[tracepoint]
pub fn sys_enter_sock_io(ctx: TracePointContext) -> u32 {
    // recvmsg(fd, msg, flags).
    let flags: u64 = field(&ctx, ARG + 2 * 8);
    enter(&ctx, flags, syscall::RECVMSG)
}

/// `syscalls/sys_enter_recvfrom(fd, ubuf, size, flags, addr, addr_len)`.
#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    let flags: u64 = field(&ctx, ARG + 3 * 8);
    enter(&ctx, flags, syscall::RECVFROM)
}

/// Keeps a traced thread's socket syscall arguments until its exit; `flags` are
/// the receive flags when the call is `flags_of` (a peek moves nothing).
#[inline(always)]
fn enter(ctx: &TracePointContext, flags: u64, flags_of: u8) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(id) = current_id(global) else {
        return 0;
    };
    if !is_traced((id >> 32) as u32) {
        return 0;
    }
    let nr: i32 = field(ctx, NR);
    let kind = arch::syscall(nr as u64);
    if matches!(kind, 0 | syscall::SENDFILE | syscall::SPLICE)
        || (kind == flags_of && flags as u32 & MSG_PEEK != 0)
    {
        return 0;
    }
    let args = SysArgs {
        buf: field(ctx, ARG + 8),
        fd: field::<u64>(ctx, ARG) as i32,
        kind,
        _pad: [0; 3],
    };
    let _ = SYS_ARGS.insert(&global, &args, BPF_ANY as u64);
    0
}

#[tracepoint]
pub fn sys_exit_sock_io(ctx: TracePointContext) -> u32 {
    let global = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(args) = unsafe { SYS_ARGS.get(&global) }.copied() else {
        return 0;
    };
    let _ = SYS_ARGS.remove(&global);
    let Some(id) = current_id(global) else {
        return 0;
    };
    let Some(traced) = PIDS.get_ptr(&((id >> 32) as u32)) else {
        return 0;
    };
    // `ret` (long) at 16.
    let ret: i64 = field(&ctx, ARG);
    if ret <= 0 {
        return 0;
    }
    let Some(sk) = socket_of(args.fd) else {
        return 0;
    };
    let known = CONNS.get_ptr_mut(&sk);
    if known.is_none() && !is_tcp(sk) {
        return 0;
    }
    let dir = match args.kind {
        syscall::READ | syscall::READV | syscall::RECVFROM | syscall::RECVMSG => direction::INGRESS,
        _ => direction::EGRESS,
    };
    let io = SockIo {
        global,
        id,
        // SAFETY: pointer to a live map value (a plain integer).
        traced: unsafe { *traced },
        sk,
        ret: ret as u64,
        dir,
        kind: args.kind,
        fd: args.fd,
        buf: args.buf,
    };
    sock_io::<false>(&io, known)
}

/// Reads a kernel pointer-sized value at `addr`.
#[inline(always)]
fn kernel_u64(addr: u64) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let r = unsafe { bpf_probe_read_kernel(ptr::addr_of_mut!(v).cast(), 8, addr as *const _) };
    (r == 0 && v != 0).then_some(v)
}

/// The `struct sock *` of the current task's descriptor `fd`, if it is a socket:
/// `task->files->fdt->fd[fd]`, a file whose inode is a socket (`S_IFSOCK`), its
/// `private_data` (`struct socket *`), `->sk`.
#[inline(always)]
fn socket_of(fd: i32) -> Option<u64> {
    let o = config()?.fd_offsets;
    if o.task_files == 0 || fd < 0 {
        return None;
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files = kernel_u64(task + u64::from(o.task_files))?;
    let fdt = kernel_u64(files + u64::from(o.files_fdt))?;
    let mut max_fds: u32 = 0;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let r = unsafe {
        bpf_probe_read_kernel(
            ptr::addr_of_mut!(max_fds).cast(),
            4,
            (fdt + u64::from(o.fdt_max_fds)) as *const _,
        )
    };
    if r != 0 || fd as u32 >= max_fds {
        return None;
    }
    let array = kernel_u64(fdt + u64::from(o.fdt_fd))?;
    let file = kernel_u64(array + 8 * fd as u64)?;
    let inode = kernel_u64(file + u64::from(o.file_inode))?;
    let mut mode: u16 = 0;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let r = unsafe {
        bpf_probe_read_kernel(
            ptr::addr_of_mut!(mode).cast(),
            2,
            (inode + u64::from(o.inode_mode)) as *const _,
        )
    };
    const S_IFMT: u16 = 0o170000;
    const S_IFSOCK: u16 = 0o140000;
    if r != 0 || mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket = kernel_u64(file + u64::from(o.file_private_data))?;
    kernel_u64(socket + u64::from(o.socket_sk))
}
