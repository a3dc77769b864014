//! TLS plaintext capture: finding OpenSSL's `libssl` (in the host's library
//! directories at start-up and in `/proc/<pid>/maps` of traced processes), the file
//! offsets of its `SSL_*` functions, and attaching the `ssl_enter`/`ssl_return`
//! programs to each distinct library file with two uprobe_multi links (entry and
//! return; the cookie of each offset says which function it is, see
//! `tandem_ebpf_common::ssl_fn`). Design: `ebpf/README.md` ("TLS").

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tandem_ebpf_common::{go_fn, ssl_fn};
use tandem_proto::v1::AttachedProbe;
use tandem_security::FeatureId;
use tracing::{debug, info, warn};

use super::uprobe_multi;
use crate::source::probe;

/// Most distinct library files probed (each costs two links).
pub const MAX_LIBRARIES: usize = 64;
/// Most executables remembered as analysed (with or without OpenSSL inside).
const MAX_EXECUTABLES: usize = 4096;
/// Most (pid, start time) pairs remembered as scanned.
const MAX_SCANNED: usize = 65_536;

/// Programs of the eBPF object used for TLS.
pub const ENTRY_PROGRAM: &str = "ssl_enter";
pub const RETURN_PROGRAM: &str = "ssl_return";
/// The program of Go's crypto/tls (entries and returns, `go_fn`).
pub const GO_PROGRAM: &str = "go_tls";
/// The program of Go's goroutines (ancestry, net/http's writer, `go_fn`).
pub const GOROUTINES_PROGRAM: &str = "go_goroutines";

/// Directories searched for the host's libssl at start-up.
const HOST_LIBRARY_DIRS: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/local/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
];

/// Whether a file name is OpenSSL's libssl (`libssl.so`, `libssl.so.3`,
/// `libssl.so.1.1`, ...; not NSS's `libssl3.so`, which has another API).
pub fn is_libssl(file_name: &str) -> bool {
    file_name == "libssl.so" || file_name.starts_with("libssl.so.")
}

/// A file-backed mapping of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// (major, minor) of the device.
    pub dev: (u32, u32),
    pub inode: u64,
    pub path: String,
}

/// Whether a mapped path (maybe ` (deleted)`) is a libssl.
pub fn is_libssl_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    is_libssl(name.trim_end_matches(" (deleted)"))
}

/// The file-backed mappings of a `/proc/<pid>/maps` text whose path `keep` accepts
/// (one per distinct file).
pub fn parse_maps(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(_perms), Some(_off), Some(dev), Some(inode)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        let path: Vec<&str> = parts.collect();
        let path = path.join(" ");
        if !path.starts_with('/') || !keep(&path) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(major), Ok(minor), Ok(inode)) = (
            u64::from_str_radix(start, 16),
            u64::from_str_radix(end, 16),
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        if inode == 0
            || out
                .iter()
                .any(|m| m.dev == (major, minor) && m.inode == inode)
        {
            continue;
        }
        out.push(Mapping {
            start,
            end,
            dev: (major, minor),
            inode,
            path,
        });
    }
    out
}

/// (major, minor) of a Linux `dev_t`.
pub fn dev_parts(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// File offsets of the probed `SSL_*` functions in an ELF file, with their cookies
/// (`ssl_fn`). Dynamic symbols first, then the static symbol table. Tests only: the
/// loader has target files analysed by the sandboxed child (`crate::analyse`).
#[cfg(test)]
pub fn ssl_offsets(data: &[u8]) -> Result<Vec<(&'static str, u64, u64)>, String> {
    let names: Vec<String> = ssl_fn::PROBED.iter().map(|(n, _)| n.to_string()).collect();
    let text = crate::analyse::find_symbols(data, &names)?;
    let found: Vec<(&'static str, u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ').skip(1);
            let (name, off) = (p.next()?, p.next()?.parse().ok()?);
            let (n, c) = ssl_fn::PROBED.iter().find(|(n, _)| *n == name)?;
            Some((*n, off, u64::from(*c)))
        })
        .collect();
    let has = |n: &str| found.iter().any(|(f, _, _)| *f == n);
    if !(has("SSL_read") || has("SSL_read_ex")) || !(has("SSL_write") || has("SSL_write_ex")) {
        return Err(NO_SSL.into());
    }
    Ok(found)
}

