//! Records shared by tandem's eBPF programs (`tandem-ebpf`) and the loader.
//!
//! Every record the kernel writes to the ring buffer starts with a [`Header`] whose
//! `kind` says which struct follows. Kinds have explicit numeric ids, grouped by
//! range, and an id is never reused for another layout:
//!
//! | range | group                |
//! |-------|----------------------|
//! | 1-9   | process lifecycle    |
//! | 10-19 | TCP connections      |
//! | 20-29 | data                 |
//!
//! All structs are `#[repr(C)]` with explicit padding (the verifier rejects reads of
//! uninitialised stack padding, and user space reads them as plain bytes).
#![no_std]

/// Default number of payload bytes copied per read/write (`--capture-bytes`).
pub const DEFAULT_CAPTURE_BYTES: u32 = 1024;
/// Hard upper bound of `--capture-bytes`: the size of [`DataEvent::data`].
pub const MAX_CAPTURE_BYTES: usize = 16 * 1024;

/// Record kinds (the `kind` field of [`Header`]). Never reuse a retired id.
pub mod kind {
    /// [`super::ProcessEvent`]: a traced (or, when user space asked for every exec,
    /// any) process called execve.
    pub const EXEC: u32 = 1;
    /// [`super::ProcessEvent`]: a traced process forked (`child_pid` may be a thread).
    pub const FORK: u32 = 2;
    /// [`super::ProcessEvent`]: the last thread of a traced process exited.
    pub const EXIT: u32 = 3;
    /// [`super::PortSelectEvent`]: a process started listening on, or connecting
    /// to, a selected port and was added to the traced processes by the kernel.
    pub const PORT_SELECTED: u32 = 4;
    /// [`super::ConnEvent`]: a traced process used a TCP socket for the first time.
    pub const CONN_OPEN: u32 = 10;
    /// [`super::CloseEvent`]: a TCP socket a traced process used reached TCP_CLOSE.
    pub const CONN_CLOSE: u32 = 11;
    /// [`super::DataEvent`]: bytes a traced process read from or wrote to a TCP socket.
    pub const DATA: u32 = 20;
}

/// Roles in [`ConnEvent::role`] and [`ConnInfo::role`].
pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// The socket was accepted (SYN_RECV -> ESTABLISHED).
    pub const SERVER: u8 = 1;
    /// The socket connected (SYN_SENT -> ESTABLISHED).
    pub const CLIENT: u8 = 2;
}

/// Directions in [`DataEvent::direction`].
pub mod direction {
    pub const INGRESS: u8 = 1;
    pub const EGRESS: u8 = 2;
}

/// Flags of [`ConnEvent::flags`] and [`ConnInfo::flags`].
pub mod conn_flags {
    /// Addresses, ports and role are filled in (seen at TCP_ESTABLISHED).
    pub const TUPLE_KNOWN: u8 = 1;
    /// A traced process used the socket inside an OpenSSL call (`SSL_*` uprobes):
    /// its bytes are TLS records; only the plaintext seen by the uprobes is emitted.
    pub const TLS: u8 = 2;
}

/// Why a process is in the kernel's pid map (values of the `PIDS` map).
pub mod reason {
    /// Put there by user space (selection matched, or start-up scan).
    pub const USER: u32 = 1;
    /// Inherited from a traced parent at fork.
    pub const FORKED: u32 = 2;
    /// Listened on / connected to a selected port.
    pub const PORT: u32 = 3;
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// Every process is selected: fork adds every child to the pid map.
    pub const TRACE_ALL: u32 = 1;
    /// Report every exec (user space matches executables and containers itself).
    pub const EXEC_ALL: u32 = 2;
}

