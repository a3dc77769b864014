//! Issue 15: target binaries are analysed by a sandboxed child of the loader
//! (`loader/src/analyse.rs`): no capabilities (even when the loader runs as root),
//! `no_new_privs`, a seccomp filter that kills it on a forbidden system call; garbage
//! or truncated ELF is an error, and a loader meeting such a file keeps working.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tandem_integration_tests::*;

/// `tandem-loader __analyse-elf ARGS < file`, with `env`.
fn analyse(file: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(loader_bin())
        .arg("__analyse-elf")
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::fs::File::open(file).expect("open the file to analyse"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run the analyser")
}

/// A libssl of the host (a real ELF file with OpenSSL's symbols).
fn host_libssl() -> std::path::PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
        "/usr/lib/libssl.so.3",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.is_file())
    .expect("libssl.so.3 is installed (scripts/setup.sh installs curl, which needs it)")
}

#[test]
fn the_analyser_runs_without_capabilities_and_answers_symbol_offsets() {
    let out = analyse(
        &host_libssl(),
        &["SSL_read", "SSL_write", "not_a_symbol"],
        &[("TANDEM_ANALYSER_REPORT", "1")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    // Its own view of itself, whoever started it (root in CI): nothing left.
    for line in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(stderr.contains(line), "{line:?} in:\n{stderr}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = stdout.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert!(
        names.contains(&"SSL_read") && names.contains(&"SSL_write"),
        "{stdout}"
    );
    assert!(!names.contains(&"not_a_symbol"), "{stdout}");
    // Inside the file (whether they are the right ones is shown by the TLS tests:
    // uprobes at these offsets deliver the plaintext, tests/tls.rs).
    let len = std::fs::metadata(host_libssl()).unwrap().len();
    for l in stdout.lines() {
        let off: u64 = l.rsplit(' ').next().and_then(|o| o.parse().ok()).expect(l);
        assert!(off > 0 && off < len, "{l}");
    }
}

#[test]
fn a_forbidden_system_call_kills_the_analyser() {
    let out = analyse(&host_libssl(), &["--forbidden-syscall-test"], &[]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "killed by seccomp, not {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn garbage_and_truncated_elf_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0xa5u8; 100_000]).unwrap();
    let real = std::fs::read(host_libssl()).unwrap();
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &real[..real.len() / 3]).unwrap();
    let mut header_only = real[..4096].to_vec();
    header_only[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes()); // e_shoff
    let bad_sections = dir.path().join("bad-sections");
    std::fs::write(&bad_sections, &header_only).unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    for file in [&garbage, &truncated, &bad_sections, &empty] {
        let out = analyse(file, &["SSL_read", "SSL_write"], &[]);
        assert_eq!(
            out.status.signal(),
            None,
            "{}: the analyser crashed: {:?}",
            file.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Either a clean error (exit 2, a message) or an answer without symbols
        // the damaged file does not have.
        if !out.status.success() {
            assert_eq!(out.status.code(), Some(2), "{}", file.display());
            assert!(
                !out.stderr.is_empty(),
                "{}: an error message",
                file.display()
            );
        }
        assert!(stdout.lines().all(|l| l.starts_with("sym ")), "{stdout}");
    }
}

/// A traced process maps a garbage file named like OpenSSL's library, executable:
/// the loader's analysis fails, is logged and reported as a probe error, and the
/// loader goes on capturing the process's plain HTTP.
#[test]
fn a_loader_meeting_a_garbage_libssl_keeps_working() {
    let test = "a_loader_meeting_a_garbage_libssl_keeps_working";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = dir.path().join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let fake = lib_dir.join("libssl.so.3");
    std::fs::write(&fake, vec![0x5au8; 64 * 1024]).unwrap();
    let port = free_port();
    let script = format!(
        "import mmap, http.server\n\
         f = open({fake:?}, 'rb')\n\
         m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE)\n\
         http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')\n"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", &script]).current_dir(dir.path());
    let mut server = Running::spawn(cmd, "python3 mapping a garbage libssl.so.3");
    wait_listening(&mut server, port, PATIENCE);
    let socket = dir.path().join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let p = start_subscribed_processor(&socket, test, &["--open-port", &port.to_string()]);
    wait_instrumenting(&loader, &format!("ports {port}"));
    let got = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&got.stdout), "200");
    loader.stderr.wait_for("TLS uprobes not attached", PATIENCE);
    let info = loader_info(&socket);
    let failed: Vec<_> = info
        .probes
        .iter()
        .filter(|pr| !pr.attached && pr.name.contains(&*fake.to_string_lossy()))
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", info.probes);
    assert!(failed[0].error.contains("ELF"), "{:?}", failed[0]);
    // Still capturing: the plain HTTP exchange reaches the processor.
    let mut log = EventLog::new(&p);
    let server_pid = i64::from(server.pid());
    log.until("the server's plain HTTP response", PATIENCE, |events| {
        events.iter().any(|e| {
            e["kind"] == "data"
                && e["pid"] == server_pid
                && e["payload"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("HTTP/1.0 200"))
        })
    });
    assert!(
        loader_info(&socket).probes.len() >= info.probes.len(),
        "loader still answers"
    );
}

/// The `func`/`ret` lines of the analyser's Go answer, by function.
fn go_answer(file: &Path) -> (String, Vec<(String, u64, Vec<u64>)>) {
    let out = analyse(
        file,
        &[
            "--go",
            "crypto/tls.(*Conn).Read",
            "crypto/tls.(*Conn).Write",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut version = String::new();
    let mut funcs: Vec<(String, u64, Vec<u64>)> = Vec::new();
    for l in text.lines() {
        let p: Vec<&str> = l.split(' ').collect();
        match p.as_slice() {
            ["go", v] => version = v.to_string(),
            ["func", n, e, _] => {
                funcs.push((n.to_string(), e.parse().expect("entry offset"), vec![]))
            }
            ["ret", n, o] => funcs
                .iter_mut()
                .find(|f| f.0 == *n)
                .expect("announced")
                .2
                .push(o.parse().expect("return offset")),
            _ => panic!("unexpected line {l:?}"),
        }
    }
    funcs.sort();
    (version, funcs)
}

/// Issue 15: Go's crypto/tls functions, their entries and every RET (uprobes go
/// there: Go moves goroutine stacks, so no uretprobe), from `.symtab` and — for a
/// stripped binary — from `.gopclntab`, identically.
#[test]
fn go_tls_functions_and_their_returns_from_symtab_and_pclntab() {
    let dir = tempfile::tempdir().unwrap();
    let plain = golang::build(dir.path(), golang::HTTPS_SERVER, "server", "");
    let stripped = golang::build(dir.path(), golang::HTTPS_SERVER, "server-stripped", "-s -w");
    let (version, funcs) = go_answer(&plain);
    assert!(version.starts_with("go1."), "{version}");
    assert_eq!(
        funcs.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"]
    );
    let code = std::fs::read(&plain).unwrap();
    for (name, entry, rets) in &funcs {
        assert!(!rets.is_empty(), "{name} has returns");
        for r in rets {
            assert!(r > entry, "{name}");
            if cfg!(target_arch = "x86_64") {
                assert_eq!(code[*r as usize], 0xc3, "{name}: RET at {r:#x}");
            }
        }
    }
    let (v2, from_pclntab) = go_answer(&stripped);
    assert_eq!(v2, version);
    assert_eq!(
        from_pclntab, funcs,
        "stripped: the same functions and returns"
    );
    // A stripped binary has no symbol table: the answer came from .gopclntab.
    let nm = analyse(&stripped, &["crypto/tls.(*Conn).Read"], &[]);
    assert!(
        String::from_utf8_lossy(&nm.stdout).is_empty(),
        "no symbol table left"
    );
    // Not a Go binary: a clear error.
    let out = analyse(&host_libssl(), &["--go", "crypto/tls.(*Conn).Read"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Go binary"));
}
