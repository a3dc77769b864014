//! The TLS capture points: OpenSSL's `SSL_*` functions (`ssl_enter`, `ssl_return`)
//! and Go's crypto/tls (`go_tls`), and the TLS record test the socket data path
//! uses for runtimes that move ciphertext outside those calls. Maps, the data path
//! and the record writers are in `main.rs`; design: `ebpf/README.md` ("TLS").

use super::*;

/// Whether the bytes a syscall moved begin with a TLS record header: content type
/// 20-23 (change_cipher_spec, alert, handshake, application_data), version 3.x
/// (x <= 4), a length of at most 2^14 + 2048.
#[inline(always)]
pub(crate) fn is_tls_record(kind: u8, buf: u64, moved: u64) -> bool {
    if moved < 5 {
        return false;
    }
    let start = match iovec_array(kind, buf) {
        None => buf,
        Some(0) => return false,
        Some(iov) => {
            let mut base: u64 = 0;
            // SAFETY: bpf_probe_read_user checks the address.
            if unsafe { bpf_probe_read_user(ptr::addr_of_mut!(base).cast(), 8, iov as *const _) }
                != 0
            {
                return false;
            }
            base
        }
    };
    let mut h = [0u8; 5];
    // SAFETY: bpf_probe_read_user checks the address.
    if start == 0
        || unsafe { bpf_probe_read_user(h.as_mut_ptr().cast(), 5, start as *const _) } != 0
    {
        return false;
    }
    let len = (u16::from(h[3]) << 8) | u16::from(h[4]);
    (20..=23).contains(&h[0]) && h[1] == 3 && h[2] <= 4 && len > 0 && len <= 18_432
}

// ---------------------------------------------------------------------------
// TLS: uprobes on OpenSSL's SSL_* functions (attached with uprobe_multi links;
// the cookie of each attached offset says which function it is, see `ssl_fn`)
// ---------------------------------------------------------------------------

/// Entry of an `SSL_*` function: remember the call (outermost one per thread).
#[uprobe]
pub fn ssl_enter(ctx: ProbeContext) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(id) = current_id(global) else {
        return 0;
    };
    let Some(traced) = PIDS.get_ptr_mut(&((id >> 32) as u32)) else {
        return 0;
    };
    // SAFETY: pointer to a live map value (a plain integer).
    unsafe {
        if *traced & PIDS_USES_SSL == 0 {
            *traced |= PIDS_USES_SSL;
        }
    }
    if let Some(call) = SSL_ACTIVE.get_ptr_mut(&global) {
        // SAFETY: pointer to a live map value of this thread's key.
        unsafe { (*call).depth = (*call).depth.saturating_add(1) };
        return 0;
    }
    // SAFETY: the context pointer of this program.
    let func = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u8;
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let (buf, len_ptr) = match func {
        ssl_fn::READ | ssl_fn::WRITE => (ctx.arg(1).unwrap_or(0), 0),
        ssl_fn::READ_EX | ssl_fn::WRITE_EX => (ctx.arg(1).unwrap_or(0), ctx.arg(3).unwrap_or(0)),
        ssl_fn::OTHER => (0, 0),
        _ => return 0,
    };
    let call = SslCall {
        ssl,
        buf,
        len_ptr,
        sk: 0,
        fd: 0,
        func,
        depth: 0,
        _pad: 0,
    };
    let _ = SSL_ACTIVE.insert(&global, &call, BPF_ANY as u64);
    0
}

/// The call of an in-flight entry (`SSL_ACTIVE`) at its outermost
/// return; `None` at a nested call's return, which only counts down.
#[inline(always)]
fn outermost(p: *mut SslCall) -> Option<SslCall> {
    // SAFETY: pointer to a live map value of this thread's (goroutine's) key.
    unsafe {
        if (*p).depth > 0 {
            (*p).depth -= 1;
            return None;
        }
        Some(*p)
    }
}