/// Where the classic tracepoint programs read their records' fields: (name, byte
/// offset, size), as in the tracepoint's tracefs `format`. One definition: the
/// programs read at these offsets, and the loader checks each against the running
/// kernel's format before attaching (a field that moved is reported, never read).
pub mod tp {
    pub type Field = (&'static str, usize, usize);
    /// `sched/sched_process_exec`
    pub const EXEC_PID: Field = ("pid", 12, 4);
    /// `sched/sched_process_fork` (runs in the parent)
    pub const FORK_CHILD_PID: Field = ("child_pid", 20, 4);
    /// `sched/sched_process_exit`
    pub const EXIT_PID: Field = ("pid", 24, 4);
    pub const EXIT_GROUP_DEAD: Field = ("group_dead", 32, 1);
    /// `sock/inet_sock_set_state` (ports in host order)
    pub const SKADDR: Field = ("skaddr", 8, 8);
    pub const OLDSTATE: Field = ("oldstate", 16, 4);
    pub const NEWSTATE: Field = ("newstate", 20, 4);
    pub const SPORT: Field = ("sport", 24, 2);
    pub const DPORT: Field = ("dport", 26, 2);
    pub const FAMILY: Field = ("family", 28, 2);
    pub const PROTOCOL: Field = ("protocol", 30, 2);
    pub const SADDR: Field = ("saddr", 32, 4);
    pub const DADDR: Field = ("daddr", 36, 4);
    pub const SADDR_V6: Field = ("saddr_v6", 40, 16);
    pub const DADDR_V6: Field = ("daddr_v6", 56, 16);
    pub const SET_STATE: [Field; 11] = [
        SKADDR, OLDSTATE, NEWSTATE, SPORT, DPORT, FAMILY, PROTOCOL, SADDR, DADDR, SADDR_V6,
        DADDR_V6,
    ];
    /// `syscalls/sys_enter_*`: the syscall number, then each argument in 8 bytes
    /// (named per syscall, see [`sys_arg`]).
    pub const SYS_NR: Field = ("__syscall_nr", 8, 4);
    /// `syscalls/sys_exit_*`
    pub const SYS_EXIT_RET: Field = ("ret", 16, 8);
    /// Argument `i` of a `sys_enter_*` record, named `name` there.
    pub const fn sys_arg(name: &'static str, i: usize) -> Field {
        (name, 16 + 8 * i, 8)
    }
}

/// What [`PortSelectEvent::how`] means.
pub mod port_how {
    pub const LISTEN: u16 = 1;
    pub const CONNECT: u16 = 2;
}

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Ring buffer records dropped because a reservation or output failed (ring full).
    pub const RINGBUF_LOST: u32 = 0;
    /// Connection ids handed out on this CPU (see `conn_id` in the eBPF crate).
    pub const CONN_IDS: u32 = 1;
    /// Children the kernel could not add to the pid map (map full).
    pub const PIDS_FULL: u32 = 2;
    /// Syscall data records not emitted because the bytes were TLS records of a
    /// connection whose plaintext the `SSL_*` uprobes capture.
    pub const TLS_CIPHERTEXT_SKIPPED: u32 = 3;
    /// Plaintext of an `SSL_*` call not emitted because the call's connection was
    /// unknown (no socket syscall seen for that `SSL *` in this process yet).
    pub const TLS_UNKNOWN_CONNECTION: u32 = 4;
    /// Socket reads/writes of traced processes on TCP sockets made through a
    /// syscall whose buffers are not decoded (io_uring, sendmmsg/recvmmsg): no
    /// data record.
    pub const UNCAPTURED_SYSCALL: u32 = 5;
    /// Data records emitted on this CPU (every 32nd checks whether to wake the
    /// loader up, see `Config::wakeup_bytes`).
    pub const WAKEUP_TICK: u32 = 6;
    /// Not a counter: `bpf_ktime_get_ns()` of this CPU's last forced wake-up of
    /// the loader.
    pub const WAKEUP_LAST_NS: u32 = 7;
    /// Goroutine ids handed out on this CPU (see `goroutines.rs` in the eBPF crate).
    pub const GO_IDS: u32 = 8;
    pub const COUNT: u32 = 9;
}

/// Which point of Go's crypto/tls the `go_tls` uprobe fired at: the uprobe_multi
/// cookie of each attached offset (entries and every `RET` of the functions).
pub mod go_fn {
    /// Entry of `crypto/tls.(*Conn).Read(b []byte) (int, error)`.
    pub const READ_ENTRY: u64 = 1;
    /// Entry of `crypto/tls.(*Conn).Write(b []byte) (int, error)`.
    pub const WRITE_ENTRY: u64 = 2;
    /// A `RET` of `Read` (`n` in the first result register).
    pub const READ_RETURN: u64 = 3;
    /// A `RET` of `Write`.
    pub const WRITE_RETURN: u64 = 4;
    /// Entry of `crypto/tls.(*Conn).handshakeContext` (the handshake: its TLS
    /// records are suppressed, no plaintext).
    pub const HANDSHAKE_ENTRY: u64 = 5;
    /// A `RET` of `handshakeContext`.
    pub const HANDSHAKE_RETURN: u64 = 6;
    /// The functions probed, with their entry and return cookies (the first two are
    /// required; the handshake is probed when found).
    pub const PROBED: [(&str, u64, u64); 3] = [
        ("crypto/tls.(*Conn).Read", READ_ENTRY, READ_RETURN),
        ("crypto/tls.(*Conn).Write", WRITE_ENTRY, WRITE_RETURN),
        (
            "crypto/tls.(*Conn).handshakeContext",
            HANDSHAKE_ENTRY,
            HANDSHAKE_RETURN,
        ),
    ];
    /// How many of [`PROBED`] a binary must have.
    pub const REQUIRED: usize = 2;

