//! What the loader attaches: each probe, its program, its tracepoint, the capability
//! model feature it belongs to and the record fields it reads (checked against the
//! kernel's tracefs formats by `programs.rs` before attaching).

use tandem_ebpf_common::tp::{self, Field};
use tandem_security::FeatureId;

/// One attachment: a program on a tracepoint whose format it relies on.
pub struct ProbeSpec {
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// `tandem_security` feature the probe belongs to.
    pub feature: FeatureId,
    /// Fields of the tracefs record a classic tracepoint program reads.
    pub fields: &'static [Field],
    /// A BTF tracepoint (`tp_btf`): typed arguments (the `TP_PROTO`) instead of
    /// the tracefs record; attached through the kernel's BTF, no tracefs needed.
    pub btf: bool,
}

const SYS_EXIT: &[Field] = &[tp::SYS_EXIT_RET];

/// Every probe, in attach order: process lifecycle and TCP state first, so that
/// by the time data flows the kernel already tracks connections. No syscall
/// tracepoint: one attached anywhere puts every task of the host on the slow
/// syscall path (see `ebpf/README.md`).
pub fn probe_specs() -> Vec<ProbeSpec> {
    vec![
        ProbeSpec {
            program: "sched_process_exec",
            category: "sched",
            tracepoint: "sched_process_exec",
            feature: FeatureId::ProcessDiscovery,
            fields: &[tp::EXEC_PID],
            btf: false,
        },
        ProbeSpec {
            program: "sched_process_fork",
            category: "sched",
            tracepoint: "sched_process_fork",
            feature: FeatureId::ProcessDiscovery,
            fields: &[tp::FORK_CHILD_PID],
            btf: false,
        },
        ProbeSpec {
            program: "sched_process_exit",
            category: "sched",
            tracepoint: "sched_process_exit",
            feature: FeatureId::ProcessDiscovery,
            fields: &[tp::EXIT_PID, tp::EXIT_GROUP_DEAD],
            btf: false,
        },
        ProbeSpec {
            program: "inet_sock_set_state",
            category: "sock",
            tracepoint: "inet_sock_set_state",
            feature: FeatureId::SockTracepoints,
            fields: &tp::SET_STATE,
            btf: false,
        },
    ]
}

/// The BTF data path: `sock_recv_length`/`sock_send_length` (Linux 6.3+), in the
/// socket layer, for every read/write/send/recv call on a socket.
pub fn sock_data_specs() -> Vec<ProbeSpec> {
    ["sock_recv_length", "sock_send_length"]
        .into_iter()
        .map(|tp| ProbeSpec {
            program: tp,
            category: "sock",
            tracepoint: tp,
            feature: FeatureId::SyscallCapture,
            fields: &[],
            btf: true,
        })
        .collect()
}

/// The syscall data path (any kernel with syscall tracepoints): the entry and exit
/// of each socket syscall, with the fields `sys_enter_sock_io` reads (the syscall
/// number, the descriptor, the buffer, the flags of the receiving calls) and the
/// return value `sys_exit_sock_io` reads.
pub fn syscall_data_specs() -> Vec<ProbeSpec> {
    use tp::{sys_arg, SYS_NR as NR};
    const FD: Field = sys_arg("fd", 0);
    const ENTER: [(&str, &[Field]); 8] = [
        // sys_enter_sock_io reads the first three arguments (recvmsg's flags);
        // sys_enter_recvfrom the fourth (its flags).
        ("sys_enter_read", &[NR, FD, sys_arg("buf", 1)]),
        ("sys_enter_write", &[NR, FD, sys_arg("buf", 1)]),
        ("sys_enter_readv", &[NR, FD, sys_arg("vec", 1)]),
        ("sys_enter_writev", &[NR, FD, sys_arg("vec", 1)]),
        (
            "sys_enter_recvfrom",
            &[NR, FD, sys_arg("ubuf", 1), sys_arg("flags", 3)],
        ),
        ("sys_enter_sendto", &[NR, FD, sys_arg("buff", 1)]),
        (
            "sys_enter_recvmsg",
            &[NR, FD, sys_arg("msg", 1), sys_arg("flags", 2)],
        ),
        ("sys_enter_sendmsg", &[NR, FD, sys_arg("msg", 1)]),
    ];
    const EXIT: [&str; 8] = [
        "sys_exit_read",
        "sys_exit_write",
        "sys_exit_readv",
        "sys_exit_writev",
        "sys_exit_recvfrom",
        "sys_exit_sendto",
        "sys_exit_recvmsg",
        "sys_exit_sendmsg",
    ];
    let enter = ENTER.iter().map(|(tp, fields)| {
        let program = if *tp == "sys_enter_recvfrom" {
            "sys_enter_recvfrom"
        } else {
            "sys_enter_sock_io"
        };
        (program, *tp, *fields)
    });
    let exit = EXIT.iter().map(|tp| ("sys_exit_sock_io", *tp, SYS_EXIT));
    enter
        .chain(exit)
        .map(|(program, tracepoint, fields)| ProbeSpec {
            program,
            category: "syscalls",
            tracepoint,
            feature: FeatureId::SyscallCapture,
            fields,
            btf: false,
        })
        .collect()
}

/// Pid-namespace mode only: the child side of every fork-like syscall, where a
/// child of a traced process learns its id in the loader's namespace (see
/// `sys_exit_fork_child` in the eBPF crate). `fork`/`vfork` exist on x86_64 only.
pub fn fork_child_specs() -> Vec<ProbeSpec> {
    [
        "sys_exit_clone",
        "sys_exit_clone3",
        "sys_exit_fork",
        "sys_exit_vfork",
    ]
    .into_iter()
    .map(|tracepoint| ProbeSpec {
        program: "sys_exit_fork_child",
        category: "syscalls",
        tracepoint,
        feature: FeatureId::ProcessDiscovery,
        fields: SYS_EXIT,
        btf: false,
    })
    .collect()
}
