//! Which pid namespace the loader runs in. The eBPF programs must compare and
//! report pids as the loader sees them in /proc: in the initial pid namespace these
//! are the kernel's global ids; in another one (a Kubernetes sidecar sharing its
//! pod's namespace, `shareProcessNamespace: true`) the programs are told the
//! namespace's device and inode and ask the kernel for each task's ids in it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The inode number of the initial pid namespace (`PROC_PID_INIT_INO` in the
/// kernel's include/linux/proc_ns.h, fixed since Linux 3.8).
pub const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// A pid namespace as `bpf_get_ns_current_pid_tgid` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidNs {
    /// The nsfs device in the kernel's `dev_t` encoding (major << 20 | minor), which
    /// is what the helper compares with (stat(2) returns the user-space encoding).
    pub dev: u64,
    pub ino: u64,
}

impl PidNs {
    /// Whether this is the initial pid namespace.
    pub fn is_initial(&self) -> bool {
        self.ino == INIT_PID_NS_INO
    }
}

/// The kernel's `dev_t` encoding of a device number from stat(2).
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = u64::from(libc::major(st_dev));
    let minor = u64::from(libc::minor(st_dev));
    (major << 20) | minor
}

/// The pid namespace of the process whose `ns/pid` link is `path`
/// (`/proc/self/ns/pid` for this process).
pub fn of(path: &Path) -> io::Result<PidNs> {
    let meta = std::fs::metadata(path)?;
    Ok(PidNs {
        dev: kernel_dev(meta.dev()),
        ino: meta.ino(),
    })
}

/// This process's pid namespace.
pub fn current() -> io::Result<PidNs> {
    of(Path::new("/proc/self/ns/pid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        // glibc's makedev(0, 4) for nsfs and a large minor.
        assert_eq!(kernel_dev(libc::makedev(0, 4)), 4);
        assert_eq!(kernel_dev(libc::makedev(8, 0x1234)), (8 << 20) | 0x1234);
    }

    #[test]
    fn this_process_namespace_is_read() {
        let ns = current().expect("stat /proc/self/ns/pid");
        assert_ne!(ns.ino, 0);
        // The link's target names the same inode: pid:[<ino>].
        let target = std::fs::read_link("/proc/self/ns/pid").expect("readlink");
        assert_eq!(target.to_string_lossy(), format!("pid:[{}]", ns.ino));
        // pid 1 of the namespace /proc belongs to is in it too (true unless /proc is
        // another namespace's mount).
        if let Ok(init) = of(Path::new("/proc/1/ns/pid")) {
            assert_eq!(init, ns);
        }
    }
}
