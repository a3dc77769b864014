//! The loader inside a non-initial pid namespace, as in the Kubernetes sidecar
//! deployment (`shareProcessNamespace: true`): the pod's processes and the loader
//! share one pid namespace, and every pid the loader selects by or reports is a pid
//! as seen in it, while the kernel's own ids are the initial namespace's.
//!
//! Emulated with `unshare --pid --fork --mount-proc` (util-linux, root): the loader
//! and the servers run inside one new pid namespace; the processor and the clients
//! (curl) run outside it and reach the loader's Unix socket in a temp dir. Needs root
//! and real eBPF (`require_root_bpf`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_integration_tests::*;

fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or_default()
}

fn pid_of(e: &Value) -> i64 {
    e["pid"].as_i64().unwrap_or(-1)
}

fn str_field<'a>(e: &'a Value, field: &str) -> &'a str {
    e[field].as_str().unwrap_or_default()
}

fn dump(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Connection events of process `pid`, by connection id, in arrival order.
fn connections(events: &[Value], pid: i64) -> BTreeMap<u64, Vec<Value>> {
    let mut out: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for e in events {
        if matches!(kind(e), "connection_opened" | "data" | "connection_closed") && pid_of(e) == pid
        {
            let id = e["conn_id"].as_u64().expect("conn_id");
            out.entry(id).or_default().push(e.clone());
        }
    }
    out
}

fn closed_connections(events: &[Value], pid: i64) -> usize {
    connections(events, pid)
        .values()
        .filter(|c| c.last().is_some_and(|e| kind(e) == "connection_closed"))
        .count()
}

/// Checks one closed server connection of a python http.server on `port`: opened
/// as a server on 127.0.0.1:port, the request `GET path` read, then a 200 response
/// carrying `body` written, then closed.
fn assert_served(conn: &[Value], port: u16, path: &str, body: &str) {
    let opened = &conn[0];
    assert_eq!(kind(opened), "connection_opened", "{}", dump(conn));
    assert_eq!(str_field(opened, "role"), "server", "{opened}");
    assert_eq!(
        str_field(opened, "local"),
        format!("127.0.0.1:{port}"),
        "{opened}"
    );
    assert!(
        str_field(opened, "peer").starts_with("127.0.0.1:"),
        "{opened}"
    );
    assert_eq!(
        conn.last().map(kind),
        Some("connection_closed"),
        "{}",
        dump(conn)
    );
    let mut ingress = String::new();
    let mut egress = String::new();
    let mut saw_egress = false;
    for e in conn.iter().filter(|e| kind(e) == "data") {
        let payload = str_field(e, "payload");
        match str_field(e, "direction") {
            "ingress" => {
                assert!(
                    !saw_egress,
                    "request read before the response:\n{}",
                    dump(conn)
                );
                ingress.push_str(payload);
            }
            "egress" => {
                saw_egress = true;
                egress.push_str(payload);
            }
            other => panic!("direction {other:?}: {e}"),
        }
    }
    assert!(
        ingress.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
        "{ingress:?}"
    );
    assert!(
        egress.starts_with("HTTP/1.0 200 ") || egress.starts_with("HTTP/1.1 200 "),
        "{egress:?}"
    );
    assert!(egress.contains(body), "the body is captured: {egress:?}");
}

/// `name <pid>` printed by the namespace's shell script on its stdout.
fn printed_pid(ns: &Running, name: &str) -> i64 {
    let line = ns.stdout.wait_for(&format!("{name} "), PATIENCE);
    line.trim()
        .strip_prefix(&format!("{name} "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"))
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    while !is_listening(port) {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The global pid (initial namespace) of the process whose innermost pid is
/// `ns_pid` among the descendants of `root` (host /proc, `NSpid:` lines).
fn global_pid(root: i32, ns_pid: i64) -> Option<i64> {
    let mut todo = vec![i64::from(root)];
    let mut seen = BTreeSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse::<i64>().ok());
        if nspid == Some(ns_pid) && p != i64::from(root) {
            return Some(p);
        }
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        todo.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i64>().ok()),
        );
    }
    None
}

/// An HTTPS server (python `ssl`, OpenSSL's libssl): port, cert, key, directory.
const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
port, cert, key, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)
httpd = http.server.HTTPServer(("127.0.0.1", port), Handler)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"#;

