//! tandem's capability model: the one place that says which Linux capabilities each
//! loader feature needs, and why. The loader's messages about missing capabilities,
//! the capability report, the documentation and the deployment manifests all derive
//! from (and are tested against) [`FEATURES`] and [`loader_capabilities`].
//!
//! Modules: [`status`] reads a process's capability sets and kernel facts,
//! [`report`] compares them with the model (the `tandem-loader capabilities` report),
//! [`privilege`] drops what the loader no longer needs once its probes are attached.

pub mod kernel;
pub mod privilege;
pub mod report;
pub mod status;

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

/// A Linux capability the loader may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Capability {
    Bpf,
    Perfmon,
    SysPtrace,
    CheckpointRestore,
    DacReadSearch,
}

impl Capability {
    /// Every capability the model knows, in a stable order.
    pub const ALL: [Capability; 5] = [
        Capability::Bpf,
        Capability::Perfmon,
        Capability::SysPtrace,
        Capability::CheckpointRestore,
        Capability::DacReadSearch,
    ];

    /// Kubernetes / capsh spelling without the `CAP_` prefix, e.g. `BPF`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Bpf => "BPF",
            Capability::Perfmon => "PERFMON",
            Capability::SysPtrace => "SYS_PTRACE",
            Capability::CheckpointRestore => "CHECKPOINT_RESTORE",
            Capability::DacReadSearch => "DAC_READ_SEARCH",
        }
    }

    /// The `caps` crate's value for this capability.
    pub fn to_caps(self) -> caps::Capability {
        match self {
            Capability::Bpf => caps::Capability::CAP_BPF,
            Capability::Perfmon => caps::Capability::CAP_PERFMON,
            Capability::SysPtrace => caps::Capability::CAP_SYS_PTRACE,
            Capability::CheckpointRestore => caps::Capability::CAP_CHECKPOINT_RESTORE,
            Capability::DacReadSearch => caps::Capability::CAP_DAC_READ_SEARCH,
        }
    }

    /// What the loader uses it for, in one line.
    pub fn purpose(self) -> &'static str {
        match self {
            Capability::Bpf => "create BPF maps and load BPF programs",
            Capability::Perfmon => {
                "attach tracepoints and uprobe_multi links; lets the verifier accept pointer arithmetic"
            }
            Capability::SysPtrace => {
                "read /proc/<pid>/exe, maps, root and fd of processes owned by other users"
            }
            Capability::CheckpointRestore => {
                "read /proc/<pid>/map_files to find the exact libraries a process mapped"
            }
            Capability::DacReadSearch => {
                "open tracefs (mode 0700) and /proc/<pid>/environ as a non-root user"
            }
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAP_{}", self.name())
    }
}

/// A kernel facility a loader feature relies on (independent of capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Facility {
    /// `/sys/kernel/btf/vmlinux`: CO-RE relocations of kernel struct reads.
    Btf,
    /// tracefs at /sys/kernel/tracing: tracepoint ids and formats.
    Tracefs,
    /// `BPF_MAP_TYPE_RINGBUF` (Linux 5.8).
    RingBuffer,
    /// `BPF_TRACE_UPROBE_MULTI` links (Linux 6.6): uprobes without CAP_SYS_ADMIN.
    UprobeMulti,
    /// procfs at /proc: process and socket discovery.
    Procfs,
}

impl Facility {
    /// Every facility the model knows, in a stable order.
    pub const ALL: [Facility; 5] = [
        Facility::Btf,
        Facility::Tracefs,
        Facility::RingBuffer,
        Facility::UprobeMulti,
        Facility::Procfs,
    ];

    /// Stable identifier, e.g. `uprobe_multi`.
    pub fn name(self) -> &'static str {
        match self {
            Facility::Btf => "btf",
            Facility::Tracefs => "tracefs",
            Facility::RingBuffer => "ring_buffer",
            Facility::UprobeMulti => "uprobe_multi",
            Facility::Procfs => "procfs",
        }
    }

    /// What it is and why the loader needs it, in one line.
    pub fn purpose(self) -> &'static str {
        match self {
            Facility::Btf => {
                "kernel BTF (/sys/kernel/btf/vmlinux) so CO-RE reads of struct sock fit this kernel"
            }
            Facility::Tracefs => {
                "tracefs (/sys/kernel/tracing) for tracepoint ids and the field layouts the programs check"
            }
            Facility::RingBuffer => {
                "BPF ring buffer maps (Linux 5.8+) that carry events from the kernel to the loader"
            }
            Facility::UprobeMulti => {
                "uprobe_multi links (Linux 6.6+) that attach uprobes with CAP_BPF+CAP_PERFMON instead of CAP_SYS_ADMIN"
            }
            Facility::Procfs => "procfs (/proc) to describe processes and find their sockets",
        }
    }
}

