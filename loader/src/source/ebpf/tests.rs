//! Loads the real programs and checks that a TCP exchange on loopback (IPv4 and
//! IPv6, one connection opened before the probes were attached) is captured.
//! Needs root (CAP_BPF + CAP_PERFMON + tracefs); without it the test prints
//! `SKIP: needs root/CAP_BPF: ...` (CI runs as root and treats a skip as failure).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tandem_proto::selection::parse_port_ranges;
use tandem_proto::v1::{Direction, Role};
use tandem_proto::{Event, EventKind, Selection};

use super::{programs, start, EbpfArgs};

const SERVER: &str = r#"
import socket, sys
s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s4.bind(("127.0.0.1", 0)); s4.listen(8)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s6.bind(("::1", 0)); s6.listen(8)
print(s4.getsockname()[1], s6.getsockname()[1], flush=True)
for i, ls in enumerate((s4, s6)):
    c, _ = ls.accept()
    if i == 0:
        sys.stdin.readline()  # the loader is ready: read the request now
    req = c.recv(4096)
    body = b"hello " + req.split(b" ")[1]
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    c.recv(1)  # wait for the client's close
    c.close()
sys.exit(3)
"#;

fn args() -> EbpfArgs {
    EbpfArgs {
        capture_bytes: 1024,
        open_port: None,
        exe: Vec::new(),
        pids: Vec::new(),
        container_ids: Vec::new(),
        ring_buffer_kib: 1024,
        poll_interval_ms: 10,
        max_traced_processes: 1024,
        tls: true,
        data_path: super::DataPath::Auto,
    }
}

