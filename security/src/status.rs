//! A process's security state as the kernel shows it in `/proc/<pid>/status`:
//! the five capability sets, uid/gid, `NoNewPrivs` and the seccomp mode.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use serde::Serialize;

/// The five capability sets, as `CAP_*` names in kernel bit order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CapabilitySets {
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub bounding: Vec<String>,
    pub ambient: Vec<String>,
}

/// Security-relevant fields of `/proc/<pid>/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessStatus {
    pub pid: u32,
    /// Real, effective, saved and filesystem uids.
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub capabilities: CapabilitySets,
    pub no_new_privs: bool,
    /// `disabled`, `strict` or `filter`.
    pub seccomp: String,
}

impl ProcessStatus {
    /// Effective uid.
    pub fn euid(&self) -> u32 {
        self.uid[1]
    }

    /// Effective gid.
    pub fn egid(&self) -> u32 {
        self.gid[1]
    }

    /// Capabilities the process holds or can raise at will: effective ∪ permitted.
    pub fn held(&self) -> BTreeSet<String> {
        self.capabilities
            .effective
            .iter()
            .chain(&self.capabilities.permitted)
            .cloned()
            .collect()
    }

    /// Why this process is privileged-equivalent, `None` when it is not: every
    /// capability the kernel knows, or CAP_SYS_ADMIN (from which the rest follows).
    pub fn privileged(&self) -> Option<String> {
        let held = self.held();
        let all = all_names();
        if all.iter().all(|c| held.contains(c)) {
            return Some(format!(
                "holds every capability ({}; uid {})",
                all.len(),
                self.euid()
            ));
        }
        if held.contains("CAP_SYS_ADMIN") {
            return Some("holds CAP_SYS_ADMIN".to_owned());
        }
        None
    }
}

/// Reads `/proc/self/status`.
pub fn read_self() -> io::Result<ProcessStatus> {
    read_pid_status(Path::new("/proc/self/status"))
}

/// Reads and parses a status file (`/proc/<pid>/status`).
pub fn read_pid_status(path: &Path) -> io::Result<ProcessStatus> {
    Ok(parse_status(&std::fs::read_to_string(path)?))
}

/// Parses the text of `/proc/<pid>/status`; absent fields stay at their defaults.
pub fn parse_status(text: &str) -> ProcessStatus {
    let mut s = ProcessStatus {
        seccomp: "unknown".to_owned(),
        ..ProcessStatus::default()
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Pid" => s.pid = value.parse().unwrap_or(0),
            "Uid" => s.uid = ids(value),
            "Gid" => s.gid = ids(value),
            "CapInh" => s.capabilities.inheritable = mask_names(parse_mask(value)),
            "CapPrm" => s.capabilities.permitted = mask_names(parse_mask(value)),
            "CapEff" => s.capabilities.effective = mask_names(parse_mask(value)),
            "CapBnd" => s.capabilities.bounding = mask_names(parse_mask(value)),
            "CapAmb" => s.capabilities.ambient = mask_names(parse_mask(value)),
            "NoNewPrivs" => s.no_new_privs = value == "1",
            "Seccomp" => {
                s.seccomp = match value {
                    "0" => "disabled",
                    "1" => "strict",
                    "2" => "filter",
                    _ => "unknown",
                }
                .to_owned()
            }
            _ => {}
        }
    }
    s
}

fn ids(value: &str) -> [u32; 4] {
    let mut out = [0; 4];
    for (slot, v) in out.iter_mut().zip(value.split_whitespace()) {
        *slot = v.parse().unwrap_or(0);
    }
    out
}

/// Parses a hex capability mask (`000001ffffffffff`); garbage gives 0.
pub fn parse_mask(hex: &str) -> u64 {
    u64::from_str_radix(hex.trim(), 16).unwrap_or(0)
}

/// `CAP_*` name of capability bit `index`, `CAP_<n>` when unknown to this build.
pub fn cap_name(index: u8) -> String {
    caps::all()
        .into_iter()
        .find(|c| c.index() == index)
        .map_or_else(|| format!("CAP_{index}"), |c| c.to_string())
}

/// Names of the bits set in `mask`, in bit order.
pub fn mask_names(mask: u64) -> Vec<String> {
    (0..64u8)
        .filter(|i| mask & (1u64 << i) != 0)
        .map(cap_name)
        .collect()
}

/// Every capability this kernel knows (from `/proc/sys/kernel/cap_last_cap`, else
/// every one this build knows).
pub fn all_names() -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse::<u8>().ok());
    match last {
        Some(last) => (0..=last.min(63)).map(cap_name).collect(),
        None => {
            let mut v: Vec<_> = caps::all().into_iter().collect();
            v.sort_by_key(|c| c.index());
            v.into_iter().map(|c| c.to_string()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\ttandem-loader\nPid:\t42\nUid:\t65534\t65534\t65534\t65534\n\
Gid:\t65534\t65534\t65534\t65534\nCapInh:\t0000000000000000\nCapPrm:\t000001c000080004\n\
CapEff:\t000001c000080004\nCapBnd:\t000001c000082004\nCapAmb:\t0000000000000000\n\
NoNewPrivs:\t1\nSeccomp:\t2\n";

    #[test]
    fn status_fields_and_masks() {
        let s = parse_status(STATUS);
        assert_eq!(s.pid, 42);
        assert_eq!(s.euid(), 65534);
        assert_eq!(s.egid(), 65534);
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, "filter");
        assert_eq!(
            s.capabilities.effective,
            [
                "CAP_DAC_READ_SEARCH",
                "CAP_SYS_PTRACE",
                "CAP_PERFMON",
                "CAP_BPF",
                "CAP_CHECKPOINT_RESTORE"
            ]
        );
        assert!(s.capabilities.bounding.contains(&"CAP_NET_RAW".to_owned()));
        assert!(s.capabilities.ambient.is_empty());
        assert_eq!(s.privileged(), None);
    }

    #[test]
    fn sys_admin_or_everything_is_privileged() {
        let mut s = parse_status(STATUS);
        s.capabilities.permitted.push("CAP_SYS_ADMIN".to_owned());
        assert_eq!(s.privileged().as_deref(), Some("holds CAP_SYS_ADMIN"));
        let mut root = parse_status("Uid:\t0\t0\t0\t0\n");
        root.capabilities.effective = all_names();
        assert!(root.privileged().is_some_and(|r| r.contains("every")));
    }

    #[test]
    fn unknown_bits_and_garbage() {
        assert_eq!(mask_names(1 << 63), ["CAP_63"]);
        assert_eq!(parse_mask("zz"), 0);
        let s = parse_status("garbage\nUid: x\n");
        assert_eq!(s.uid, [0; 4]);
        assert_eq!(s.seccomp, "unknown");
    }
}
