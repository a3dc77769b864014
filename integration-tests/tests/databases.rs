//! Issue 7 (databases): real PostgreSQL and Redis servers, real clients (`psql`,
//! `pgbench`, `redis-cli`, `redis-benchmark`), the real eBPF loader selecting the
//! database's port, the processor exporting to the real OTLP receiver; the spans'
//! names and attributes are asserted exactly, on both the client side (CLIENT spans
//! of the client tools) and the server side (SERVER spans of the database).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_integration_tests::db::{chown_nobody, pg_bin, run, start_redis, Postgres};
use tandem_integration_tests::otlp::{
    latest_count, spans, start_exporting_processor, write_config, Protocol, Receiver,
};
use tandem_integration_tests::{
    free_port, require_root_bpf, start_loader, wait_instrumenting, wait_listening, Running,
    PATIENCE,
};

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const STATUS_ERROR: i64 = 2;
const EXPORT_PATIENCE: Duration = Duration::from_secs(30);
/// A loader with eBPF, a receiver, a processor selecting `port`, exporting to the
/// receiver (gRPC, metrics every second).
struct Capture {
    _loader: Running,
    processor: Running,
    receiver: Receiver,
}

impl Capture {
    fn start(dir: &Path, port: u16) -> Capture {
        let socket = dir.join("run").join("loader.sock");
        let loader = start_loader(&socket, &["--source", "ebpf"]);
        loader.stderr.wait_for("ebpf source ready", PATIENCE);
        let receiver = Receiver::start();
        let config = write_config(dir, "routes:\n  patterns:\n    - /unused\n");
        let env = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                receiver.endpoint(Protocol::Grpc),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
            ("OTEL_EBPF_OPEN_PORT", port.to_string()),
        ];
        let processor = start_exporting_processor(&socket, "databases", &config, &env);
        wait_instrumenting(&loader, &format!("ports {port}"));
        Capture {
            _loader: loader,
            processor,
            receiver,
        }
    }

    /// Waits until `done(spans)` holds.
    fn until(&mut self, what: &str, done: impl Fn(&[&Value]) -> bool) {
        let logs = self.processor.stderr.text();
        self.receiver.until(
            what,
            EXPORT_PATIENCE,
            &|| format!("processor stderr:\n{logs}"),
            |r| done(&spans(r)),
        );
    }
}

fn by<'a>(all: &[&'a Value], kind: i64, pid: i64) -> Vec<&'a Value> {
    all.iter()
        .copied()
        .filter(|s| s["kind"] == kind && s["resource"]["process.pid"] == pid)
        .collect()
}