    /// Entry of `runtime.newproc1(fn, callergp *g, callerpc) *g` (Go 1.18+: the
    /// creating goroutine in the second argument register).
    pub const NEWPROC_ENTRY: u64 = 7;
    /// Entry of Go 1.17's `runtime.newproc1(fn, argp, narg, callergp, callerpc)`
    /// (the creating goroutine in the fourth argument register).
    pub const NEWPROC_ENTRY_ARG3: u64 = 8;
    /// A `RET` of `runtime.newproc1` (the new goroutine in the first result
    /// register).
    pub const NEWPROC_RETURN: u64 = 9;
    /// Entry of `net/http.(*persistConn).roundTrip(req *transportRequest)`, in the
    /// goroutine making the client call (`*transportRequest` begins with the
    /// `*Request` it sends).
    pub const ROUNDTRIP_ENTRY: u64 = 10;
    /// Entry of `net/http.(*Request).write`, in the connection's writer goroutine:
    /// it writes the request for the goroutine that called `roundTrip`.
    pub const REQUEST_WRITE_ENTRY: u64 = 11;
    /// No return probe for this function.
    pub const NO_RETURN: u64 = 0;
    /// The functions the `go_goroutines` program is attached to (goroutine
    /// ancestry and the net/http client's writer goroutine), with their entry
    /// (Go 1.18+) and return cookies; each is probed when found.
    pub const GOROUTINES: [(&str, u64, u64); 3] = [
        ("runtime.newproc1", NEWPROC_ENTRY, NEWPROC_RETURN),
        (
            "net/http.(*persistConn).roundTrip",
            ROUNDTRIP_ENTRY,
            NO_RETURN,
        ),
        ("net/http.(*Request).write", REQUEST_WRITE_ENTRY, NO_RETURN),
    ];
}

/// Which OpenSSL function a TLS uprobe fired for: the uprobe_multi cookie of each
/// attached offset ([`SslCall::func`]).
pub mod ssl_fn {
    /// `int SSL_read(SSL *s, void *buf, int num)`
    pub const READ: u8 = 1;
    /// `int SSL_write(SSL *s, const void *buf, int num)`
    pub const WRITE: u8 = 2;
    /// `int SSL_read_ex(SSL *s, void *buf, size_t num, size_t *readbytes)`
    pub const READ_EX: u8 = 3;
    /// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`
    pub const WRITE_EX: u8 = 4;
    /// `SSL_do_handshake`, `SSL_shutdown`, `SSL_peek{,_ex}`: TLS records move on the
    /// socket (suppressed as ciphertext) but no application data is emitted.
    pub const OTHER: u8 = 5;

    /// The functions probed, with their cookie.
    pub const PROBED: [(&str, u8); 8] = [
        ("SSL_read", READ),
        ("SSL_write", WRITE),
        ("SSL_read_ex", READ_EX),
        ("SSL_write_ex", WRITE_EX),
        ("SSL_do_handshake", OTHER),
        ("SSL_shutdown", OTHER),
        ("SSL_peek", OTHER),
        ("SSL_peek_ex", OTHER),
    ];
}

/// Common first field of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (tgid) the record belongs to.
    pub pid: u32,
    /// Thread id that caused it (0 when not in process context).
    pub tid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
}

/// [`kind::EXEC`], [`kind::FORK`], [`kind::EXIT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessEvent {
    pub header: Header,
    /// FORK: the new task's id (a thread id when the parent created a thread).
    pub child_pid: u32,
    /// EXIT: the code passed to exit/exit_group, or -1 when the process was killed
    /// by a signal.
    pub exit_code: i32,
    /// The task's name (`comm`, NUL-padded) when the record was written: EXEC, the
    /// new image's. The name of a process gone before /proc was read.
    pub comm: [u8; 16],
}

/// [`kind::PORT_SELECTED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSelectEvent {
    pub header: Header,
    pub port: u16,
    /// One of [`port_how`].
    pub how: u16,
    pub _pad: u32,
    /// The task's name (`comm`): see [`ProcessEvent::comm`].
    pub comm: [u8; 16],
}

