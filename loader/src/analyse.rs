//! Target binaries are untrusted input: their ELF symbol tables are read by a
//! sandboxed child, never by the privileged loader.
//!
//! The loader re-executes itself (`/proc/self/exe __analyse-elf`) with the open file
//! as standard input, an empty environment and no other descriptor. Before reading
//! a byte of it the child closes every other descriptor, drops every capability
//! (effective, permitted, inheritable, ambient), sets `no_new_privs` and installs a
//! seccomp filter that kills it on any system call but the few a parser needs to
//! map memory and write its answer (`read`, `write`, `mmap`, `munmap`, `brk`, ...;
//! no `open`, no `socket`, no `execve`). It answers one line per symbol found
//! (`sym <name> <file offset>`) on stdout and exits.
//!
//! The parent bounds its time ([`TIMEOUT`]) and output ([`MAX_OUTPUT`]) and trusts
//! none of it: every offset must fall inside an executable `PT_LOAD` segment of the
//! file, read by [`exec_ranges`] from the fixed-size ELF program headers (bounded,
//! checked; nothing else of the file is interpreted with privileges).

use std::fs::File;
use std::io::Read;
use std::time::Duration;

/// The child's argument.
pub const CHILD_ARG: &str = "__analyse-elf";
/// Longest an analysis may take.
#[cfg_attr(test, allow(dead_code))]
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Most bytes of answer read from the child.
#[cfg_attr(test, allow(dead_code))]
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Largest file analysed (statically linked runtimes are large: Node.js ~100 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Symbols found in a file, with their file offsets (validated).
pub type Symbols = Vec<(String, u64)>;

/// Asks a sandboxed child for the file offsets of `wanted` symbols of `file`
/// (dynamic symbols first, then the static table); each offset is checked to lie in
/// an executable segment of the file.
pub fn symbols(file: File, wanted: &[&str]) -> Result<Symbols, String> {
    let ranges = exec_ranges(&file)?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let out = run_child(file, wanted)?;
    parse_answer(&out, wanted, &ranges)
}

/// The child's argument asking for Go functions (`analyse/go.rs`).
pub const GO_MODE: &str = "--go";

/// A Go binary's version and the wanted functions found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoBinary {
    pub version: String,
    pub functions: Vec<GoFunction>,
}

/// A function's entry and the file offsets of its `RET` instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunction {
    pub name: String,
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// Asks the sandboxed child for the Go version of `file` and the entry and return
/// offsets of the `wanted` functions; every offset is checked to lie in an
/// executable segment, and every return inside its function.
pub fn go_functions(file: File, wanted: &[&str]) -> Result<GoBinary, String> {
    let ranges = exec_ranges(&file)?;
    let mut args = vec![GO_MODE];
    args.extend_from_slice(wanted);
    let out = run_child(file, &args)?;
    parse_go_answer(&out, wanted, &ranges)
}

/// The child's Go answer, checked.
pub fn parse_go_answer(
    text: &str,
    wanted: &[&str],
    ranges: &[(u64, u64)],
) -> Result<GoBinary, String> {
    let inside = |off: u64| {
        ranges
            .iter()
            .any(|(start, len)| off >= *start && off < start + len)
    };
    let mut version = None;
    let mut functions: Vec<(GoFunction, u64)> = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let known = |name: &str| wanted.contains(&name);
        let num = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| format!("bad number in {line:?}"))
        };
        match parts.as_slice() {
            ["go", v] if v.starts_with("go") && v.len() < 64 => version = Some(v.to_string()),
            ["func", name, entry, size] if known(name) => {
                let (entry, size) = (num(entry)?, num(size)?);
                if !inside(entry) || !inside(entry + size.max(1) - 1) {
                    return Err(format!(
                        "{name} at {entry:#x} (+{size}) is outside the executable segments"
                    ));
                }
                if !functions.iter().any(|(f, _)| f.name == *name) {
                    let f = GoFunction {
                        name: name.to_string(),
                        entry,
                        returns: Vec::new(),
                    };
                    functions.push((f, size));
                }
            }
            ["ret", name, off] => {
                let off = num(off)?;
                let Some((f, size)) = functions.iter_mut().find(|(f, _)| f.name == *name) else {
                    return Err(format!("a return of an unannounced function in {line:?}"));
                };
                if off < f.entry || off >= f.entry + *size {
                    return Err(format!("a return of {name} outside it: {off:#x}"));
                }
                f.returns.push(off);
            }
            _ => return Err(format!("the analyser answered a malformed line {line:?}")),
        }
    }
    let version = version.ok_or("the analyser found no Go version")?;
    Ok(GoBinary {
        version,
        functions: functions.into_iter().map(|(f, _)| f).collect(),
    })
}