fn names(spans: &[&Value]) -> Vec<String> {
    spans
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn pg_attributes(op: &str, table: &str, text: &str, port: u16) -> Value {
    json!({
        "db.system.name": "postgresql",
        "db.namespace": "postgres",
        "db.operation.name": op,
        "db.collection.name": table,
        "db.query.text": text,
        "server.address": "127.0.0.1",
        "server.port": port,
        "network.peer.address": "127.0.0.1",
        "network.peer.port": port,
    })
}

#[test]
fn postgres_psql_and_pgbench_spans() {
    if !require_root_bpf("postgres_psql_and_pgbench_spans") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = Postgres::start(dir.path());
    let mut cap = Capture::start(dir.path(), pg.port);

    let (psql_pid, out) = pg.psql(&[
        "CREATE TABLE users (id int, name text)",
        "INSERT INTO users VALUES (1, 'alice'), (2, 'bob')",
        "SELECT name FROM users WHERE id = 2",
        "SELECT * FROM nope",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bob"),
        "psql: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("relation \"nope\" does not exist"),
        "psql: {out:?}"
    );
    cap.until("psql's four CLIENT spans", |s| {
        by(s, CLIENT, psql_pid).len() >= 4
    });
    let all = cap.receiver.spans();
    let client = by(&all, CLIENT, psql_pid);
    assert_eq!(
        names(&client),
        [
            "CREATE users",
            "INSERT users",
            "SELECT users",
            "SELECT nope"
        ],
        "{}",
        cap.receiver.dump()
    );
    let port = pg.port;
    assert_eq!(
        client[0]["attributes"],
        pg_attributes(
            "CREATE",
            "users",
            "CREATE TABLE users (id int, name text)",
            port
        )
    );
    assert_eq!(
        client[1]["attributes"],
        pg_attributes(
            "INSERT",
            "users",
            "INSERT INTO users VALUES (?, ?), (?, ?)",
            port
        )
    );
    assert_eq!(
        client[2]["attributes"],
        pg_attributes(
            "SELECT",
            "users",
            "SELECT name FROM users WHERE id = ?",
            port
        )
    );
    let mut failed = pg_attributes("SELECT", "nope", "SELECT * FROM nope", port);
    failed["db.response.status_code"] = json!("42P01");
    failed["error.type"] = json!("42P01");
    assert_eq!(client[3]["attributes"], failed);
    assert_eq!(client[3]["status"], STATUS_ERROR);
    assert_eq!(
        client[3]["status_message"],
        "relation \"nope\" does not exist"
    );
    for s in &client[..3] {
        assert_eq!(s["status"], 0, "{s}");
    }
    for s in &client {
        assert!(s["start"].as_u64() <= s["end"].as_u64(), "{s}");
        assert_eq!(s["parent_span_id"], "", "{s}");
    }

    // The server side: the postgres backend that served psql reports the same
    // operations as SERVER spans.
    cap.until("the backend's SERVER spans", |s| {
        s.iter()
            .filter(|x| x["kind"] == SERVER && x["name"] == "SELECT nope")
            .count()
            >= 1
    });
    let all = cap.receiver.spans();
    let server: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|s| s["kind"] == SERVER)
        .collect();
    let backend = server
        .iter()
        .find(|s| s["name"] == "SELECT nope")
        .map(|s| s["resource"]["process.pid"].clone())
        .expect("backend pid");
    let backend_spans: Vec<&Value> = server
        .iter()
        .copied()
        .filter(|s| s["resource"]["process.pid"] == backend)
        .collect();
    assert_eq!(
        names(&backend_spans),
        [
            "CREATE users",
            "INSERT users",
            "SELECT users",
            "SELECT nope"
        ]
    );
    let peer_port = backend_spans[0]["attributes"]["network.peer.port"].clone();
    assert!(peer_port.as_i64().is_some_and(|p| p != i64::from(port)));
    let mut want = pg_attributes(
        "SELECT",
        "users",
        "SELECT name FROM users WHERE id = ?",
        port,
    );
    want["network.peer.port"] = peer_port;
    assert_eq!(backend_spans[2]["attributes"], want);
    assert_eq!(backend_spans[3]["status"], STATUS_ERROR);

    // A result far larger than the capture (rows, CommandComplete and ReadyForQuery
    // hidden in uncaptured bytes, over several writes), then a small query on the
    // same connection: both are reported, the second paired with its own answer.
    let (big_pid, out) = pg.psql(&[
        "SELECT g, 'some padding text' FROM generate_series(1, 20000) AS g",
        "SELECT name FROM users WHERE id = 1",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("alice"),
        "psql: {out:?}"
    );
    cap.until("the big result's psql spans", |s| {
        by(s, CLIENT, big_pid).len() >= 2
    });
    let all = cap.receiver.spans();
    let big = by(&all, CLIENT, big_pid);
    assert_eq!(names(&big), ["SELECT", "SELECT users"]);
    assert_eq!(big[0]["status"], 0, "{}", big[0]);
    assert_eq!(
        big[1]["attributes"],
        pg_attributes(
            "SELECT",
            "users",
            "SELECT name FROM users WHERE id = ?",
            port
        )
    );
    assert_eq!(big[1]["status"], 0, "{}", big[1]);
    assert!(big[0]["end"].as_u64() <= big[1]["start"].as_u64());

    // pgbench, extended protocol: Parse/Bind/Describe/Execute/Sync per statement,
    // the parameter as $1 (and the script's `;`, which pgbench sends).
    let script = dir.path().join("select.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 2)\nSELECT name FROM users WHERE id = :id;\n",
    )
    .expect("write pgbench script");
    let (bench_pid, bench) = pgbench_select_users(&mut cap, port, &script, "extended", 5, 5);
    for s in &bench {
        assert_eq!(s["status"], 0, "{s}");
    }

    // The duration metric counts every operation of pgbench.
    let attrs = json!({
        "db.system.name": "postgresql",
        "db.namespace": "postgres",
        "db.operation.name": "SELECT",
        "db.collection.name": "users",
    });
    let records = &mut cap.receiver;
    let logs = cap.processor.stderr.text();
    records.until(
        "db.client.operation.duration of pgbench",
        EXPORT_PATIENCE,
        &|| logs.clone(),
        |r| latest_count(r, "db.client.operation.duration", bench_pid, &attrs) == 5,
    );

    // pgbench -M prepared: one Parse (named statement) per connection, then
    // Bind/Execute/Sync by name only: the executions are still named from the
    // remembered statement. The prepare itself (Parse, Sync) is an operation too.
    pgbench_select_users(&mut cap, port, &script, "prepared", 3, 4);
}

/// Runs `pgbench -M mode -t transactions` of `script` (a `SELECT name FROM users
/// WHERE id = :id;`) and waits for exactly `spans` CLIENT spans of it, each named
/// `SELECT users` with the PostgreSQL attributes: (pgbench's pid, its spans).
fn pgbench_select_users(
    cap: &mut Capture,
    port: u16,
    script: &Path,
    mode: &str,
    transactions: u32,
    spans: usize,
) -> (i64, Vec<Value>) {
    let mut cmd = Command::new(pg_bin("pgbench"));
    cmd.args(["-n", "-M", mode, "-c", "1", "-t", &transactions.to_string()])
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            "-f",
        ])
        .arg(script)
        .arg("postgres");
    let (pid, out) = run(cmd);
    assert!(out.status.success(), "pgbench -M {mode}: {out:?}");
    cap.until(&format!("pgbench -M {mode}'s {spans} CLIENT spans"), |s| {
        by(s, CLIENT, pid).len() >= spans
    });
    cap.receiver.settle(Duration::from_millis(1500));
    let all = cap.receiver.spans();
    let mine: Vec<Value> = by(&all, CLIENT, pid).into_iter().cloned().collect();
    assert_eq!(mine.len(), spans, "{}", cap.receiver.dump());
    for s in &mine {
        assert_eq!(s["name"], "SELECT users", "{s}");
        assert_eq!(
            s["attributes"],
            pg_attributes(
                "SELECT",
                "users",
                "SELECT name FROM users WHERE id = $1;",
                port
            )
        );
    }
    (pid, mine)
}