impl fmt::Display for Facility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The loader's features, typed: the loader names a feature only through these (a
/// misspelt one does not compile), and every one is in [`FEATURES`] (tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeatureId {
    SyscallCapture,
    SockTracepoints,
    ProcessDiscovery,
    TlsUprobes,
}

impl FeatureId {
    pub const ALL: [FeatureId; 4] = [
        FeatureId::SyscallCapture,
        FeatureId::SockTracepoints,
        FeatureId::ProcessDiscovery,
        FeatureId::TlsUprobes,
    ];

    /// The stable identifier ([`Feature::id`]).
    pub const fn name(self) -> &'static str {
        match self {
            FeatureId::SyscallCapture => "syscall_capture",
            FeatureId::SockTracepoints => "sock_tracepoints",
            FeatureId::ProcessDiscovery => "process_discovery",
            FeatureId::TlsUprobes => "tls_uprobes",
        }
    }
}

impl fmt::Display for FeatureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A loader feature and what it needs.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// Stable identifier, e.g. `syscall_capture`.
    pub id: &'static str,
    /// What the feature gives the user.
    pub description: &'static str,
    /// Capabilities it needs when the loader does not run as uid 0, to load and
    /// attach its programs.
    pub capabilities: &'static [Capability],
    /// Capabilities it still needs once attached (a subset of `capabilities`): what
    /// following new processes takes. The loader drops everything else after attaching.
    pub runtime_capabilities: &'static [Capability],
    /// Why each capability is needed by this feature.
    pub why: &'static str,
    /// Kernel facilities it relies on.
    pub facilities: &'static [Facility],
}

use Capability::*;

/// Every loader feature with the capabilities it needs (measured on Linux 6.18 running
/// as uid 65534 with exactly these capabilities; see `docs/security.md`).
pub const FEATURES: &[Feature] = &[
    Feature {
        id: FeatureId::SyscallCapture.name(),
        description: "BTF tracepoints sock_recv_length/sock_send_length (Linux 6.3+; before, the socket syscalls' tracepoints, whose tracefs formats are read with DAC_READ_SEARCH as sock_tracepoints does): bytes read and written on TCP sockets (read, write, readv, writev, recv*, send*; sendfile/splice counted on the BTF path)",
        capabilities: &[Bpf, Perfmon],
        runtime_capabilities: &[],
        why: "BPF loads the programs and maps and lets them read the syscall's saved \
              registers and buffers; PERFMON attaches the BTF tracepoints (through the \
              kernel's BTF, world-readable: no tracefs). Once attached, the pid map is \
              updated through map fds the loader already holds.",
        facilities: &[Facility::Btf, Facility::RingBuffer],
    },
    Feature {
        id: FeatureId::SockTracepoints.name(),
        description: "sock/inet_sock_set_state: TCP connection lifecycle (addresses, ports, role, close) and selection by port",
        capabilities: &[Bpf, Perfmon, DacReadSearch],
        runtime_capabilities: &[],
        why: "BPF loads the program; PERFMON attaches the tracepoint; DAC_READ_SEARCH opens \
              tracefs (mode 0700) as a non-root user to check the tracepoint's format and \
              find its id. The port bitmap is updated through a map fd the loader holds.",
        facilities: &[Facility::Tracefs, Facility::RingBuffer],
    },
    Feature {
        id: FeatureId::ProcessDiscovery.name(),
        description: "sched exec/exit tracepoints and /proc scans: exe path, cmdline, cgroup, sockets of other users' processes",
        capabilities: &[Bpf, Perfmon, SysPtrace, DacReadSearch],
        runtime_capabilities: &[SysPtrace, DacReadSearch],
        why: "BPF and PERFMON attach the sched tracepoints; SYS_PTRACE reads /proc/<pid>/exe, \
              root, environ (its OTEL_* entries only) and fd links of other users' processes; DAC_READ_SEARCH lists their \
              /proc/<pid>/fd directories (mode 0500). The /proc part goes on for every new \
              process, so SYS_PTRACE and DAC_READ_SEARCH stay after attaching.",
        facilities: &[Facility::Tracefs, Facility::Procfs, Facility::RingBuffer],
    },
    Feature {
        id: FeatureId::TlsUprobes.name(),
        description: "uprobe_multi links on SSL_read/SSL_write of libssl and of executables with OpenSSL linked in, and on Go binaries' crypto/tls Read/Write and runtime (goroutine ancestry, net/http's writer): plaintext of TLS traffic and Go trace linking; the binaries' symbols are read by a sandboxed child (no capabilities, no_new_privs, seccomp)",
        capabilities: &[Bpf, Perfmon, SysPtrace, CheckpointRestore],
        runtime_capabilities: &[SysPtrace, CheckpointRestore],
        why: "BPF and PERFMON load the programs (no SYS_ADMIN needed); SYS_PTRACE \
              reads /proc/<pid>/maps and root of other users' processes; CHECKPOINT_RESTORE \
              opens /proc/<pid>/map_files to find the exact libssl mapped. The loader never \
              parses a target's ELF itself: it hands the open file to a re-executed child \
              that drops every capability, sets no_new_privs and a seccomp filter first \
              (loader/src/analyse.rs), and checks the offsets it answers. Libraries found \
              later get links from the programs already loaded, which needs no BPF or \
              PERFMON (measured on Linux 6.18): SYS_PTRACE and CHECKPOINT_RESTORE stay.",
        facilities: &[Facility::UprobeMulti, Facility::Btf, Facility::RingBuffer, Facility::Procfs],
    },
];