fn exchange(stream: &mut TcpStream, path: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // One write: `write!` may split the request over several segments, and the
    // test server reads it with a single recv (a partial read made it answer early
    // and close with unread bytes, resetting the connection).
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).expect("read response");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn captures_a_loopback_exchange_as_root() {
    if !nix::unistd::geteuid().is_root() {
        let why = "needs root/CAP_BPF: loading eBPF programs and attaching tracepoints \
                   (run `cargo test -p tandem-loader` as root)";
        assert!(
            std::env::var_os("TANDEM_REQUIRE_PRIVILEGED_TESTS").is_none(),
            "TANDEM_REQUIRE_PRIVILEGED_TESTS is set but this test cannot run: {why}"
        );
        eprintln!("SKIP: {why}");
        return;
    }
    programs::ensure_tracefs().expect("tracefs");

    let mut server = Command::new("python3")
        .args(["-c", SERVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3 (needed by this test)");
    let server_pid = server.id();
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server ports");
    let ports: Vec<u16> = line
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect();
    let (p4, p6) = (ports[0], ports[1]);

    // Connection A exists before the probes are attached.
    let a = TcpStream::connect(("127.0.0.1", p4)).expect("connect v4");

    let flags = Selection {
        ports: parse_port_ranges(&format!("{p4},{p6}")).expect("ports"),
        ..Selection::default()
    };
    let (mut tracker, probes) = start(&args(), Some(flags)).expect("start the ebpf source");
    let failed: Vec<_> = probes.iter().filter(|p| !p.attached).collect();
    assert!(failed.is_empty(), "probes not attached: {failed:?}");
    let mut events: Vec<Event> = tracker.apply_selection(None);

    // Drains while the connections are open: a connection the kernel saw no
    // handshake for is resolved through /proc while the process still has it.
    let pump = |tracker: &mut super::tracker::Tracker, events: &mut Vec<Event>| {
        for _ in 0..10 {
            tracker.drain(events, 4096);
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    writeln!(server.stdin.as_mut().expect("stdin"), "go").expect("release the server");
    let mut a = a;
    let response_a = exchange(&mut a, "/preexisting");
    assert!(response_a.ends_with("hello /preexisting"), "{response_a}");
    pump(&mut tracker, &mut events);
    drop(a);
    let mut b = TcpStream::connect(("::1", p6)).expect("connect v6");
    let response_b = exchange(&mut b, "/fresh");
    assert!(response_b.ends_with("hello /fresh"), "{response_b}");
    pump(&mut tracker, &mut events);
    drop(b);
    let status = server.wait().expect("server exit");
    assert_eq!(status.code(), Some(3));

    let deadline = Instant::now() + Duration::from_secs(5);
    let done = |events: &[Event]| {
        events
            .iter()
            .any(|e| matches!(&e.kind, Some(EventKind::ProcessExited(x)) if x.pid == server_pid))
    };
    while !done(&events) && Instant::now() < deadline {
        tracker.drain(&mut events, 4096);
        std::thread::sleep(Duration::from_millis(10));
    }
    let mine: Vec<&EventKind> = events
        .iter()
        .filter(|e| e.pid() == Some(server_pid))
        .filter_map(|e| e.kind.as_ref())
        .collect();
    let describe = || format!("{mine:#?}");

    // The process, found by the start-up scan through its listening ports.
    let Some(EventKind::ProcessStarted(started)) = mine.first() else {
        panic!("first event is not ProcessStarted: {}", describe())
    };
    assert!(started.preexisting);
    assert!(started.exe_path.contains("python"), "{}", describe());
    assert!(started.cmdline.iter().any(|a| a == "-c"));

    let opened: Vec<_> = mine
        .iter()
        .filter_map(|k| match k {
            EventKind::ConnectionOpened(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 2, "{}", describe());
    // A: resolved through /proc, marked pre-existing.
    let ca = opened[0];
    assert!(ca.preexisting, "{}", describe());
    assert_eq!(ca.role, Role::Server as i32, "{}", describe());
    let local = ca.local.as_ref().expect("local");
    assert_eq!(
        (local.ip.as_ref(), local.port),
        (&[127, 0, 0, 1][..], u32::from(p4))
    );
    // B: seen at the handshake by the kernel.
    let cb = opened[1];
    assert!(!cb.preexisting);
    assert_eq!(cb.role, Role::Server as i32);
    let local = cb.local.as_ref().expect("local");
    assert_eq!(local.ip.len(), 16);
    assert_eq!(local.port, u32::from(p6));
    assert_ne!(ca.conn_id, cb.conn_id);

    for (conn, path) in [(ca.conn_id, "/preexisting"), (cb.conn_id, "/fresh")] {
        let data: Vec<_> = mine
            .iter()
            .filter_map(|k| match k {
                EventKind::Data(d) if d.conn_id == conn => Some(d),
                _ => None,
            })
            .collect();
        let request = data
            .iter()
            .find(|d| d.direction == Direction::Ingress as i32 && !d.payload.is_empty())
            .unwrap_or_else(|| panic!("no request on {path}: {}", describe()));
        let expected = format!("GET {path} HTTP/1.1\r\n");
        assert!(
            request.payload.starts_with(expected.as_bytes()),
            "{}",
            describe()
        );
        assert_eq!(request.total_len, request.payload.len() as u64);
        assert!(!request.truncated);
        let response = data
            .iter()
            .find(|d| d.direction == Direction::Egress as i32)
            .unwrap_or_else(|| panic!("no response on {path}: {}", describe()));
        assert!(
            response.payload.starts_with(b"HTTP/1.1 200 OK"),
            "{}",
            describe()
        );
        assert!(
            mine.iter()
                .any(|k| matches!(k, EventKind::ConnectionClosed(c) if c.conn_id == conn)),
            "no close of {path}: {}",
            describe()
        );
    }
    let Some(EventKind::ProcessExited(exited)) = mine.last() else {
        panic!("last event is not ProcessExited: {}", describe())
    };
    assert_eq!(exited.exit_code, 3);

    // The test process itself (the client) is never traced.
    let me = std::process::id();
    assert!(
        events.iter().all(|e| e.pid() != Some(me)),
        "the loader traced itself"
    );
}

/// Measures, with the kernel, why the TLS programs are loaded by hand: a program
/// loaded the way aya 0.14's `UProbe::load` does (no expected attach type) cannot
/// be attached with a uprobe_multi link (EINVAL), the same instructions loaded with
/// `expected_attach_type = BPF_TRACE_UPROBE_MULTI` can.
#[test]
fn uprobe_multi_links_need_the_expected_attach_type() {
    use super::{tls, uprobe_multi};
    use std::os::fd::AsFd;
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("TANDEM_REQUIRE_PRIVILEGED_TESTS").is_none(),
            "TANDEM_REQUIRE_PRIVILEGED_TESTS is set but this test needs root"
        );
        eprintln!("SKIP: needs root/CAP_BPF");
        return;
    }
    let Some(lib) = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
        "/usr/lib/libssl.so.3",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file()) else {
        panic!("libssl.so.3 is not installed (scripts/setup.sh installs curl, which needs it)");
    };
    let data = std::fs::read(lib).expect("read libssl");
    let found = tls::ssl_offsets(&data).expect("SSL_* symbols");
    let offsets: Vec<u64> = found.iter().map(|f| f.1).collect();
    let cookies: Vec<u64> = found.iter().map(|f| f.2).collect();

    let mut kernel = programs::Kernel::load(programs::LoadOptions {
        ring_buffer_bytes: 64 * 1024,
        max_processes: 64,
        config: tandem_ebpf_common::Config::default(),
    })
    .expect("load the object");
    let (entry, ret) = kernel.take_tls_programs().expect("TLS programs load");
    let link = uprobe_multi::attach(&entry, lib, &offsets, &cookies, false, 0)
        .expect("uprobe_multi entry link");
    let ret_link = uprobe_multi::attach(&ret, lib, &offsets, &cookies, true, 0)
        .expect("uprobe_multi return link");
    drop((link, ret_link));

    let program: &mut aya::programs::UProbe = kernel
        .ebpf_mut()
        .program_mut(tls::ENTRY_PROGRAM)
        .expect("ssl_enter in the object")
        .try_into()
        .expect("a uprobe program");
    program
        .load()
        .expect("aya loads it (as a perf-event uprobe program)");
    let fd = program.fd().expect("loaded");
    let err = uprobe_multi::attach(fd.as_fd(), lib, &offsets, &cookies, false, 0)
        .expect_err("the kernel refuses a uprobe_multi link without the expected attach type");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
}

/// The capability model lists only features this source implements, so it grants no
/// capability for nothing (a feature added to the model comes with its code).
#[test]
fn the_capability_model_lists_only_the_features_this_source_uses() {
    let model: Vec<&str> = tandem_security::FEATURES.iter().map(|f| f.id).collect();
    let args = args();
    let used: Vec<&str> = super::used_features(&args)
        .iter()
        .map(|f| f.name())
        .collect();
    assert_eq!(model, used);
}