/// Unit tests have no loader binary to re-execute: they parse in-process (the child
/// runs in `integration-tests/tests/analyser.rs`).
#[cfg(test)]
fn run_child(mut file: File, wanted: &[&str]) -> Result<String, String> {
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(|e| e.to_string())?;
    let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
    match wanted.split_first() {
        Some((mode, names)) if mode == GO_MODE => go::answer(&data, names),
        _ => find_symbols(&data, &wanted),
    }
}

/// The child's answer for `file` (stdin of `/proc/self/exe __analyse-elf`).
#[cfg(not(test))]
fn run_child(file: File, wanted: &[&str]) -> Result<String, String> {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let exe = std::env::current_exe().map_err(|e| format!("cannot re-execute the loader: {e}"))?;
    let mut child = Command::new(exe)
        .arg(CHILD_ARG)
        .args(wanted)
        .env_clear()
        .stdin(Stdio::from(file))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the analyser: {e}"))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    // Read both pipes from threads, bounded, while waiting with a deadline.
    let reader = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = p {
                let _ = p.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(out.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err_t = reader(err.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the analyser took more than {TIMEOUT:?}; killed"));
            }
            Err(e) => return Err(format!("waiting for the analyser: {e}")),
        }
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let why = String::from_utf8_lossy(&err[..err.len().min(512)])
            .trim()
            .to_string();
        return Err(match status.signal() {
            Some(libc::SIGSYS) => {
                "the analyser made a forbidden system call (killed by seccomp)".into()
            }
            Some(sig) => format!("the analyser died of signal {sig}"),
            None => format!("the analyser failed: {why}"),
        });
    }
    if out.len() > MAX_OUTPUT {
        return Err("the analyser answered too much".into());
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The child's answer, checked: known names only, each once, offsets inside `ranges`.
pub fn parse_answer(text: &str, wanted: &[&str], ranges: &[(u64, u64)]) -> Result<Symbols, String> {
    let mut found: Symbols = Vec::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some("sym"), Some(name), Some(off), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("the analyser answered a malformed line {line:?}"));
        };
        let Some(name) = wanted.iter().find(|w| **w == name) else {
            return Err(format!("the analyser answered an unasked symbol {name:?}"));
        };
        let off: u64 = off.parse().map_err(|_| format!("bad offset in {line:?}"))?;
        if !ranges
            .iter()
            .any(|(start, len)| off >= *start && off < start + len)
        {
            return Err(format!(
                "{name} at offset {off:#x} is outside the file's executable segments"
            ));
        }
        if !found.iter().any(|(n, _)| n == name) {
            found.push((name.to_string(), off));
        }
    }
    Ok(found)
}