/// The exact capability set the loader is deployed with: the union over [`FEATURES`].
pub fn loader_capabilities() -> BTreeSet<Capability> {
    FEATURES
        .iter()
        .flat_map(|f| f.capabilities.iter().copied())
        .collect()
}

/// What `features` still need once their programs are attached.
pub fn runtime_capabilities<'a>(
    features: impl IntoIterator<Item = &'a Feature>,
) -> BTreeSet<Capability> {
    features
        .into_iter()
        .flat_map(|f| f.runtime_capabilities.iter().copied())
        .collect()
}

/// Looks a model capability up by its name (`BPF`, `CAP_BPF`, `cap_bpf`).
pub fn capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::ALL.into_iter().find(|c| c.name() == bare)
}

/// Why holding `cap` (a `CAP_*` name) is a risk when no enabled feature needs it.
pub fn risk(cap: &str) -> &'static str {
    match cap {
        "CAP_SYS_ADMIN" => "near-root: mount, namespaces, perf-event uprobes, BPF and PERFMON by fallback; grant CAP_BPF + CAP_PERFMON instead",
        "CAP_NET_ADMIN" => "reconfigure interfaces, routes and firewall rules; attach tc/XDP programs that rewrite traffic",
        "CAP_SYS_MODULE" => "load kernel modules: full kernel compromise",
        "CAP_SYS_RAWIO" => "raw I/O ports and /dev/mem: full machine compromise",
        "CAP_SYS_BOOT" => "reboot the machine or kexec another kernel",
        "CAP_SYS_TIME" => "change the system clock (breaks TLS, logs and timestamps)",
        "CAP_DAC_OVERRIDE" => "read and write any file regardless of permissions",
        "CAP_FOWNER" => "bypass ownership checks: chmod/chown-like power over any file",
        "CAP_CHOWN" => "change the owner of any file",
        "CAP_SETUID" | "CAP_SETGID" => "become any user or group, including root",
        "CAP_SETPCAP" => "change capability bounding sets and grant capabilities",
        "CAP_SETFCAP" => "set file capabilities: plant a privileged executable",
        "CAP_SYS_CHROOT" => "chroot: a classic container escape building block",
        "CAP_MKNOD" => "create device nodes, e.g. for raw disks",
        "CAP_KILL" => "signal (kill) any process",
        "CAP_NET_RAW" => "raw and packet sockets: sniff and spoof traffic",
        "CAP_NET_BIND_SERVICE" => "bind privileged ports (<1024)",
        "CAP_SYS_PTRACE" => "trace and inject code into any process",
        "CAP_CHECKPOINT_RESTORE" => "open /proc/<pid>/map_files and set pids of new processes",
        "CAP_DAC_READ_SEARCH" => "read any file and list any directory",
        "CAP_BPF" => "load BPF programs and read kernel memory through them",
        "CAP_PERFMON" => "perf events and tracing over the whole machine",
        "CAP_MAC_ADMIN" | "CAP_MAC_OVERRIDE" => "change or bypass the LSM (AppArmor/SELinux) policy",
        "CAP_AUDIT_CONTROL" => "disable or change kernel auditing",
        "CAP_SYSLOG" => "read kernel addresses and the kernel log",
        "CAP_IPC_OWNER" => "bypass permission checks on System V IPC",
        "CAP_LINUX_IMMUTABLE" => "remove the immutable flag of protected files",
        "CAP_SYS_RESOURCE" | "CAP_SYS_NICE" => "override resource limits and scheduling of any process",
        _ => "not needed by any enabled feature: a privilege an attacker who owns the loader could use",
    }
}

/// Looks a feature up by id.
pub fn feature(id: &str) -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.id == id)
}

