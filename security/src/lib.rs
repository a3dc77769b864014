//! tandem's capability model: the one place that says which Linux capabilities each
//! loader feature needs, and why. The loader's messages about missing capabilities,
//! the capability report, the documentation and the deployment manifests all derive
//! from (and are tested against) [`FEATURES`] and [`loader_capabilities`].

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

/// A Linux capability the loader may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Capability {
    Bpf,
    Perfmon,
    SysPtrace,
    NetRaw,
    CheckpointRestore,
    DacReadSearch,
}

impl Capability {
    /// Every capability the model knows, in a stable order.
    pub const ALL: [Capability; 6] = [
        Capability::Bpf,
        Capability::Perfmon,
        Capability::SysPtrace,
        Capability::NetRaw,
        Capability::CheckpointRestore,
        Capability::DacReadSearch,
    ];

    /// Kubernetes / capsh spelling without the `CAP_` prefix, e.g. `BPF`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Bpf => "BPF",
            Capability::Perfmon => "PERFMON",
            Capability::SysPtrace => "SYS_PTRACE",
            Capability::NetRaw => "NET_RAW",
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
            Capability::NetRaw => caps::Capability::CAP_NET_RAW,
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
            Capability::NetRaw => "open AF_PACKET sockets for the socket-filter capture",
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

/// A loader feature and what it needs.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// Stable identifier, e.g. `syscall_capture`.
    pub id: &'static str,
    /// What the feature gives the user.
    pub description: &'static str,
    /// Capabilities it needs when the loader does not run as uid 0.
    pub capabilities: &'static [Capability],
}

use Capability::*;

/// Every loader feature with the capabilities it needs (measured on Linux 6.18 running
/// as uid 65534 with exactly these capabilities; see `docs/security.md`).
pub const FEATURES: &[Feature] = &[
    Feature {
        id: "syscall_capture",
        description: "syscall tracepoints: bytes read and written on TCP sockets, accept/connect/close",
        capabilities: &[Bpf, Perfmon, DacReadSearch],
    },
    Feature {
        id: "sock_tracepoints",
        description: "sock/inet_sock_set_state and raw/BTF tracepoints: TCP connection lifecycle",
        capabilities: &[Bpf, Perfmon],
    },
    Feature {
        id: "process_discovery",
        description: "sched exec/exit tracepoints and /proc scans: exe path, cmdline, cgroup, sockets of other users' processes",
        capabilities: &[Bpf, Perfmon, SysPtrace, DacReadSearch],
    },
    Feature {
        id: "socket_filter",
        description: "AF_PACKET socket filter: packet-level view of selected ports",
        capabilities: &[Bpf, Perfmon, NetRaw],
    },
    Feature {
        id: "tls_uprobes",
        description: "uprobe_multi links on libssl SSL_read/SSL_write: plaintext of TLS traffic",
        capabilities: &[Bpf, Perfmon, SysPtrace, CheckpointRestore],
    },
];

/// The exact capability set the loader is deployed with: the union over [`FEATURES`].
pub fn loader_capabilities() -> BTreeSet<Capability> {
    FEATURES
        .iter()
        .flat_map(|f| f.capabilities.iter().copied())
        .collect()
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
    fn the_loader_set_is_exactly_the_six_capabilities() {
        let names: Vec<&str> = loader_capabilities().iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "BPF",
                "PERFMON",
                "SYS_PTRACE",
                "NET_RAW",
                "CHECKPOINT_RESTORE",
                "DAC_READ_SEARCH"
            ]
        );
    }

    #[test]
    fn missing_names_only_what_is_absent() {
        let f = feature("socket_filter").unwrap();
        let held: BTreeSet<_> = [Bpf, Perfmon].into_iter().collect();
        assert_eq!(missing(f, &held), vec![NetRaw]);
        let all = loader_capabilities();
        assert!(FEATURES.iter().all(|f| missing(f, &all).is_empty()));
    }

    #[test]
    fn feature_ids_are_unique() {
        let ids: BTreeSet<_> = FEATURES.iter().map(|f| f.id).collect();
        assert_eq!(ids.len(), FEATURES.len());
    }

    #[test]
    fn display_uses_the_cap_prefix() {
        assert_eq!(SysPtrace.to_string(), "CAP_SYS_PTRACE");
    }
}
