//! Kernel facts that decide which loader features can work: version, BTF, lockdown,
//! sysctls, and the facilities of the model ([`crate::Facility`]).

use std::path::Path;

use serde::Serialize;

use crate::Facility;

/// Where tracefs may be mounted.
pub const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One facility and whether this kernel offers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FacilityStatus {
    pub facility: Facility,
    pub available: bool,
    /// How it was found, or why it is not there and what to do.
    pub detail: String,
}

/// What the kernel offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelStatus {
    /// `uname -r`.
    pub release: String,
    /// (major, minor) parsed from the release.
    pub version: (u32, u32),
    pub btf: bool,
    /// The active lockdown mode (`none`, `integrity`, `confidentiality`), if known.
    pub lockdown: Option<String>,
    pub perf_event_paranoid: Option<i64>,
    pub unprivileged_bpf_disabled: Option<i64>,
    /// Mount point of tracefs, if mounted.
    pub tracefs: Option<String>,
    /// Whether a bpffs is mounted (only needed for pinning, which tandem avoids).
    pub bpffs: bool,
    pub facilities: Vec<FacilityStatus>,
}

impl KernelStatus {
    /// Status of one facility.
    pub fn facility(&self, f: Facility) -> Option<&FacilityStatus> {
        self.facilities.iter().find(|s| s.facility == f)
    }
}

/// Reads the facts of the running kernel.
pub fn read() -> KernelStatus {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .ok()
        .and_then(|t| parse_lockdown(&t));
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
    };
    let facts = Facts {
        version: parse_release(&release),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        tracefs: tracefs_mount(&mounts),
        procfs: Path::new("/proc/self/status").exists(),
    };
    KernelStatus {
        facilities: facilities(&facts),
        version: facts.version,
        btf: facts.btf,
        lockdown,
        perf_event_paranoid: sysctl("perf_event_paranoid"),
        unprivileged_bpf_disabled: sysctl("unprivileged_bpf_disabled"),
        tracefs: facts.tracefs,
        bpffs: mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("bpf")),
        release,
    }
}

/// The inputs that decide facility availability (separate so tests can vary them).
#[derive(Debug, Clone)]
pub struct Facts {
    pub version: (u32, u32),
    pub btf: bool,
    pub tracefs: Option<String>,
    pub procfs: bool,
}

/// Decides each facility from the facts.
pub fn facilities(f: &Facts) -> Vec<FacilityStatus> {
    let at_least = |want: (u32, u32)| f.version >= want;
    Facility::ALL
        .into_iter()
        .map(|facility| {
            let (available, detail) = match facility {
                Facility::Btf if f.btf => (true, "/sys/kernel/btf/vmlinux".to_owned()),
                Facility::Btf => (
                    false,
                    "no /sys/kernel/btf/vmlinux: the kernel is built without CONFIG_DEBUG_INFO_BTF"
                        .to_owned(),
                ),
                Facility::Tracefs => match &f.tracefs {
                    Some(at) => (true, format!("mounted at {at}")),
                    None => (
                        false,
                        "tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing \
                         (the loader mounts it itself when it runs with CAP_SYS_ADMIN)"
                            .to_owned(),
                    ),
                },
                Facility::RingBuffer if at_least((5, 8)) => (
                    true,
                    format!("Linux {}.{} >= 5.8", f.version.0, f.version.1),
                ),
                Facility::RingBuffer => (
                    false,
                    format!(
                        "Linux {}.{} < 5.8 has no BPF ring buffer",
                        f.version.0, f.version.1
                    ),
                ),
                Facility::UprobeMulti if at_least((6, 6)) => (
                    true,
                    format!("Linux {}.{} >= 6.6", f.version.0, f.version.1),
                ),
                Facility::UprobeMulti => (
                    false,
                    format!(
                        "Linux {}.{} < 6.6 has no uprobe_multi links",
                        f.version.0, f.version.1
                    ),
                ),
                Facility::Procfs if f.procfs => (true, "/proc".to_owned()),
                Facility::Procfs => (false, "/proc is not mounted".to_owned()),
            };
            FacilityStatus {
                facility,
                available,
                detail,
            }
        })
        .collect()
}

/// `6.18.0-1-amd64` -> (6, 18); unparsable parts are 0.
pub fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `none [integrity] confidentiality` -> `integrity`.
pub fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_owned())
}

/// The mount point of tracefs in `/proc/mounts` text, preferring the standard one.
pub fn tracefs_mount(mounts: &str) -> Option<String> {
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (point, kind) = (f.nth(1)?, f.next()?);
            (kind == "tracefs").then_some(point)
        })
        .collect();
    TRACEFS_PATHS
        .iter()
        .find(|p| points.contains(p))
        .map(|p| (*p).to_owned())
        .or_else(|| points.first().map(|p| (*p).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_lockdown_and_mounts() {
        assert_eq!(parse_release("6.18.0-1-amd64"), (6, 18));
        assert_eq!(parse_release("5.4"), (5, 4));
        assert_eq!(parse_release(""), (0, 0));
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(parse_lockdown("none"), None);
        let mounts = "proc /proc proc rw 0 0\ntracefs /sys/kernel/debug/tracing tracefs rw 0 0\n\
tracefs /sys/kernel/tracing tracefs rw 0 0\n";
        assert_eq!(
            tracefs_mount(mounts).as_deref(),
            Some("/sys/kernel/tracing")
        );
        assert_eq!(tracefs_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn old_kernels_lack_ring_buffer_and_uprobe_multi() {
        let old = facilities(&Facts {
            version: (5, 4),
            btf: false,
            tracefs: None,
            procfs: true,
        });
        let off: Vec<_> = old
            .iter()
            .filter(|s| !s.available)
            .map(|s| s.facility)
            .collect();
        assert_eq!(
            off,
            [
                Facility::Btf,
                Facility::Tracefs,
                Facility::RingBuffer,
                Facility::UprobeMulti
            ]
        );
        let new = facilities(&Facts {
            version: (6, 6),
            btf: true,
            tracefs: Some("/sys/kernel/tracing".into()),
            procfs: true,
        });
        assert!(new.iter().all(|s| s.available));
    }
}