/// The capabilities `feature` needs that `held` lacks.
pub fn missing(feature: &Feature, held: &BTreeSet<Capability>) -> Vec<Capability> {
    feature
        .capabilities
        .iter()
        .copied()
        .filter(|c| !held.contains(c))
        .collect()
}

/// The model's capabilities present in this process's effective set.
pub fn effective_capabilities() -> Result<BTreeSet<Capability>, caps::errors::CapsError> {
    let effective = caps::read(None, caps::CapSet::Effective)?;
    Ok(Capability::ALL
        .into_iter()
        .filter(|c| effective.contains(&c.to_caps()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_set_is_exactly_the_modelled_capabilities() {
        let names: Vec<&str> = loader_capabilities().iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "BPF",
                "PERFMON",
                "SYS_PTRACE",
                "CHECKPOINT_RESTORE",
                "DAC_READ_SEARCH"
            ]
        );
        // Every capability the model names is one a feature needs: none for nothing.
        assert_eq!(loader_capabilities(), Capability::ALL.into_iter().collect());
    }

    #[test]
    fn missing_names_only_what_is_absent() {
        let f = feature("tls_uprobes").unwrap();
        let held: BTreeSet<_> = [Bpf, Perfmon, SysPtrace].into_iter().collect();
        assert_eq!(missing(f, &held), vec![CheckpointRestore]);
        let all = loader_capabilities();
        assert!(FEATURES.iter().all(|f| missing(f, &all).is_empty()));
    }

    #[test]
    fn feature_ids_are_unique() {
        let ids: BTreeSet<_> = FEATURES.iter().map(|f| f.id).collect();
        // Every typed id is a feature of the model, and every feature has one.
        let typed: BTreeSet<_> = FeatureId::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(typed, ids);
        assert_eq!(ids.len(), FEATURES.len());
    }

    #[test]
    fn runtime_needs_are_a_subset_and_every_feature_explains_itself() {
        for f in FEATURES {
            for c in f.runtime_capabilities {
                assert!(f.capabilities.contains(c), "{}: {c} at run time only", f.id);
            }
            for c in f.capabilities {
                assert!(
                    f.why.contains(c.name()),
                    "{}: why does not explain {c}",
                    f.id
                );
            }
            assert!(!f.facilities.is_empty(), "{}", f.id);
        }
        assert_eq!(
            capability("cap_checkpoint_restore"),
            Some(CheckpointRestore)
        );
        // Not in the model (no feature opens raw or packet sockets): held, it is excess.
        assert_eq!(capability("NET_RAW"), None);
        assert_eq!(capability("BPF"), Some(Bpf));
        assert_eq!(capability("SYS_ADMIN"), None);
    }

    /// docs/security.md must describe the model exactly: a row per feature with its
    /// attach-time and run-time capabilities and its facilities, and a line per
    /// capability and facility. Changing the model without the docs fails here.
    #[test]
    fn docs_security_md_matches_the_model() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md");
        let doc = std::fs::read_to_string(path).expect("docs/security.md is readable");
        let set = |cell: &str| -> BTreeSet<String> {
            cell.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty() && s != "none")
                .collect()
        };
        for f in FEATURES {
            let prefix = format!("| `{}` |", f.id);
            let row = doc
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("docs/security.md has no table row for {}", f.id));
            let cells: Vec<&str> = row.trim_matches('|').split('|').collect();
            assert_eq!(cells.len(), 4, "row of {}: {row}", f.id);
            let caps = |cs: &[Capability]| cs.iter().map(|c| c.to_string()).collect();
            assert_eq!(
                set(cells[1]),
                caps(f.capabilities),
                "attach caps of {}",
                f.id
            );
            assert_eq!(
                set(cells[2]),
                caps(f.runtime_capabilities),
                "kept caps of {}",
                f.id
            );
            let facilities: BTreeSet<String> =
                f.facilities.iter().map(|x| x.name().to_owned()).collect();
            assert_eq!(set(cells[3]), facilities, "facilities of {}", f.id);
            assert!(
                doc.contains(&format!("- `{}`:", f.id)),
                "no description of {}",
                f.id
            );
        }
        for c in Capability::ALL {
            assert!(
                doc.lines().any(|l| l.starts_with(&format!("| {c} |"))),
                "docs/security.md does not explain {c}"
            );
        }
        for x in Facility::ALL {
            assert!(
                doc.lines()
                    .any(|l| l.starts_with(&format!("| {} |", x.name()))),
                "docs/security.md does not explain the facility {x}"
            );
        }
    }

    #[test]
    fn display_uses_the_cap_prefix() {
        assert_eq!(SysPtrace.to_string(), "CAP_SYS_PTRACE");
    }
}