/// Return of an `SSL_*` function: emit the plaintext it moved as a data record of
/// the connection its socket belongs to.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(call) = SSL_ACTIVE.get_ptr_mut(&global).and_then(outermost) else {
        return 0;
    };
    let _ = SSL_ACTIVE.remove(&global);
    let Some(id) = current_id(global) else {
        return 0;
    };
    let key = SslKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        ssl: call.ssl,
    };
    let (sk, fd) = if call.sk != 0 {
        let conn = SslConn {
            sk: call.sk,
            fd: call.fd,
            _pad: 0,
        };
        let _ = SSL_CONNS.insert(&key, &conn, BPF_ANY as u64);
        (call.sk, call.fd)
    } else {
        // Served from OpenSSL's buffers without a syscall: the socket this SSL
        // object used before.
        // OpenSSL over memory BIOs (Node.js): an `SSL_read` follows the read of its
        // own connection's TLS record on this thread. That fresh evidence wins over
        // `SSL_CONNS` (whose entry may be of a freed `SSL *` reused for a new
        // connection); it is taken once.
        let last_read = if matches!(call.func, ssl_fn::READ | ssl_fn::READ_EX) {
            // SAFETY: the value is copied out at once.
            let c = unsafe { SSL_LAST_READ.get(&global) }.copied();
            if let Some(c) = c {
                let _ = SSL_LAST_READ.remove(&global);
                let _ = SSL_CONNS.insert(&key, &c, BPF_ANY as u64);
            }
            c
        } else {
            None
        };
        // SAFETY: the value is copied out at once.
        match last_read.or_else(|| unsafe { SSL_CONNS.get(&key) }.copied()) {
            Some(c) => (c.sk, c.fd),
            None => {
                if call.func != ssl_fn::OTHER {
                    bump(counter::TLS_UNKNOWN_CONNECTION);
                }
                return 0;
            }
        }
    };
    let (direction, syscall) = match call.func {
        ssl_fn::READ | ssl_fn::READ_EX => (direction::INGRESS, syscall::SSL_READ),
        ssl_fn::WRITE | ssl_fn::WRITE_EX => (direction::EGRESS, syscall::SSL_WRITE),
        _ => return 0,
    };
    let ret: i64 = ctx.ret();
    let moved: u64 = match call.func {
        ssl_fn::READ | ssl_fn::WRITE => {
            let r = ret as i32;
            if r <= 0 {
                return 0;
            }
            r as u64
        }
        _ => {
            if ret as i32 != 1 || call.len_ptr == 0 {
                return 0;
            }
            let mut n: u64 = 0;
            // SAFETY: bpf_probe_read_user checks the address.
            let r = unsafe {
                bpf_probe_read_user(ptr::addr_of_mut!(n).cast(), 8, call.len_ptr as *const _)
            };
            if r != 0 || n == 0 {
                return 0;
            }
            n
        }
    };
    let (conn_id, _) = connection(sk, id, fd, true);
    emit_data(
        id, conn_id, moved, call.buf, moved, direction, syscall, NO_TASK,
    );
    0
}

// ---------------------------------------------------------------------------
// Go crypto/tls: one uprobe program at the entry and at every RET of
// `(*Conn).Read` and `(*Conn).Write` (the cookie says which, `go_fn`): Go moves
// goroutine stacks, so no uretprobe. Registers per Go's ABI (`arch::GO_*`).
// ---------------------------------------------------------------------------

