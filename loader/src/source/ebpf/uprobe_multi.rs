//! uprobe_multi links with raw bpf(2) calls.
//!
//! Perf-event uprobes (what aya 0.14 attaches) need CAP_SYS_ADMIN; a
//! `BPF_TRACE_UPROBE_MULTI` link (Linux 6.6+) needs only CAP_BPF + CAP_PERFMON.
//! aya 0.14 has no such link, and its `UProbe::load` loads programs without the
//! `expected_attach_type = BPF_TRACE_UPROBE_MULTI` the kernel requires for it
//! (`BPF_LINK_CREATE` then fails with EINVAL). So the TLS programs are loaded here:
//! the object is parsed again with `aya-obj` (the crate aya itself uses), its map
//! references are relocated to the file descriptors of the maps aya created (so
//! the programs share `PIDS`, `CONNS`, `EVENTS`, ... with the tracepoint programs),
//! and the instructions are loaded with `BPF_PROG_LOAD`.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};

/// `BPF_F_UPROBE_MULTI_RETURN`: every offset of the link is a return probe.
const UPROBE_MULTI_RETURN: u32 = 1;

/// Linux's internal ENOTSUPP, returned by some bpf(2) paths (not in libc).
const ENOTSUPP: i32 = 524;

/// Verifier log size used when a load fails (to explain why).
const LOG_SIZE: usize = 1 << 20;

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BPF_PROG_LOAD and BPF_LINK_CREATE return a new file descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// Programs of `object` relocated against the maps aya created (`maps`: name ->
/// map fd), ready for [`load`].
pub struct Relocated {
    license: CString,
    programs: HashMap<String, Vec<bpf_insn>>,
}

/// Parses and relocates `object`, keeping the instructions of `names`.
pub fn relocate(
    object: &[u8],
    maps: &HashMap<String, RawFd>,
    names: &[&str],
) -> Result<Relocated, String> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| format!("parse: {e}"))?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    let defs: Vec<(String, RawFd, aya_obj::Map)> = obj
        .maps
        .iter()
        .filter_map(|(name, def)| maps.get(name).map(|fd| (name.clone(), *fd, def.clone())))
        .collect();
    obj.relocate_maps(
        defs.iter().map(|(n, fd, def)| (n.as_str(), *fd, def)),
        &text_sections,
    )
    .map_err(|e| format!("relocating maps: {e}"))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| format!("relocating calls: {e}"))?;
    let mut programs = HashMap::new();
    for name in names {
        let program = obj
            .programs
            .get(*name)
            .ok_or_else(|| format!("the eBPF object has no program {name}"))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| format!("the eBPF object has no code for program {name}"))?;
        programs.insert((*name).to_owned(), function.instructions.clone());
    }
    Ok(Relocated {
        license: obj.license.clone(),
        programs,
    })
}

impl Relocated {
    /// Loads `name` as a `BPF_PROG_TYPE_KPROBE` program with expected attach type
    /// `BPF_TRACE_UPROBE_MULTI`. On failure the error carries the verifier log.
    pub fn load(&self, name: &str) -> Result<OwnedFd, String> {
        let insns = self
            .programs
            .get(name)
            .ok_or_else(|| format!("program {name} was not relocated"))?;
        let attempt = |log: Option<&mut Vec<u8>>| -> io::Result<OwnedFd> {
            // SAFETY: all-zero is a valid bpf_attr (the kernel requires unused fields 0).
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            // SAFETY: writing the BPF_PROG_LOAD member of the union.
            let u = unsafe { &mut attr.__bindgen_anon_3 };
            u.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
            u.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
            u.insn_cnt = insns.len() as u32;
            u.insns = insns.as_ptr() as u64;
            u.license = self.license.as_ptr() as u64;
            for (dst, src) in u.prog_name.iter_mut().zip(name.bytes().take(15)) {
                *dst = src as libc::c_char;
            }
            if let Some(log) = log {
                u.log_level = 1;
                u.log_buf = log.as_mut_ptr() as u64;
                u.log_size = log.len() as u32;
            }
            sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
        };
        match attempt(None) {
            Ok(fd) => Ok(fd),
            Err(first) => {
                let mut log = vec![0u8; LOG_SIZE];
                let err = match attempt(Some(&mut log)) {
                    Ok(fd) => return Ok(fd),
                    Err(e) => e,
                };
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                let tail: Vec<&str> = text.lines().rev().take(6).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let hint = if first.raw_os_error() == Some(libc::EPERM) {
                    " (loading uprobe programs needs CAP_BPF and CAP_PERFMON, or root)"
                } else {
                    ""
                };
                Err(format!(
                    "BPF_PROG_LOAD {name} (kprobe, expected_attach_type uprobe_multi): {err}{hint}{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; verifier: {}", tail.join(" | "))
                    }
                ))
            }
        }
    }
}

/// Attaches `prog` (loaded by [`Relocated::load`]) to the file offsets `offsets` of
/// the file at `path`, each with its cookie (`bpf_get_attach_cookie`), as entry
/// probes or (`ret`) return probes. `pid` 0: every process mapping the file.
/// The link lives as long as the returned descriptor.
pub fn attach(
    prog: impl AsFd,
    path: &str,
    offsets: &[u64],
    cookies: &[u64],
    ret: bool,
    pid: u32,
) -> io::Result<OwnedFd> {
    if offsets.is_empty() || offsets.len() != cookies.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "uprobe_multi needs one cookie per offset, and at least one offset",
        ));
    }
    let path = CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_LINK_CREATE member of the union.
    let l = unsafe { &mut attr.link_create };
    l.__bindgen_anon_1.prog_fd = prog.as_fd().as_raw_fd() as u32;
    l.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: writing the uprobe_multi member of the union.
    let m = unsafe { &mut l.__bindgen_anon_3.uprobe_multi };
    m.path = path.as_ptr() as u64;
    m.offsets = offsets.as_ptr() as u64;
    m.cookies = cookies.as_ptr() as u64;
    m.cnt = offsets.len() as u32;
    m.flags = if ret { UPROBE_MULTI_RETURN } else { 0 };
    m.pid = pid;
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// Describes a `BPF_LINK_CREATE` failure, saying what is missing.
pub fn explain_attach_error(e: &io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (uprobe_multi links need CAP_BPF and CAP_PERFMON, and the library file must be readable)"
        }
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(ENOTSUPP) => {
            " (this kernel may lack uprobe_multi links: Linux 6.6+ with CONFIG_UPROBES)"
        }
        Some(libc::ENOENT) => " (the library file is gone)",
        _ => "",
    };
    format!("BPF_LINK_CREATE uprobe_multi: {e}{hint}")
}