/// A server that listens on `argv[1]`, waits for a line on the fifo `argv[2]`,
/// then forks a child that serves one HTTP request on the inherited socket; the
/// parent prints `server_b_child <pid>` (the child's pid in its namespace).
const FORKING_SERVER: &str = r#"
import os, socket, sys
port, fifo = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(8)
with open(fifo) as f:
    f.readline()
pid = os.fork()
if pid == 0:
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req:
        d = c.recv(4096)
        if not d:
            break
        req += d
    body = b"served by a forked child\n"
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    c.close()
    os._exit(0)
print("server_b_child", pid, flush=True)
os.waitpid(pid, 0)
"#;

#[test]
fn a_loader_in_a_pid_namespace_traces_that_namespace_with_its_pids() {
    let test = "a_loader_in_a_pid_namespace_traces_that_namespace_with_its_pids";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let www = dir.path().join("www");
    std::fs::create_dir(&www).expect("create www");
    std::fs::write(www.join("a.txt"), "served inside the namespace, by port\n").expect("write");
    std::fs::write(www.join("d.txt"), "served over TLS inside the namespace\n").expect("write");
    let https = dir.path().join("https_server.py");
    std::fs::write(&https, HTTPS_SERVER).expect("write the https server");
    let (cert, key) = make_certificate(dir.path());
    let forking = dir.path().join("forking_server.py");
    std::fs::write(&forking, FORKING_SERVER).expect("write the forking server");
    std::fs::write(www.join("c.txt"), "served outside the namespace\n").expect("write");
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let socket = dir.path().join("run").join("loader.sock");
    let (port_a, port_b, port_c, port_d) = (free_port(), free_port(), free_port(), free_port());

    // Inside the namespace: server A (selected by its pid there), server B
    // (selected by its port) that forks a child to serve once told to (the child is
    // traced only by fork inheritance: it never calls listen), and the loader. pid 1
    // is the script's shell; --kill-child ends it all with the test. Server D
    // (HTTPS, selected by its port) is captured by the TLS uprobes.
    let script = r#"
python3 -u -m http.server "$PORT_A" --bind 127.0.0.1 --directory "$WWW" >/dev/null 2>&1 &
echo "server_a $!"
python3 -u "$FORKING" "$PORT_B" "$FIFO" &
echo "server_b $!"
python3 -u "$HTTPS" "$PORT_D" "$CERT" "$KEY" "$WWW" >/dev/null 2>&1 &
echo "server_d $!"
"$LOADER" --socket "$SOCKET" &
echo "loader $!"
wait
"#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "sh",
        "-c",
        script,
    ])
    .env("PORT_A", port_a.to_string())
    .env("PORT_B", port_b.to_string())
    .env("WWW", &www)
    .env("FIFO", &fifo)
    .env("FORKING", &forking)
    .env("HTTPS", &https)
    .env("PORT_D", port_d.to_string())
    .env("CERT", &cert)
    .env("KEY", &key)
    .env("LOADER", loader_bin())
    .env("SOCKET", &socket);
    let ns = Running::spawn(cmd, "unshare --pid (servers and loader)");
    let server_a = printed_pid(&ns, "server_a");
    let server_b = printed_pid(&ns, "server_b");
    let server_d = printed_pid(&ns, "server_d");
    let loader_pid = printed_pid(&ns, "loader");
    ns.stderr.wait_for("serving tandem.loader.v1", PATIENCE);
    ns.stderr.wait_for("ebpf source ready", PATIENCE);
    let mode = ns.stderr.wait_for("pid namespace", PATIENCE);
    assert!(
        mode.contains("pids as seen in it"),
        "the loader says it uses the namespace's pids: {mode}"
    );
    // Pids of the new namespace, not global ones: the loader is not pid 1 (the
    // script's shell is), and is a small number there.
    assert!(loader_pid > 1 && loader_pid < 100, "{loader_pid}");
    wait_port(port_a);
    wait_port(port_b);
    wait_port(port_d);
    // The namespace's pids really differ from the kernel's global ones.
    let global_a = global_pid(ns.pid(), server_a).expect("server A in the host's /proc");
    assert_ne!(global_a, server_a);

    // Outside the namespace: server C on a selected port; never traced.
    let server_c = start_python_http_server(&www, "127.0.0.1", port_c);

    let ports = format!("{port_b},{port_c},{port_d}");
    let p = start_subscribed_processor(
        &socket,
        test,
        &["--open-port", &ports, "--pid", &server_a.to_string()],
    );
    ns.stderr.wait_for("ebpf: instrumenting", PATIENCE);
    std::thread::sleep(Duration::from_millis(300));

    // Server B forks its child now (after the selection: only fork inheritance
    // can trace it).
    std::fs::write(&fifo, "go\n").expect("write the fifo");
    let child_b = printed_pid(&ns, "server_b_child");

    let fetch = |port: u16, file: &str| {
        let (_, out) = curl(&[&format!("http://127.0.0.1:{port}/{file}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(fetch(port_a, "a.txt").contains("by port"));
    assert!(fetch(port_b, "b.txt").contains("forked child"));
    assert!(child_b > 1 && child_b < 1000, "{child_b}");
    assert!(fetch(port_c, "c.txt").contains("outside"));
    let (_, out) = curl(&["-k", &format!("https://127.0.0.1:{port_d}/d.txt")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("over TLS"));

    let mut log = EventLog::new(&p);
    log.until(
        "closed connections of servers A and B",
        PATIENCE,
        |events| {
            closed_connections(events, server_a) == 1
                && closed_connections(events, child_b) == 1
                && closed_connections(events, server_d) == 1
        },
    );
    log.settle(Duration::from_millis(500));
    let events = &log.events;

    // Processes, by their pids in the namespace.
    let started = |pid: i64| {
        events
            .iter()
            .find(|e| kind(e) == "process_started" && pid_of(e) == pid)
            .unwrap_or_else(|| {
                panic!(
                    "no process_started for {pid}:\n{}\nnamespace stderr:\n{}",
                    dump(events),
                    ns.stderr.text()
                )
            })
    };
    let a = started(server_a);
    assert_eq!(a["preexisting"], true, "{a}");
    assert!(str_field(a, "exe_path").contains("python"), "{a}");
    // (Server B itself has no connection, so the hub never learns its port and
    // does not route its own process_started to this subscriber.)
    let child = started(child_b);
    assert_eq!(child["preexisting"], false, "{child}");
    assert_eq!(child["ppid"], server_b, "{child}");
    assert!(str_field(child, "exe_path").contains("python"), "{child}");

    let conns_a = connections(events, server_a);
    assert_eq!(conns_a.len(), 1, "{}", dump(events));
    assert_served(
        conns_a.values().next().expect("A's connection"),
        port_a,
        "/a.txt",
        "served inside the namespace, by port",
    );
    let conns_b = connections(events, child_b);
    assert_eq!(conns_b.len(), 1, "{}", dump(events));
    assert_served(
        conns_b.values().next().expect("B's connection"),
        port_b,
        "/b.txt",
        "served by a forked child",
    );
    let conns_d = connections(events, server_d);
    assert_eq!(conns_d.len(), 1, "{}", dump(events));
    assert_served(
        conns_d.values().next().expect("D's connection"),
        port_d,
        "/d.txt",
        "served over TLS inside the namespace",
    );
    for e in events {
        if matches!(kind(e), "connection_opened" | "data" | "connection_closed") {
            assert!(
                [server_a, child_b, server_d].contains(&pid_of(e)),
                "only the namespace's selected servers are traced (not curl outside it, \
                 not server C): {e}\n{}",
                dump(events)
            );
        }
        assert_ne!(
            pid_of(e),
            i64::from(server_c.pid()),
            "server C (outside) is not traced: {e}"
        );
        assert!(
            !str_field(e, "local").ends_with(&format!(":{port_c}")),
            "nothing on port {port_c}: {e}"
        );
    }
    assert!(events.iter().all(|e| kind(e) != "loss"), "{}", dump(events));
    drop(p);
    drop(server_c);
    drop(ns);
}

#[test]
fn the_loader_logs_the_initial_pid_namespace() {
    let test = "the_loader_logs_the_initial_pid_namespace";
    if !require_root_bpf(test) {
        return;
    }
    // Only meaningful when the test itself runs in the initial namespace.
    let ino = std::fs::metadata("/proc/self/ns/pid").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    if ino.ok() != Some(0xEFFF_FFFC) {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("SKIP {test}: not in the initial pid namespace\n").as_bytes(),
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket: &Path = &dir.path().join("loader.sock");
    let loader = start_ebpf_loader(socket, &[]);
    let line = loader.stderr.wait_for("pid namespace", PATIENCE);
    assert!(line.contains("pid namespace: initial"), "{line}");
}