/// [`kind::CONN_OPEN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub header: Header,
    pub conn_id: u64,
    /// The file descriptor the process used (lets user space resolve a connection
    /// that existed before the probes were attached through /proc).
    pub fd: i32,
    /// AF_INET (2) or AF_INET6 (10); 0 when unknown.
    pub family: u16,
    /// One of [`role`].
    pub role: u8,
    /// Bits of [`conn_flags`].
    pub flags: u8,
    /// Host byte order.
    pub local_port: u16,
    pub peer_port: u16,
    pub _pad: u32,
    /// IPv4 addresses use the first 4 bytes. Network byte order.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
}

/// [`kind::CONN_CLOSE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub header: Header,
    pub conn_id: u64,
}

/// [`kind::DATA`]. The kernel writes the first `DATA_OFFSET + captured_len`
/// bytes of it, in a ring buffer record of a size class that may be larger (user
/// space reads `captured_len`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub header: Header,
    pub conn_id: u64,
    /// Bytes the syscall moved.
    pub total_len: u64,
    /// Bytes of `data` that are valid.
    pub captured_len: u32,
    /// One of [`direction`].
    pub direction: u8,
    /// One of [`syscall`], for diagnostics.
    pub syscall: u8,
    pub _pad: u16,
    /// Go processes: the goroutine the bytes moved for — the caller of `roundTrip`
    /// for a net/http client request written by the connection's writer goroutine
    /// — and the goroutine that created it, as ids unique for the goroutines'
    /// lifetimes (0: not a Go process, or not known).
    pub goroutine: u64,
    pub goroutine_parent: u64,
    pub data: [u8; MAX_CAPTURE_BYTES],
}

/// Byte offsets of [`DataEvent`]'s fields before `data` (user space decodes the
/// records with them).
pub mod data_offset {
    use super::DataEvent;
    use core::mem::offset_of;
    pub const CONN_ID: usize = offset_of!(DataEvent, conn_id);
    pub const TOTAL_LEN: usize = offset_of!(DataEvent, total_len);
    pub const CAPTURED_LEN: usize = offset_of!(DataEvent, captured_len);
    pub const DIRECTION: usize = offset_of!(DataEvent, direction);
    pub const SYSCALL: usize = offset_of!(DataEvent, syscall);
    pub const GOROUTINE: usize = offset_of!(DataEvent, goroutine);
    pub const GOROUTINE_PARENT: usize = offset_of!(DataEvent, goroutine_parent);
}

/// Byte offset of [`DataEvent::data`].
pub const DATA_OFFSET: usize = core::mem::offset_of!(DataEvent, data);

/// Which syscall a data record came from ([`DataEvent::syscall`]).
pub mod syscall {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const RECVFROM: u8 = 3;
    pub const SENDTO: u8 = 4;
    pub const READV: u8 = 5;
    pub const WRITEV: u8 = 6;
    pub const RECVMSG: u8 = 7;
    pub const SENDMSG: u8 = 8;
    /// Plaintext returned by `SSL_read`/`SSL_read_ex` (TLS uprobes).
    pub const SSL_READ: u8 = 9;
    /// Plaintext passed to `SSL_write`/`SSL_write_ex` (TLS uprobes).
    pub const SSL_WRITE: u8 = 10;
    /// sendfile(2) to a socket: the bytes come from a file, none are captured
    /// (`captured_len` 0, `total_len` counts them).
    pub const SENDFILE: u8 = 11;
    /// splice(2) from a pipe to a socket: as [`SENDFILE`].
    pub const SPLICE: u8 = 12;

    /// The syscall's name.
    pub fn name(nr: u8) -> &'static str {
        match nr {
            READ => "read",
            WRITE => "write",
            RECVFROM => "recvfrom",
            SENDTO => "sendto",
            READV => "readv",
            WRITEV => "writev",
            RECVMSG => "recvmsg",
            SENDMSG => "sendmsg",
            SSL_READ => "SSL_read",
            SSL_WRITE => "SSL_write",
            SENDFILE => "sendfile",
            SPLICE => "splice",
            _ => "?",
        }
    }
}

