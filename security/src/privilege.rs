//! Least privilege at run time: the loader drops what it no longer needs once its
//! probes are attached, and the processor checks that it holds nothing.

use std::collections::BTreeSet;

use caps::{CapSet, CapsHashSet};

use crate::Capability;

/// Why a privilege operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot {what}: {source}")]
    Caps {
        what: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set no_new_privs (prctl PR_SET_NO_NEW_PRIVS): {0}")]
    NoNewPrivs(#[source] nix::Error),
}

/// What [`drop_to`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Capabilities removed from the effective or permitted set.
    pub removed: Vec<String>,
    /// Capabilities kept (needed and held).
    pub kept: Vec<String>,
    /// Whether the bounding set was reduced too (needs CAP_SETPCAP).
    pub bounding_reduced: bool,
}

fn caps_err(what: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Caps { what, source }
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<_> = set.iter().copied().collect();
    v.sort_by_key(|c| c.index());
    v.into_iter().map(|c| c.to_string()).collect()
}

/// Keeps only `keep` (where held) in the effective and permitted sets, empties the
/// inheritable and ambient sets, reduces the bounding set to `keep` when CAP_SETPCAP
/// allows it (otherwise leaves it), then sets `no_new_privs`.
pub fn drop_to(keep: &BTreeSet<Capability>) -> Result<Dropped, PrivilegeError> {
    let keep: CapsHashSet = keep.iter().map(|c| c.to_caps()).collect();
    let effective =
        caps::read(None, CapSet::Effective).map_err(caps_err("read the effective set"))?;
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_err("read the permitted set"))?;
    let held: CapsHashSet = effective.union(&permitted).copied().collect();
    let kept: CapsHashSet = held.intersection(&keep).copied().collect();
    let removed: CapsHashSet = held.difference(&keep).copied().collect();

    // The bounding set first: dropping from it needs CAP_SETPCAP in the effective set.
    let mut bounding_reduced = false;
    if effective.contains(&caps::Capability::CAP_SETPCAP) {
        let bounding =
            caps::read(None, CapSet::Bounding).map_err(caps_err("read the bounding set"))?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(caps_err("drop from the bounding set"))?;
        }
        bounding_reduced = true;
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clear the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clear the inheritable set"))?;
    let new_effective: CapsHashSet = effective.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &new_effective)
        .map_err(caps_err("reduce the effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("reduce the permitted set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    Ok(Dropped {
        removed: names(&removed),
        kept: names(&kept),
        bounding_reduced,
    })
}

/// Why this process counts as privileged for a component that needs nothing (the
/// processor): uid 0, or any capability in its effective, permitted or ambient set.
/// `None` when it holds nothing.
pub fn privileges_held() -> Option<String> {
    let status = crate::status::read_self().ok()?;
    describe_privileges(&status)
}

/// [`privileges_held`] for a given status.
pub fn describe_privileges(status: &crate::status::ProcessStatus) -> Option<String> {
    let mut reasons = Vec::new();
    if status.uid.contains(&0) {
        reasons.push("runs as root (uid 0)".to_owned());
    }
    let c = &status.capabilities;
    let held: BTreeSet<&String> = c
        .effective
        .iter()
        .chain(&c.permitted)
        .chain(&c.ambient)
        .collect();
    if !held.is_empty() {
        let list: Vec<&str> = held.iter().map(|s| s.as_str()).collect();
        let shown = if list.len() > 8 {
            format!("{} capabilities", list.len())
        } else {
            list.join(",")
        };
        reasons.push(format!("holds capabilities ({shown})"));
    }
    (!reasons.is_empty()).then(|| reasons.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::parse_status;

    #[test]
    fn nobody_without_capabilities_holds_nothing() {
        let s =
            parse_status("Uid:\t65534\t65534\t65534\t65534\nCapEff:\t0\nCapPrm:\t0\nCapAmb:\t0\n");
        assert_eq!(describe_privileges(&s), None);
    }

    #[test]
    fn root_or_any_capability_is_privileged() {
        let root = parse_status("Uid:\t0\t0\t0\t0\nCapEff:\t0\nCapPrm:\t0\n");
        assert_eq!(
            describe_privileges(&root).as_deref(),
            Some("runs as root (uid 0)")
        );
        let netraw = parse_status("Uid:\t1000\t1000\t1000\t1000\nCapPrm:\t0000000000002000\n");
        assert_eq!(
            describe_privileges(&netraw).as_deref(),
            Some("holds capabilities (CAP_NET_RAW)")
        );
    }
}