/// The probed `SSL_*` functions of `file` with their cookies, from the sandboxed
/// analyser (`crate::analyse`); an error unless both a read and a write function exist.
pub fn probed_offsets(file: fs::File) -> Result<Vec<(&'static str, u64, u64)>, String> {
    let names: Vec<&str> = ssl_fn::PROBED.iter().map(|(n, _)| *n).collect();
    let found: Vec<(&'static str, u64, u64)> = crate::analyse::symbols(file, &names)?
        .iter()
        .filter_map(|(name, off)| {
            ssl_fn::PROBED
                .iter()
                .find(|(n, _)| n == name)
                .map(|(n, c)| (*n, *off, u64::from(*c)))
        })
        .collect();
    let has = |n: &str| found.iter().any(|(f, _, _)| *f == n);
    if !(has("SSL_read") || has("SSL_read_ex")) || !(has("SSL_write") || has("SSL_write_ex")) {
        return Err(NO_SSL.into());
    }
    Ok(found)
}

/// The error of a file without OpenSSL's functions.
const NO_SSL: &str = "no SSL_read/SSL_write symbols (not OpenSSL's libssl?)";

/// State of one library file (key: device and inode).
struct Library {
    /// The links, kept open while the loader runs.
    _links: Vec<OwnedFd>,
}

/// Finds and probes libssl files.
pub struct Tls {
    programs: Result<(OwnedFd, OwnedFd), String>,
    go_program: super::programs::GoPrograms,
    libraries: HashMap<((u32, u32), u64), Option<Library>>,
    scanned: HashSet<(u32, u64, u8)>,
    new_probes: Vec<AttachedProbe>,
    warned_full: bool,
    analysis_errors: u64,
    /// Root of the /proc to read (tests may point elsewhere).
    proc_root: PathBuf,
}

impl Tls {
    /// `programs`: the loaded entry and return programs, or why they are not.
    pub fn new(
        programs: Result<(OwnedFd, OwnedFd), String>,
        go_program: super::programs::GoPrograms,
    ) -> Tls {
        if let Err(e) = &go_program.0 {
            warn!(
                feature = FeatureId::TlsUprobes.name(),
                "Go crypto/tls plaintext capture is unavailable: {e}"
            );
        }
        if let Err(e) = &go_program.1 {
            warn!(
                feature = FeatureId::TlsUprobes.name(),
                "Go goroutines are not followed (Go client spans are not linked): {e}"
            );
        }
        if let Err(e) = &programs {
            warn!(
                feature = FeatureId::TlsUprobes.name(),
                "TLS plaintext capture is unavailable: {e}"
            );
        }
        Tls {
            programs,
            go_program,
            libraries: HashMap::new(),
            scanned: HashSet::new(),
            new_probes: Vec::new(),
            warned_full: false,
            analysis_errors: 0,
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// Turns TLS capture off (nothing is attached afterwards).
    pub fn disable(&mut self, why: &str) {
        if self.programs.is_ok() {
            info!("TLS plaintext capture is off: {why}");
        }
        self.programs = Err(why.to_owned());
    }

    pub fn available(&self) -> bool {
        self.programs.is_ok()
    }

    /// Probe statuses added since the last call.
    pub fn take_probes(&mut self) -> Vec<AttachedProbe> {
        std::mem::take(&mut self.new_probes)
    }

    /// Number of library files with attached links.
    pub fn attached(&self) -> usize {
        self.libraries.values().filter(|l| l.is_some()).count()
    }

    /// Probes the host's libssl files (so short-lived processes such as curl are
    /// covered from their first call: uprobes live on the file, and apply to every
    /// later mapping of it).
    pub fn attach_host(&mut self) {
        if !self.available() {
            return;
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for dir in HOST_LIBRARY_DIRS {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten().take(100_000) {
                let name = entry.file_name();
                if is_libssl(&name.to_string_lossy()) {
                    files.push(entry.path());
                }
            }
        }
        for path in files {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let key = (dev_parts(meta.dev()), meta.ino());
            let shown = fs::canonicalize(&path).unwrap_or(path.clone());
            self.attach_file(key, &shown, &shown.to_string_lossy());
        }
    }

    /// Probes the libssl files mapped by `pid`, once per process instance and
    /// `stage` (e.g. when selected, and again at its first connection, after a
    /// dlopen of libssl).
    pub fn scan_process(&mut self, pid: u32, start_time: u64, stage: u8) {
        if !self.available() || pid == 0 {
            return;
        }
        if self.scanned.len() >= MAX_SCANNED {
            self.scanned.clear();
        }
        if !self.scanned.insert((pid, start_time, stage)) {
            return;
        }
        self.rescan_process(pid);
    }

    /// Probes the libssl files mapped by `pid` now (e.g. after a dlopen).
    pub fn rescan_process(&mut self, pid: u32) {
        if !self.available() {
            return;
        }
        let dir = self.proc_root.join(pid.to_string());
        let text = match fs::read_to_string(dir.join("maps")) {
            Ok(t) => t,
            Err(e) => {
                debug!(pid, "cannot read /proc/{pid}/maps: {e}");
                return;
            }
        };
        // The executable too: OpenSSL may be linked into it (Node.js, static builds).
        let exe = fs::read_link(dir.join("exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mappings = parse_maps(&text, |path| {
            is_libssl_path(path) || (!exe.is_empty() && path == exe)
        });
        for m in mappings {
            let key = (m.dev, m.inode);
            if self.libraries.contains_key(&key) {
                continue;
            }
            // The exact mapped file (needs CAP_CHECKPOINT_RESTORE), else the path in
            // the process's mount namespace (needs CAP_SYS_PTRACE for other users).
            let by_map = dir
                .join("map_files")
                .join(format!("{:x}-{:x}", m.start, m.end));
            let in_root = dir.join("root").join(
                m.path
                    .trim_end_matches(" (deleted)")
                    .trim_start_matches('/'),
            );
            let path = if fs::metadata(&by_map).is_ok() {
                by_map
            } else {
                in_root
            };
            let shown = format!("{} (pid {pid})", m.path);
            if m.path == exe {
                self.attach_executable(key, &path, &shown);
            } else {
                self.attach_file(key, &path, &shown);
            }
        }
    }

    /// An executable: probed like a libssl when OpenSSL is linked into it; one
    /// without (most) is remembered quietly.
    fn attach_executable(&mut self, key: ((u32, u32), u64), path: &Path, shown: &str) {
        if self.libraries.len() >= MAX_EXECUTABLES + MAX_LIBRARIES {
            return;
        }
        // Opened once: the process may exit meanwhile (a short-lived client), and a
        // file that cannot be opened now is not remembered (a later process of the
        // same executable is scanned again). The links go through this descriptor.
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                debug!(executable = shown, "cannot open the executable: {e}");
                return;
            }
        };
        let by_fd = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ));
        let found = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(probed_offsets);
        match found {
            Err(e) if e == NO_SSL => self.attach_go(key, file, &by_fd, shown),
            Err(e) => {
                self.analysis_errors += 1;
                warn!(
                    executable = shown,
                    errors = self.analysis_errors,
                    "cannot analyse the executable for OpenSSL: {e}"
                );
                let name = format!("analyse:{shown}");
                self.new_probes.push(probe(&name, "elf_analysis", Err(e)));
                self.libraries.insert(key, None);
            }
            Ok(_) => self.attach_file(key, &by_fd, shown),
        }
    }

    /// A Go executable: uprobes at the entry and every return of crypto/tls's
    /// `(*Conn).Read`/`Write` (plaintext), and at the functions that say which
    /// goroutine bytes move for (`go_fn::GOROUTINES`: ancestry, the net/http
    /// client's writer); anything else is remembered quietly.
    fn attach_go(&mut self, key: ((u32, u32), u64), file: fs::File, path: &Path, shown: &str) {
        let names: Vec<&str> = go_fn::PROBED
            .iter()
            .chain(go_fn::GOROUTINES.iter())
            .map(|(n, _, _)| *n)
            .collect();
        let found = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|f| crate::analyse::go_functions(f, &names));
        let go = match found {
            Ok(go) => go,
            Err(e) => {
                debug!(executable = shown, "neither OpenSSL nor Go: {e}");
                self.libraries.insert(key, None);
                return;
            }
        };
        let has = |n: &str| go.functions.iter().any(|f| f.name == n);
        let tls = go_fn::PROBED[..go_fn::REQUIRED]
            .iter()
            .all(|(n, _, _)| has(n));
        let mut links = Vec::new();
        let sets = [
            (tls, "crypto/tls", &go_fn::PROBED[..], 0),
            (
                has(go_fn::GOROUTINES[0].0),
                "goroutines",
                &go_fn::GOROUTINES[..],
                1,
            ),
        ];
        for (wanted, what, table, program) in sets {
            if !wanted {
                debug!(executable = shown, version = %go.version, "Go without {what} functions");
                continue;
            }
            let name = format!("uprobe_multi:{shown}:{what}");
            match self.link_go(path, &go, table, program) {
                Ok(link) => {
                    info!(executable = shown, version = %go.version, "Go {what} uprobes attached");
                    links.push(link);
                    self.new_probes.push(probe(&name, "uprobe_multi", Ok(())));
                }
                Err(e) => {
                    warn!(executable = shown, version = %go.version, feature = FeatureId::TlsUprobes.name(), "Go {what} uprobes not attached: {e}");
                    self.new_probes.push(probe(&name, "uprobe_multi", Err(e)));
                }
            }
        }
        let library = (!links.is_empty()).then_some(Library { _links: links });
        self.libraries.insert(key, library);
    }

    /// One uprobe_multi link of Go program `program` (0: `go_tls`, 1:
    /// `go_goroutines`) at the entries and returns of the functions of `table`
    /// found in `go`.
    fn link_go(
        &self,
        path: &Path,
        go: &crate::analyse::GoBinary,
        table: &[(&str, u64, u64)],
        program: usize,
    ) -> Result<OwnedFd, String> {
        let program = if program == 0 {
            &self.go_program.0
        } else {
            &self.go_program.1
        };
        let program = program.as_ref().map_err(Clone::clone)?;
        let minor = go.version.strip_prefix("go1.").and_then(|v| {
            v.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u32>()
                .ok()
        });
        let Some(minor) = minor.filter(|m| *m >= 17) else {
            return Err(format!(
                "{}: Go before 1.17 passes arguments on the stack (supported: Go 1.17 and later)",
                go.version
            ));
        };
        let (mut offsets, mut cookies) = (Vec::new(), Vec::new());
        for f in &go.functions {
            let Some((_, entry, ret)) = table.iter().find(|(n, _, _)| *n == f.name) else {
                continue;
            };
            offsets.push(f.entry);
            cookies.push(if *entry == go_fn::NEWPROC_ENTRY && minor == 17 {
                go_fn::NEWPROC_ENTRY_ARG3
            } else {
                *entry
            });
            if *ret == go_fn::NO_RETURN {
                continue;
            }
            for r in &f.returns {
                offsets.push(*r);
                cookies.push(*ret);
            }
        }
        uprobe_multi::attach(
            program,
            &path.to_string_lossy(),
            &offsets,
            &cookies,
            false,
            0,
        )
        .map_err(|e| uprobe_multi::explain_attach_error(&e))
    }

    /// Analyses that failed (garbage or truncated binaries, a killed analyser).
    pub fn analysis_errors(&self) -> u64 {
        self.analysis_errors
    }

    fn attach_file(&mut self, key: ((u32, u32), u64), path: &Path, shown: &str) {
        if self.libraries.contains_key(&key) {
            return;
        }
        let name = format!("uprobe_multi:{shown}:SSL_*");
        if self.attached() >= MAX_LIBRARIES {
            if !self.warned_full {
                self.warned_full = true;
                warn!(
                    limit = MAX_LIBRARIES,
                    library = shown,
                    "too many distinct libssl files: not probing more (TLS of processes using them is captured as ciphertext only)"
                );
            }
            return;
        }
        match self.attach_path(path) {
            Ok(links) => {
                info!(library = shown, "TLS uprobes attached");
                self.libraries.insert(key, Some(Library { _links: links }));
                self.new_probes.push(probe(&name, "uprobe_multi", Ok(())));
            }
            Err(e) => {
                warn!(
                    library = shown,
                    feature = FeatureId::TlsUprobes.name(),
                    "TLS uprobes not attached: {e}"
                );
                self.libraries.insert(key, None);
                self.new_probes.push(probe(&name, "uprobe_multi", Err(e)));
            }
        }
    }

    fn attach_path(&self, path: &Path) -> Result<Vec<OwnedFd>, String> {
        let (entry, ret) = self.programs.as_ref().map_err(Clone::clone)?;
        let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let found = probed_offsets(file)?;
        let offsets: Vec<u64> = found.iter().map(|(_, o, _)| *o).collect();
        let cookies: Vec<u64> = found.iter().map(|(_, _, c)| *c).collect();
        let names: Vec<&str> = found.iter().map(|(n, _, _)| *n).collect();
        debug!(path = %path.display(), functions = ?names, "libssl symbols");
        let text = path.to_string_lossy();
        let entry_link = uprobe_multi::attach(entry, &text, &offsets, &cookies, false, 0)
            .map_err(|e| uprobe_multi::explain_attach_error(&e))?;
        let return_link = uprobe_multi::attach(ret, &text, &offsets, &cookies, true, 0)
            .map_err(|e| uprobe_multi::explain_attach_error(&e))?;
        Ok(vec![entry_link, return_link])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_names() {
        assert!(is_libssl("libssl.so.3"));
        assert!(is_libssl("libssl.so.1.1"));
        assert!(is_libssl("libssl.so"));
        assert!(!is_libssl("libssl3.so"));
        assert!(!is_libssl("libcrypto.so.3"));
    }

    #[test]
    fn maps_lines_give_each_libssl_file_once() {
        let text = "\
55d0c0a00000-55d0c0a10000 r--p 00000000 fd:01 1234 /usr/bin/curl
7f0000000000-7f0000020000 r--p 00000000 fd:01 5555 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000020000-7f0000090000 r-xp 00020000 fd:01 5555 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000100000-7f0000200000 r-xp 00000000 00:2a 77 /opt/my app/lib/libssl.so.1.1 (deleted)
7f0000300000-7f0000400000 r-xp 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        let libs = parse_maps(text, is_libssl_path);
        assert_eq!(libs.len(), 2, "{libs:?}");
        assert_eq!(libs[0].dev, (0xfd, 1));
        assert_eq!(libs[0].inode, 5555);
        assert_eq!(libs[0].start, 0x7f00_0000_0000);
        assert_eq!(libs[1].path, "/opt/my app/lib/libssl.so.1.1 (deleted)");
        assert_eq!(libs[1].dev, (0, 0x2a));
    }

    #[test]
    fn dev_t_is_split_like_the_kernel() {
        // makedev(253, 1) and makedev(259, 300000).
        assert_eq!(dev_parts((253 << 8) | 1), (253, 1));
        let dev: u64 = ((300_000 & !0xff) << 12) | (300_000 & 0xff) | (259 << 8);
        assert_eq!(dev_parts(dev), (259, 300_000));
    }

    #[test]
    fn offsets_of_the_installed_libssl() {
        let Some(path) = HOST_LIBRARY_DIRS
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flat_map(|d| d.flatten())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| is_libssl(&n.to_string_lossy()))
                    && p.is_file()
            })
        else {
            eprintln!("SKIP: no libssl.so* installed");
            return;
        };
        let data = fs::read(&path).expect("read libssl");
        let found = ssl_offsets(&data).expect("SSL_* symbols");
        for name in ["SSL_read", "SSL_write"] {
            let (_, offset, _) = found
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} in {}", path.display()));
            assert!(*offset > 0 && (*offset as usize) < data.len());
        }
        // Every cookie is one of ssl_fn's values.
        assert!(found.iter().all(|(_, _, c)| (1..=5).contains(c)));
        // Not an ELF file.
        assert!(ssl_offsets(b"not an elf").is_err());
    }
}
