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
    #[error("cannot {what}: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
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
/// allows it (otherwise leaves it), and sets `no_new_privs` — in **every thread** of
/// the process: capabilities and `no_new_privs` are per thread in Linux, so each
/// thread applies the change itself, on a signal (as glibc does for setuid).
pub fn drop_to(keep: &BTreeSet<Capability>) -> Result<Dropped, PrivilegeError> {
    let keep: CapsHashSet = keep.iter().map(|c| c.to_caps()).collect();
    let effective =
        caps::read(None, CapSet::Effective).map_err(caps_err("read the effective set"))?;
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_err("read the permitted set"))?;
    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("read the bounding set"))?;
    let held: CapsHashSet = effective.union(&permitted).copied().collect();
    let kept: CapsHashSet = held.intersection(&keep).copied().collect();
    let removed: CapsHashSet = held.difference(&keep).copied().collect();
    let mask = |set: &CapsHashSet| set.iter().fold(0u64, |m, c| m | c.bitmask());
    let bounding_reduced = effective.contains(&caps::Capability::CAP_SETPCAP);
    let plan = Plan {
        effective: mask(&effective) & mask(&keep),
        permitted: mask(&kept),
        bounding_drop: if bounding_reduced {
            mask(&bounding) & !mask(&keep)
        } else {
            0
        },
    };
    threads::apply_everywhere(plan)?;
    Ok(Dropped {
        removed: names(&removed),
        kept: names(&kept),
        bounding_reduced,
    })
}

/// What every thread applies.
#[derive(Debug, Clone, Copy)]
struct Plan {
    effective: u64,
    permitted: u64,
    /// Bits to drop from the bounding set (0 without CAP_SETPCAP).
    bounding_drop: u64,
}

/// Applying a [`Plan`] in each thread of the process.
mod threads {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::{Plan, PrivilegeError};

    static EFFECTIVE: AtomicU64 = AtomicU64::new(0);
    static PERMITTED: AtomicU64 = AtomicU64::new(0);
    static BOUNDING_DROP: AtomicU64 = AtomicU64::new(0);
    /// Threads that applied the plan, and whether any failed.
    static DONE: AtomicUsize = AtomicUsize::new(0);
    static FAILED: AtomicBool = AtomicBool::new(false);
    /// One drop at a time.
    static LOCK: Mutex<()> = Mutex::new(());

    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    /// The plan for the calling thread: only raw syscalls (async-signal-safe).
    fn apply_here() -> bool {
        let drop = BOUNDING_DROP.load(Ordering::SeqCst);
        let eff = EFFECTIVE.load(Ordering::SeqCst);
        let prm = PERMITTED.load(Ordering::SeqCst);
        let mut ok = true;
        for bit in 0..64u64 {
            if drop & (1 << bit) != 0 {
                // SAFETY: prctl with integer arguments only.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, bit as libc::c_ulong, 0, 0, 0) };
                ok &= r == 0;
            }
        }
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        ok &= r == 0;
        let header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            Data {
                effective: eff as u32,
                permitted: prm as u32,
                inheritable: 0,
            },
            Data {
                effective: (eff >> 32) as u32,
                permitted: (prm >> 32) as u32,
                inheritable: 0,
            },
        ];
        // SAFETY: capset reads a valid header and two data structs (version 3).
        let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
        ok &= r == 0;
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
        ok &= r == 0;
        ok
    }

    extern "C" fn on_signal(_: libc::c_int) {
        if !apply_here() {
            FAILED.store(true, Ordering::SeqCst);
        }
        DONE.fetch_add(1, Ordering::SeqCst);
    }

    fn signal() -> libc::c_int {
        libc::SIGRTMIN() + 7
    }

    fn tids() -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn os_error(what: &'static str) -> PrivilegeError {
        PrivilegeError::Thread {
            what,
            source: std::io::Error::last_os_error(),
        }
    }

    pub(super) fn apply_everywhere(plan: Plan) -> Result<(), PrivilegeError> {
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        EFFECTIVE.store(plan.effective, Ordering::SeqCst);
        PERMITTED.store(plan.permitted, Ordering::SeqCst);
        BOUNDING_DROP.store(plan.bounding_drop, Ordering::SeqCst);
        FAILED.store(false, Ordering::SeqCst);
        // SAFETY: a zeroed sigaction is valid; the handler only makes raw syscalls
        // and touches atomics.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal(), &action, std::ptr::null_mut()) != 0 {
                return Err(os_error(
                    "install the signal handler that drops capabilities",
                ));
            }
        }
        // SAFETY: gettid has no arguments.
        let me = unsafe { libc::gettid() };
        let pid = std::process::id() as i32;
        let mut done_tids = vec![me];
        if !apply_here() {
            return Err(os_error("drop capabilities in the calling thread"));
        }
        // Threads started meanwhile by a thread not yet reduced would keep its
        // capabilities: list again until no thread is new.
        loop {
            let pending: Vec<i32> = tids()
                .into_iter()
                .filter(|t| !done_tids.contains(t))
                .collect();
            if pending.is_empty() {
                break;
            }
            for tid in pending {
                done_tids.push(tid);
                let before = DONE.load(Ordering::SeqCst);
                // SAFETY: tgkill with plain integers.
                if unsafe { libc::tgkill(pid, tid, signal()) } != 0 {
                    continue; // the thread exited
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while DONE.load(Ordering::SeqCst) == before {
                    if Instant::now() > deadline {
                        return Err(PrivilegeError::Thread {
                            what: "wait for a thread to drop its capabilities",
                            source: std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("thread {tid} did not handle the signal within 2s"),
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        if FAILED.load(Ordering::SeqCst) {
            return Err(PrivilegeError::Thread {
                what: "drop capabilities in every thread",
                source: std::io::Error::other("capset or prctl failed in some thread"),
            });
        }
        Ok(())
    }
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