/// Entry: remember the call by goroutine. Return: emit the plaintext moved.
#[uprobe]
pub fn go_tls(ctx: ProbeContext) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(id) = current_id(global) else {
        return 0;
    };
    let tgid = (id >> 32) as u32;
    let Some(traced) = PIDS.get_ptr_mut(&tgid) else {
        return 0;
    };
    let regs = ctx.regs as *const u8;
    // SAFETY: fixed offsets of this program's context (the user registers).
    let reg = |off: usize| unsafe { ptr::read_volatile(regs.add(off).cast::<u64>()) };
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: reg(arch::GO_G),
    };
    // SAFETY: the context pointer of this program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if cookie == go_fn::READ_ENTRY
        || cookie == go_fn::WRITE_ENTRY
        || cookie == go_fn::HANDSHAKE_ENTRY
    {
        // SAFETY: pointer to a live map value (a plain integer).
        unsafe {
            if *traced & PIDS_USES_GO_TLS == 0 {
                *traced |= PIDS_USES_GO_TLS;
            }
        }
        if cookie == go_fn::HANDSHAKE_ENTRY {
            if let Some(call) = GO_ACTIVE.get_ptr_mut(&key) {
                // SAFETY: pointer to a live map value of this goroutine's key.
                unsafe {
                    if u64::from((*call).func) != go_fn::HANDSHAKE_ENTRY {
                        // Read and Write call the handshake: the outer call is
                        // reported, this one is only marked. Marked, not counted:
                        // an entry may be seen twice for one call (restarted
                        // after its stack grew), and it never recurses.
                        (*call).depth = 1;
                        return 0;
                    }
                }
            }
        }
        // Otherwise a new call: Read and Write never nest in one goroutine, and an
        // entry seen again is the same call restarted after its stack grew (Go's
        // prologue calls morestack, then jumps back to the entry): it replaces.
        let mut call = SslCall {
            ssl: reg(arch::GO_ARG0),
            buf: reg(arch::GO_ARG1),
            len_ptr: 0,
            sk: 0,
            fd: 0,
            func: cookie as u8,
            depth: 0,
            _pad: 0,
        };
        if cookie == go_fn::WRITE_ENTRY {
            // A write of a known connection is emitted now, before its bytes reach
            // the peer (at the return, the peer may have answered or closed first).
            let conn_key = SslKey {
                tgid,
                _pad: 0,
                ssl: call.ssl,
            };
            // SAFETY: the value is copied out at once.
            if let Some(c) = unsafe { GO_CONNS.get(&conn_key) }.copied() {
                let len = reg(arch::GO_ARG2);
                if len > 0 && len < 1 << 31 {
                    let (conn_id, _) = connection(c.sk, id, c.fd, true);
                    emit_data(
                        id,
                        conn_id,
                        len,
                        call.buf,
                        len,
                        direction::EGRESS,
                        syscall::SSL_WRITE,
                        goroutines::task(tgid, key.ssl),
                    );
                }
                // Marks the call as reported.
                call.len_ptr = 1;
            }
        }
        let _ = GO_ACTIVE.insert(&key, &call, BPF_ANY as u64);
        return 0;
    }
    let Some(p) = GO_ACTIVE.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: pointer to a live map value of this goroutine's key.
    let call = unsafe { *p };
    let handshake_call = u64::from(call.func) == go_fn::HANDSHAKE_ENTRY;
    if (cookie == go_fn::HANDSHAKE_RETURN) != handshake_call {
        // The return says which function returns: the handshake inside a Read or
        // Write (which goes on), or a Read/Write the handshake made (never: it
        // reads records itself).
        // SAFETY: as above.
        unsafe { (*p).depth = 0 };
        return 0;
    }
    let _ = GO_ACTIVE.remove(&key);
    let conn_key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    if call.sk != 0 {
        let conn = SslConn {
            sk: call.sk,
            fd: call.fd,
            _pad: 0,
        };
        let _ = GO_CONNS.insert(&conn_key, &conn, BPF_ANY as u64);
    }
    if u64::from(call.func) == go_fn::HANDSHAKE_ENTRY {
        // Its TLS records were suppressed; it moves no plaintext (but its socket is
        // now known: the first request may come in with the handshake's last read).
        return 0;
    }
    if call.len_ptr == 1 {
        // A write reported at its entry.
        return 0;
    }
    let (sk, fd) = if call.sk != 0 {
        (call.sk, call.fd)
    } else {
        // Served from crypto/tls's buffer without a syscall.
        // SAFETY: the value is copied out at once.
        match unsafe { GO_CONNS.get(&conn_key) }.copied() {
            Some(c) => (c.sk, c.fd),
            None => {
                bump(counter::TLS_UNKNOWN_CONNECTION);
                return 0;
            }
        }
    };
    let n = reg(arch::GO_ARG0) as i64;
    if n <= 0 {
        return 0;
    }
    let (direction, syscall) = if u64::from(call.func) == go_fn::READ_ENTRY {
        (direction::INGRESS, syscall::SSL_READ)
    } else {
        (direction::EGRESS, syscall::SSL_WRITE)
    };
    let (conn_id, _) = connection(sk, id, fd, true);
    emit_data(
        id,
        conn_id,
        n as u64,
        call.buf,
        n as u64,
        direction,
        syscall,
        goroutines::task(tgid, key.ssl),
    );
    0
}
