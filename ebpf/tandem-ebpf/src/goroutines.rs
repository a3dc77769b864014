//! Goroutines: which goroutine a Go process's bytes moved for, and which goroutine
//! created it — the evidence the processor links a Go program's client calls to
//! the server request they were made for (threads are not goroutines: a goroutine
//! resumes on any thread, and one thread runs many).
//!
//! A goroutine is named by an id unique for its lifetime, given when it is created
//! (`runtime.newproc1`): its `g` address is not (a `g` is reused after its
//! goroutine exits, and a child may outlive its creator), so a stale reference can
//! never name a newer goroutine. Goroutines created before the probes were
//! attached are named by their `g` address (ids have the top bit set; addresses
//! never do).
//!
//! One uprobe program, `go_goroutines`, attached with one uprobe_multi link per Go
//! executable at (the cookie says which, `go_fn`):
//! - `runtime.newproc1`'s entry (the creating goroutine, `callergp`) and every RET
//!   (the new `g`): a new id, `GO_PARENT[id] = creator's id`. `newproc1` runs on
//!   the system stack (`g0`), so entry and return meet by thread.
//! - `net/http.(*persistConn).roundTrip`'s entry, in the goroutine making the call:
//!   `GO_CALLER[*Request] = caller` (a `*transportRequest` begins with the
//!   `*Request`).
//! - `net/http.(*Request).write`'s entry, in the connection's writer goroutine
//!   (`persistConn.writeLoop`): `GO_ACTING[writer] = GO_CALLER[request]` (0 when not
//!   found): until its next request, the bytes it writes (the request is flushed
//!   after `write` returns) are the caller's.

use super::*;

/// (tgid, g) -> the id of the goroutine running on it.
#[map]
static GO_ID: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// (tgid, goroutine id) -> the id of the goroutine that created it.
#[map]
static GO_PARENT: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// Thread (global pid_tgid) -> the creating `g`, between `newproc1`'s entry and
/// its return.
#[map]
static GO_NEWPROC: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4_096, 0);

/// (tgid, *http.Request) -> the id of the goroutine that called `roundTrip`.
#[map]
static GO_CALLER: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(16_384, 0);

/// (tgid, writer g) -> the id of the goroutine whose request it writes (0: unknown).
#[map]
static GO_ACTING: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(16_384, 0);

#[inline(always)]
fn key(tgid: u32, v: u64) -> SslKey {
    SslKey {
        tgid,
        _pad: 0,
        ssl: v,
    }
}

/// The id of the goroutine on `g`.
#[inline(always)]
fn id_of(tgid: u32, g: u64) -> u64 {
    // SAFETY: the value is copied out at once.
    unsafe { GO_ID.get(&key(tgid, g)) }.copied().unwrap_or(g)
}

/// A new goroutine id: `1 << 63 | n << 10 | cpu`, `n` counting ids of this CPU.
#[inline(always)]
fn next_id() -> u64 {
    // SAFETY: helper without preconditions.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() }) & 1023;
    let n = match COUNTERS.get_ptr_mut(counter::GO_IDS) {
        // SAFETY: per-CPU value; these programs do not nest on one CPU.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    (1 << 63) | (n << 10) | cpu
}

/// The (goroutine, creator) ids a data record of goroutine `g` of process `tgid`
/// is for: the goroutine whose request `g` writes if it is a net/http writer, else
/// `g`'s; `NO_TASK` when a writer's caller is unknown (no link rather than a wrong
/// one: the writer was created by whichever call first dialled the connection).
#[inline(always)]
pub(crate) fn task(tgid: u32, g: u64) -> Task {
    // SAFETY: the value is copied out at once.
    let acting = unsafe { GO_ACTING.get(&key(tgid, g)) }.copied();
    let id = acting.unwrap_or_else(|| id_of(tgid, g));
    if id == 0 {
        return NO_TASK;
    }
    // SAFETY: as above.
    let parent = unsafe { GO_PARENT.get(&key(tgid, id)) }
        .copied()
        .unwrap_or(0);
    (id, parent)
}

#[uprobe]
pub fn go_goroutines(ctx: ProbeContext) -> u32 {
    let global = bpf_get_current_pid_tgid();
    let Some(ids) = current_id(global) else {
        return 0;
    };
    let tgid = (ids >> 32) as u32;
    let Some(traced) = PIDS.get_ptr_mut(&tgid) else {
        return 0;
    };
    // SAFETY: pointer to a live map value (a plain integer).
    unsafe {
        if *traced & PIDS_GO == 0 {
            *traced |= PIDS_GO;
        }
    }
    let regs = ctx.regs as *const u8;
    // SAFETY: fixed offsets of this program's context (the user registers).
    let reg = |off: usize| unsafe { ptr::read_volatile(regs.add(off).cast::<u64>()) };
    // SAFETY: the context pointer of this program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    match cookie {
        go_fn::NEWPROC_ENTRY | go_fn::NEWPROC_ENTRY_ARG3 => {
            // Both read at fixed offsets (the verifier refuses a computed one).
            let (arg1, arg3) = (reg(arch::GO_ARG1), reg(arch::GO_ARG3));
            let creator = if cookie == go_fn::NEWPROC_ENTRY {
                arg1
            } else {
                arg3
            };
            let _ = GO_NEWPROC.insert(&global, &creator, BPF_ANY as u64);
        }
        go_fn::NEWPROC_RETURN => {
            // SAFETY: the value is copied out at once.
            let Some(creator) = unsafe { GO_NEWPROC.get(&global) }.copied() else {
                return 0;
            };
            let _ = GO_NEWPROC.remove(&global);
            let new = reg(arch::GO_ARG0);
            if new == 0 || creator == 0 {
                return 0;
            }
            let id = next_id();
            let _ = GO_ID.insert(&key(tgid, new), &id, BPF_ANY as u64);
            let _ = GO_PARENT.insert(&key(tgid, id), &id_of(tgid, creator), BPF_ANY as u64);
            // A reused `g` starts afresh: not a writer for anyone.
            let _ = GO_ACTING.remove(&key(tgid, new));
        }
        go_fn::ROUNDTRIP_ENTRY => {
            let mut request: u64 = 0;
            // SAFETY: bpf_probe_read_user checks the address.
            let r = unsafe {
                bpf_probe_read_user(
                    ptr::addr_of_mut!(request).cast(),
                    8,
                    reg(arch::GO_ARG1) as *const _,
                )
            };
            if r == 0 && request != 0 {
                let caller = id_of(tgid, reg(arch::GO_G));
                let _ = GO_CALLER.insert(&key(tgid, request), &caller, BPF_ANY as u64);
            }
        }
        go_fn::REQUEST_WRITE_ENTRY => {
            let request = key(tgid, reg(arch::GO_ARG0));
            // SAFETY: the value is copied out at once.
            let caller = unsafe { GO_CALLER.get(&request) }.copied().unwrap_or(0);
            let _ = GO_ACTING.insert(&key(tgid, reg(arch::GO_G)), &caller, BPF_ANY as u64);
        }
        _ => {}
    }
    0
}