fn redis_cli(port: u16, args: &[&str]) -> (i64, std::process::Output) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    run(cmd)
}

fn redis_attributes(op: &str, text: &str, port: u16) -> Value {
    json!({
        "db.system.name": "redis",
        "db.operation.name": op,
        "db.query.text": text,
        "server.address": "127.0.0.1",
        "server.port": port,
        "network.peer.address": "127.0.0.1",
        "network.peer.port": port,
    })
}

#[test]
fn redis_cli_and_benchmark_spans() {
    if !require_root_bpf("redis_cli_and_benchmark_spans") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _server = start_redis(port);
    let mut cap = Capture::start(dir.path(), port);

    let (set_pid, out) = redis_cli(port, &["SET", "user:1", "alice"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let (get_pid, out) = redis_cli(port, &["GET", "user:1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");
    let (incr_pid, out) = redis_cli(port, &["INCR", "user:1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ERR value is not an integer"),
        "{out:?}"
    );
    cap.until("redis-cli's three CLIENT spans", |s| {
        [set_pid, get_pid, incr_pid]
            .iter()
            .all(|p| !by(s, CLIENT, *p).is_empty())
    });
    let all = cap.receiver.spans();
    let one = |pid: i64| -> &Value {
        let v = by(&all, CLIENT, pid);
        assert_eq!(v.len(), 1, "{}", cap.receiver.dump());
        v[0]
    };
    let set = one(set_pid);
    assert_eq!(set["name"], "SET");
    assert_eq!(
        set["attributes"],
        redis_attributes("SET", "SET user:1 ?", port)
    );
    assert_eq!(set["status"], 0);
    let get = one(get_pid);
    assert_eq!(get["name"], "GET");
    assert_eq!(
        get["attributes"],
        redis_attributes("GET", "GET user:1", port)
    );
    let incr = one(incr_pid);
    assert_eq!(incr["name"], "INCR");
    let mut failed = redis_attributes("INCR", "INCR user:1", port);
    failed["db.response.status_code"] = json!("ERR");
    failed["error.type"] = json!("ERR");
    assert_eq!(incr["attributes"], failed);
    assert_eq!(incr["status"], STATUS_ERROR);
    assert_eq!(
        incr["status_message"],
        "ERR value is not an integer or out of range"
    );
    // The server side: redis-server's SERVER spans for the same commands.
    let server_names: Vec<String> = names(
        &all.iter()
            .copied()
            .filter(|s| s["kind"] == SERVER)
            .collect::<Vec<_>>(),
    );
    for n in ["SET", "GET", "INCR"] {
        assert!(server_names.iter().any(|s| s == n), "{server_names:?}");
    }

    // redis-benchmark: 10 SETs then 10 GETs on one connection.
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "set,get", "-n", "10", "-c", "1", "-q"]);
    let (bench_pid, out) = run(cmd);
    assert!(out.status.success(), "redis-benchmark: {out:?}");
    cap.until("redis-benchmark's 20 CLIENT spans", |s| {
        by(s, CLIENT, bench_pid)
            .iter()
            .filter(|x| x["name"] == "SET" || x["name"] == "GET")
            .count()
            >= 20
    });
    cap.receiver.settle(Duration::from_millis(1500));
    let all = cap.receiver.spans();
    let bench = by(&all, CLIENT, bench_pid);
    let sets: Vec<&&Value> = bench.iter().filter(|s| s["name"] == "SET").collect();
    let gets: Vec<&&Value> = bench.iter().filter(|s| s["name"] == "GET").collect();
    assert_eq!(
        (sets.len(), gets.len()),
        (10, 10),
        "{}",
        cap.receiver.dump()
    );
    for s in sets {
        assert_eq!(
            s["attributes"],
            redis_attributes("SET", "SET key:__rand_int__ ?", port)
        );
    }
    for s in gets {
        assert_eq!(
            s["attributes"],
            redis_attributes("GET", "GET key:__rand_int__", port)
        );
    }
}

/// A MariaDB server of its own (no grant tables: any client is root), in a temp dir.
fn start_mariadb(dir: &Path, port: u16) -> Running {
    let data = dir.join("mysql");
    chown_nobody(dir);
    let out = Command::new("mariadb-install-db")
        .args(["--no-defaults", "--user=nobody", "--skip-test-db"])
        .arg(format!("--datadir={}", data.display()))
        .output()
        .expect("run mariadb-install-db (scripts/setup.sh: mariadb-server)");
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new("mariadbd");
    cmd.args([
        "--no-defaults".to_string(),
        format!("--datadir={}", data.display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".to_string(),
        format!("--socket={}", dir.join("mysql.sock").display()),
        "--user=nobody".to_string(),
        "--skip-grant-tables".to_string(),
        "--skip-log-bin".to_string(),
    ]);
    let mut server = Running::spawn(cmd, "mariadbd");
    wait_listening(&mut server, port, PATIENCE);
    server
}

fn mysql_attributes(op: &str, table: &str, text: &str, port: u16) -> Value {
    json!({
        "db.system.name": "mysql",
        "db.operation.name": op,
        "db.collection.name": table,
        "db.query.text": text,
        "server.address": "127.0.0.1",
        "server.port": port,
        "network.peer.address": "127.0.0.1",
        "network.peer.port": port,
    })
}

#[test]
fn mariadb_client_and_slap_spans() {
    if !require_root_bpf("mariadb_client_and_slap_spans") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut server = start_mariadb(dir.path(), port);
    let mut cap = Capture::start(dir.path(), port);
    let client = |sql: &str| {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "-P",
            &port.to_string(),
            "-e",
            sql,
        ]);
        run(cmd)
    };
    let (pid, out) = client(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id int, name text); \
         INSERT INTO shop.items VALUES (1, 'pen'); SELECT name FROM shop.items WHERE id = 1",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pen"),
        "mariadb: {out:?}"
    );
    let (err_pid, out) = client("SELECT * FROM shop.nope");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR 1146"),
        "mariadb: {out:?}"
    );
    cap.until("the mariadb clients' CLIENT spans", |s| {
        by(s, CLIENT, pid).len() >= 4 && !by(s, CLIENT, err_pid).is_empty()
    });
    cap.receiver.settle(Duration::from_millis(1500));
    let all = cap.receiver.spans();
    let spans = by(&all, CLIENT, pid);
    assert_eq!(
        names(&spans),
        [
            "CREATE",
            "CREATE shop.items",
            "INSERT shop.items",
            "SELECT shop.items"
        ],
        "{}",
        cap.receiver.dump()
    );
    assert_eq!(
        spans[2]["attributes"],
        mysql_attributes(
            "INSERT",
            "shop.items",
            "INSERT INTO shop.items VALUES (?, ?)",
            port
        )
    );
    assert_eq!(
        spans[3]["attributes"],
        mysql_attributes(
            "SELECT",
            "shop.items",
            "SELECT name FROM shop.items WHERE id = ?",
            port
        )
    );
    for s in &spans {
        assert_eq!(s["status"], 0, "{s}");
    }
    let failed = by(&all, CLIENT, err_pid);
    assert_eq!(names(&failed), ["SELECT shop.nope"]);
    let mut want = mysql_attributes("SELECT", "shop.nope", "SELECT * FROM shop.nope", port);
    want["db.response.status_code"] = json!("1146");
    want["error.type"] = json!("1146");
    assert_eq!(failed[0]["attributes"], want);
    assert_eq!(failed[0]["status"], STATUS_ERROR);
    assert_eq!(
        failed[0]["status_message"],
        "Table 'shop.nope' doesn't exist"
    );
    // The server side: mariadbd's SERVER spans.
    let server_spans: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|s| s["kind"] == SERVER && s["resource"]["process.pid"] == i64::from(server.pid()))
        .collect();
    assert!(
        names(&server_spans).iter().any(|n| n == "SELECT shop.nope"),
        "{}",
        cap.receiver.dump()
    );

    // mariadb-slap: the same query 5 times on one connection (in a thread).
    let mut cmd = Command::new("mariadb-slap");
    cmd.args(["-h", "127.0.0.1", "-u", "root", "-P", &port.to_string()])
        .args([
            "--create-schema=shop",
            "--no-drop",
            "--iterations=1",
            "--concurrency=1",
        ])
        .args([
            "--number-of-queries=5",
            "--query=SELECT name FROM shop.items WHERE id = 1",
        ]);
    let (slap_pid, out) = run(cmd);
    // mariadb-slap exits 0 even when it cannot connect: look at its stderr too.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "mariadb-slap: {out:?}"
    );
    fn is_select(s: &&Value) -> bool {
        s["name"] == "SELECT shop.items"
    }
    cap.until("mariadb-slap's five SELECT spans", |s| {
        by(s, CLIENT, slap_pid)
            .iter()
            .filter(|v| is_select(v))
            .count()
            >= 5
    });
    cap.receiver.settle(Duration::from_millis(1500));
    let all = cap.receiver.spans();
    let selects: Vec<&Value> = by(&all, CLIENT, slap_pid)
        .into_iter()
        .filter(is_select)
        .collect();
    assert_eq!(selects.len(), 5, "{}", cap.receiver.dump());
    // mariadb-slap connects with a database: `db.namespace`.
    let mut want = mysql_attributes(
        "SELECT",
        "shop.items",
        "SELECT name FROM shop.items WHERE id = ?",
        port,
    );
    want["db.namespace"] = json!("shop");
    for s in selects {
        assert_eq!(s["attributes"], want);
    }
    server.stop();
}