/// File ranges (offset, length) of the executable `PT_LOAD` segments of a 64-bit
/// little-endian ELF file: the ELF header and program headers only, bounded.
pub fn exec_ranges(file: &File) -> Result<Vec<(u64, u64)>, String> {
    use std::os::unix::fs::FileExt;
    let mut eh = [0u8; 64];
    file.read_exact_at(&mut eh, 0)
        .map_err(|_| "not an ELF file (too short)".to_string())?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |b: &[u8], o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32_at =
        |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let u64_at =
        |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let (phoff, phentsize, phnum) = (u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    if phentsize != 56 || phnum == 0 || phnum > 128 {
        return Err(format!(
            "implausible program headers ({phnum} of {phentsize} bytes)"
        ));
    }
    let mut ph = vec![0u8; (phnum * 56) as usize];
    file.read_exact_at(&mut ph, phoff)
        .map_err(|_| "truncated program headers".to_string())?;
    let ranges: Vec<(u64, u64)> = ph
        .chunks_exact(56)
        .filter(|p| u32_at(p, 0) == 1 && u32_at(p, 4) & 1 != 0) // PT_LOAD, PF_X
        .map(|p| (u64_at(p, 8), u64_at(p, 32))) // p_offset, p_filesz
        .filter(|(_, len)| *len > 0)
        .collect();
    if ranges.is_empty() {
        return Err("no executable segment".into());
    }
    Ok(ranges)
}

/// The child: sandbox itself, then read the ELF on stdin and print the symbols
/// named in `wanted`. Never returns.
pub fn child_main(wanted: &[String]) -> ! {
    let code = match sandbox().and_then(|()| answer(wanted)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    };
    // SAFETY: exit_group ends the process; nothing is left to unwind.
    unsafe { libc::_exit(code) }
}

fn answer(wanted: &[String]) -> Result<(), String> {
    if wanted.iter().any(|w| w == "--forbidden-syscall-test") {
        // Tests prove the filter: this call must kill the process.
        // SAFETY: a plain socket(2) call.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        return Err("socket(2) was allowed".into());
    }
    let data = map_stdin()?;
    let out = match wanted.split_first() {
        Some((mode, names)) if mode == GO_MODE => go::answer(data, names)?,
        _ => find_symbols(data, wanted)?,
    };
    use std::io::Write;
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("writing the answer: {e}"))
}

/// `sym <name> <file offset>` lines for the `wanted` symbols of an ELF image.
pub(crate) fn find_symbols(data: &[u8], wanted: &[String]) -> Result<String, String> {
    let file = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
    use object::{Object, ObjectSymbol};
    let segments = Segments::of(&file);
    let mut out = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.is_undefined() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        if seen.contains(&name) || !wanted.iter().any(|w| w == name) {
            continue;
        }
        if let Some(off) = segments.offset(symbol.address()) {
            seen.push(name);
            out.push_str(&format!("sym {name} {off}\n"));
        }
    }
    Ok(out)
}

/// The file-backed segments of an ELF image: (address, file offset, size).
pub(crate) struct Segments(Vec<(u64, u64, u64)>);

impl Segments {
    pub(crate) fn of(file: &object::File) -> Self {
        use object::{Object, ObjectSegment};
        Segments(
            file.segments()
                .filter_map(|s| {
                    let (offset, size) = s.file_range();
                    (size > 0).then_some((s.address(), offset, size))
                })
                .collect(),
        )
    }

    /// The file offset of virtual address `va`.
    pub(crate) fn offset(&self, va: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|(a, _, s)| va >= *a && va < a + s)
            .map(|(a, o, _)| va - a + o)
    }
}

/// The whole of stdin, mapped read-only.
fn map_stdin() -> Result<&'static [u8], String> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of fd 0 into a zeroed struct.
    if unsafe { libc::fstat(0, &mut st) } != 0 || st.st_size <= 0 {
        return Err("stdin is not a readable file".into());
    }
    let len = st.st_size as usize;
    // SAFETY: a private read-only mapping of fd 0, never unmapped (the process ends).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            0,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err("cannot map the file".into());
    }
    // SAFETY: the mapping is `len` bytes, readable, and lives until exit.
    Ok(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
}

/// No other descriptor, no capability, no new privileges, and the seccomp filter.
fn sandbox() -> Result<(), String> {
    // SAFETY: plain system calls on this process only.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let mut header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err("cannot drop capabilities".into());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err("cannot set no_new_privs".into());
        }
    }
    if std::env::var_os("TANDEM_ANALYSER_REPORT").is_some() {
        // Tests read the child's own view of its sandbox (before seccomp forbids open).
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        for l in status
            .lines()
            .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
        {
            eprintln!("{l}");
        }
    }
    install_seccomp()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// System calls the parsing child may make.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

fn install_seccomp() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    // seccomp_data: nr at 0, arch at 4.
    let mut prog = vec![
        stmt(load, 4),
        jeq(ARCH, 1, 0),
        stmt(ret, RET_KILL_PROCESS),
        stmt(load, 0),
    ];
    for nr in ALLOWED {
        prog.push(jeq(*nr as u32, 0, 1));
        prog.push(stmt(ret, RET_ALLOW));
    }
    prog.push(stmt(ret, RET_KILL_PROCESS));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: installs a filter program that outlives the call (copied by the kernel).
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "cannot install the seccomp filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

mod go;

#[cfg(test)]
mod tests;