/// Value of the `CONFIG` array (one entry), written by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Payload bytes to copy per syscall, 1..=MAX_CAPTURE_BYTES.
    pub capture_bytes: u32,
    /// Bits of [`config_flags`].
    pub flags: u32,
    /// Added to every connection id, so ids of one loader run never collide with an
    /// earlier run's (user space sets it to CLOCK_MONOTONIC at start-up).
    pub conn_id_base: u64,
    /// The loader's own pid: never selected by port nor inherited by fork.
    pub loader_pid: u32,
    pub _pad: u32,
    /// 0 when the loader runs in the initial pid namespace. Otherwise the device
    /// (kernel `dev_t` encoding) and inode of the loader's pid namespace: the
    /// programs then identify tasks by their ids in that namespace
    /// (`bpf_get_ns_current_pid_tgid`) and ignore tasks outside it.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// Offset of `sk_protocol` (u16) in this kernel's `struct sock`, from its BTF;
    /// 0 when unknown (then only sockets whose handshake the programs saw are
    /// recognised as TCP).
    pub sk_protocol_offset: u32,
    /// Offset of `exit_code` (int) in this kernel's `struct task_struct`, from its
    /// BTF; 0 when unknown (exit codes are then reported as -1).
    pub task_exit_code_offset: u32,
    /// Data records wake the loader up (`BPF_RB_FORCE_WAKEUP`) once the ring
    /// buffer holds at least this many bytes; below, they are written without
    /// wake-up and the loader finds them at its next poll. 0: never.
    pub wakeup_bytes: u32,
    pub _pad2: u32,
    /// The syscall data path (`sys_enter_sock_io`/`sys_exit_sock_io`, for kernels
    /// without the `sock_{send,recv}_length` tracepoints) finds the socket of a
    /// file descriptor through these offsets from the kernel's BTF:
    /// `task->files->fdt->fd[fd]`, that file's `f_inode->i_mode` (a socket?) and
    /// `private_data` (its `struct socket`), whose `sk` is the sock. All 0 when
    /// unknown (that path is then not attached).
    pub fd_offsets: FdOffsets,
}

/// See [`Config::fd_offsets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    /// `fdtable.max_fds` (unsigned int): descriptors at or past it are refused.
    pub fdt_max_fds: u32,
}

/// Value of the `CONNS` map (key: the kernel `struct sock *`, never exported).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn_id: u64,
    /// The last process a CONN_OPEN was emitted for; 0 for none yet.
    pub announced_pid: u32,
    pub family: u16,
    pub role: u8,
    pub flags: u8,
    pub local_port: u16,
    pub peer_port: u16,
    pub _pad: u32,
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
}

/// Value of the `SSL_ACTIVE` map (key: pid_tgid): an OpenSSL call in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslCall {
    /// The `SSL *` argument.
    pub ssl: u64,
    /// The plaintext buffer (read/write functions), else 0.
    pub buf: u64,
    /// `size_t *readbytes` / `size_t *written` of the `_ex` functions, else 0.
    pub len_ptr: u64,
    /// The `struct sock *` of a TCP socket syscall made inside the call, 0 for none.
    pub sk: u64,
    /// The file descriptor of that syscall.
    pub fd: i32,
    /// One of [`ssl_fn`].
    pub func: u8,
    /// Nested `SSL_*` calls of the same thread (the outermost one is reported).
    pub depth: u8,
    pub _pad: u16,
}

/// Key of the `SSL_CONNS` map: which socket an `SSL *` of a process uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// Value of the `SSL_CONNS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslConn {
    pub sk: u64,
    pub fd: i32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain old data: `#[repr(C)]`, integers and byte arrays only, with
    // explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ConnInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Header>(), 24);
        assert_eq!(size_of::<ProcessEvent>(), 48);
        assert_eq!(size_of::<PortSelectEvent>(), 48);
        assert_eq!(
            size_of::<ConnEvent>(),
            24 + 8 + 4 + 2 + 1 + 1 + 2 + 2 + 4 + 32
        );
        assert_eq!(size_of::<CloseEvent>(), 32);
        assert_eq!(DATA_OFFSET, 24 + 8 + 8 + 4 + 1 + 1 + 2 + 8 + 8);
        assert_eq!(size_of::<DataEvent>(), DATA_OFFSET + MAX_CAPTURE_BYTES);
        assert_eq!(
            size_of::<Config>(),
            4 + 4 + 8 + 4 + 4 + 8 + 8 + 4 + 4 + 4 + 4 + 8 * 4
        );
        assert_eq!(size_of::<ConnInfo>(), 8 + 4 + 2 + 1 + 1 + 2 + 2 + 4 + 32);
        assert_eq!(size_of::<SslCall>(), 40);
        assert_eq!(size_of::<SslKey>(), 16);
        assert_eq!(size_of::<SslConn>(), 16);
    }
}
