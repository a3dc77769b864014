//! The process capture point: exec, fork and exit of traced processes (and, in
//! the pid-namespace mode, the child side of fork), which keep the pid map in line.

use super::*;

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
        field::<i32>(&ctx, tp::EXEC_PID.1) as u32
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
    let child: i32 = field(&ctx, tp::FORK_CHILD_PID.1);
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
    let ret: i64 = field(&ctx, tp::SYS_EXIT_RET.1);
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
    let group_dead: u8 = field(&ctx, tp::EXIT_GROUP_DEAD.1);
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
pub(crate) fn exit_code() -> i32 {
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
