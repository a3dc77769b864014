//! Issue 15, goroutine-aware linking: a Go net/http HTTPS front end (the seeds'
//! `goblog` shape) whose handlers call a Go downstream over HTTP. The client call
//! is written by the connection's writer goroutine, not the handler's: the loader
//! names the goroutine that called `roundTrip` (and the goroutine that created
//! it), and the processor makes the client span a child of the server request in
//! flight on that goroutine — with several requests in flight at once, each call
//! under its own request, also from a goroutine the handler starts.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_integration_tests::db::Postgres;
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::*;

/// `tiers front PORT CERT KEY DOWN_PORT`: HTTPS; `/front/N` calls
/// `http://127.0.0.1:DOWN_PORT/down/N` itself, `/spawn/N` from a goroutine it
/// starts (and waits for). `tiers down PORT`: plain HTTP; `/down/N` answers after
/// 150 ms (so that front requests overlap). `tiers pg PORT PG_PORT`: plain HTTP;
/// `/pg/N` runs one query through database/sql (lib/pq, Debian's
/// `golang-github-lib-pq-dev`), whose driver writes in the calling goroutine.
const TIERS: &str = r#"package main

import (
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	_ "github.com/lib/pq"
)

func call(down, n string) string {
	r, err := http.Get("http://127.0.0.1:" + down + "/down/" + n)
	if err != nil {
		return err.Error()
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

func main() {
	switch os.Args[1] {
	case "pg":
		db, err := sql.Open("postgres", "host=127.0.0.1 port="+os.Args[3]+" user=postgres dbname=postgres sslmode=disable")
		if err != nil {
			panic(err)
		}
		http.HandleFunc("/pg/", func(w http.ResponseWriter, r *http.Request) {
			var name string
			err := db.QueryRow("SELECT relname FROM pg_class WHERE relname = 'pg_type'").Scan(&name)
			fmt.Fprint(w, name, err)
		})
		fmt.Println(http.ListenAndServe("127.0.0.1:"+os.Args[2], nil))
	case "down":
		http.HandleFunc("/down/", func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(150 * time.Millisecond)
			fmt.Fprint(w, "down "+strings.TrimPrefix(r.URL.Path, "/down/"))
		})
		fmt.Println(http.ListenAndServe("127.0.0.1:"+os.Args[2], nil))
	case "front":
		down := os.Args[5]
		http.HandleFunc("/front/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, call(down, strings.TrimPrefix(r.URL.Path, "/front/")))
		})
		http.HandleFunc("/spawn/", func(w http.ResponseWriter, r *http.Request) {
			done := make(chan string)
			go func() { done <- call(down, strings.TrimPrefix(r.URL.Path, "/spawn/")) }()
			fmt.Fprint(w, <-done)
		})
		fmt.Println(http.ListenAndServeTLS("127.0.0.1:"+os.Args[2], os.Args[3], os.Args[4], nil))
	}
}
"#;

fn str_of<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or("")
}

fn path_of(span: &Value) -> &str {
    span["attributes"]["url.path"].as_str().unwrap_or("")
}

/// The one span of `pid` and `kind` (2 server, 3 client) for `path`.
fn one<'a>(spans: &[&'a Value], pid: i64, kind: i64, path: &str) -> &'a Value {
    let found: Vec<&&Value> = spans
        .iter()
        .filter(|s| s["kind"] == kind && s["resource"]["process.pid"] == pid && path_of(s) == path)
        .collect();
    match found.as_slice() {
        [s] => s,
        _ => panic!(
            "want one span (pid {pid}, kind {kind}, {path}), found {}:\n{}",
            found.len(),
            spans
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn assert_child(child: &Value, parent: &Value, what: &str) {
    assert_eq!(
        (str_of(child, "trace_id"), str_of(child, "parent_span_id")),
        (str_of(parent, "trace_id"), str_of(parent, "span_id")),
        "{what}: wrong parent\nchild {child}\nparent {parent}"
    );
}

#[test]
fn go_client_calls_are_children_of_the_request_their_goroutine_serves() {
    let test = "go_client_calls_are_children_of_the_request_their_goroutine_serves";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = golang::build(dir.path(), TIERS, "goblog", "");
    let (front_port, down_port) = (free_port(), free_port());
    let socket = dir.path().join("loader.sock");
    let loader = start_unprivileged_ebpf_loader(&loader_caps(), dir.path(), &socket, &[]);
    let mut receiver = Receiver::start();
    let config = write_config(
        dir.path(),
        "routes:\n  patterns:\n    - /front/{n}\n    - /spawn/{n}\n    - /down/{n}\n",
    );
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            receiver.endpoint(Protocol::Grpc),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_EBPF_OPEN_PORT", format!("{front_port},{down_port}")),
    ];
    let mut exporter = start_exporting_processor(&socket, test, &config, &env);
    wait_instrumenting(&loader, &front_port.to_string());

    let mut cmd = Command::new(&bin);
    cmd.args(["down", &down_port.to_string()]);
    let mut down = Running::spawn(cmd, &format!("go downstream :{down_port}"));
    wait_listening(&mut down, down_port, PATIENCE);
    let (cert, key) = make_certificate(dir.path());
    let mut cmd = Command::new(&bin);
    cmd.arg("front")
        .arg(front_port.to_string())
        .arg(&cert)
        .arg(&key)
        .arg(down_port.to_string());
    let mut front = Running::spawn(cmd, &format!("go front end :{front_port}"));
    wait_listening(&mut front, front_port, PATIENCE);
    let (front_pid, down_pid) = (i64::from(front.pid()), i64::from(down.pid()));
    let url = |path: &str| format!("https://127.0.0.1:{front_port}{path}");

    // The first request selects the front end; the probes are attached at its
    // first connection.
    let _ = curl_with(&url("/warm-up"), &["-k", "--http1.1"]);
    loader
        .stderr
        .wait_for("Go goroutines uprobes attached", PATIENCE);
    std::thread::sleep(Duration::from_millis(300));

    // Three at once (each waits 150 ms downstream, so they overlap), then one whose
    // handler calls from a goroutine it starts.
    let paths = ["/front/1", "/front/2", "/front/3"];
    let runs: Vec<_> = paths
        .iter()
        .map(|p| {
            let u = url(p);
            std::thread::spawn(move || curl_with(&u, &["-k", "--http1.1"]))
        })
        .collect();
    for (run, p) in runs.into_iter().zip(paths) {
        let run = run.join().expect("curl thread");
        let n = p.rsplit('/').next().unwrap_or_default();
        assert_eq!((run.status, run.body), (200, format!("down {n}")), "{p}");
    }
    let spawned = curl_with(&url("/spawn/4"), &["-k", "--http1.1"]);
    assert_eq!((spawned.status, spawned.body.as_str()), (200, "down 4"));

    receiver.until(
        "four linked calls",
        Duration::from_secs(30),
        &|| stderr_of(&[("loader", &loader), ("processor", &exporter)]),
        |r| {
            let s = spans(r);
            (1..=4).all(|n| {
                s.iter().any(|s| {
                    s["kind"] == 2
                        && s["resource"]["process.pid"] == down_pid
                        && path_of(s) == format!("/down/{n}")
                })
            }) && ["/front/1", "/front/2", "/front/3", "/spawn/4"]
                .iter()
                .all(|p| {
                    s.iter().any(|s| {
                        s["kind"] == 2
                            && s["resource"]["process.pid"] == front_pid
                            && path_of(s) == *p
                    })
                })
                && (1..=4).all(|n| {
                    s.iter().any(|s| {
                        s["kind"] == 3
                            && s["resource"]["process.pid"] == front_pid
                            && path_of(s) == format!("/down/{n}")
                    })
                })
        },
    );
    let all = spans(&receiver.records);
    for (front_path, n) in [
        ("/front/1", 1),
        ("/front/2", 2),
        ("/front/3", 3),
        ("/spawn/4", 4),
    ] {
        let server = one(&all, front_pid, 2, front_path);
        let call = one(&all, front_pid, 3, &format!("/down/{n}"));
        let downstream = one(&all, down_pid, 2, &format!("/down/{n}"));
        assert_child(call, server, &format!("the call of {front_path}"));
        assert_child(downstream, call, &format!("the downstream of {front_path}"));
        assert_eq!(server["resource"]["service.name"], "goblog", "{server}");
        assert_eq!(call["attributes"]["server.port"], down_port, "{call}");
    }
    let summary = stop_and_summary(&mut exporter);
    assert!(
        summary.contains("client spans 0 by thread, 4 by goroutine,"),
        "{summary}"
    );
}

/// database/sql (lib/pq) from a net/http handler: the PostgreSQL client spans are
/// children of the request's server span (the driver writes on the handler's
/// goroutine, which resumes on any thread).
#[test]
fn go_database_sql_calls_are_children_of_the_request() {
    let test = "go_database_sql_calls_are_children_of_the_request";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(dir.path());
    let bin = golang::build(dir.path(), TIERS, "goblog", "");
    let port = free_port();
    let socket = dir.path().join("loader.sock");
    let loader = start_unprivileged_ebpf_loader(&loader_caps(), dir.path(), &socket, &[]);
    let mut receiver = Receiver::start();
    let config = write_config(dir.path(), "routes:\n  patterns:\n    - /pg/{n}\n");
    let env = grpc_export_env(&receiver, port);
    let mut exporter = start_exporting_processor(&socket, test, &config, &env);
    wait_instrumenting(&loader, &port.to_string());
    let mut cmd = Command::new(&bin);
    cmd.args(["pg", &port.to_string(), &pg.port.to_string()]);
    let mut server = Running::spawn(cmd, &format!("go database/sql service :{port}"));
    wait_listening(&mut server, port, PATIENCE);
    let pid = i64::from(server.pid());
    let url = |n: u32| format!("http://127.0.0.1:{port}/pg/{n}");
    let warm = curl_with(&url(0), &[]);
    assert_eq!((warm.status, warm.body.as_str()), (200, "pg_type<nil>"));
    loader
        .stderr
        .wait_for("Go goroutines uprobes attached", PATIENCE);
    std::thread::sleep(Duration::from_millis(300));
    for n in 1..=3 {
        let run = curl_with(&url(n), &[]);
        assert_eq!((run.status, run.body.as_str()), (200, "pg_type<nil>"));
    }
    let is_select = |s: &Value| {
        s["resource"]["process.pid"] == pid
            && s["attributes"]["db.system.name"] == "postgresql"
            && s["attributes"]["db.operation.name"] == "SELECT"
    };
    receiver.until(
        "three requests and their SELECTs",
        Duration::from_secs(30),
        &|| stderr_of(&[("loader", &loader), ("processor", &exporter)]),
        |r| {
            let s = spans(r);
            (1..=3).all(|n| {
                s.iter()
                    .any(|s| s["kind"] == 2 && path_of(s) == format!("/pg/{n}"))
            }) && s.iter().filter(|s| is_select(s)).count() >= 4
        },
    );
    let all = spans(&receiver.records);
    for n in 1..=3 {
        let server = one(&all, pid, 2, &format!("/pg/{n}"));
        let selects: Vec<&&Value> = all
            .iter()
            .filter(|s| is_select(s) && str_of(s, "trace_id") == str_of(server, "trace_id"))
            .collect();
        assert_eq!(selects.len(), 1, "/pg/{n}: {}", receiver.dump());
        assert_child(selects[0], server, &format!("the SELECT of /pg/{n}"));
        assert_eq!(
            selects[0]["attributes"]["db.query.text"],
            "SELECT relname FROM pg_class WHERE relname = ?",
            "{}",
            selects[0]
        );
    }
    let summary = stop_and_summary(&mut exporter);
    assert!(summary.contains(" by goroutine,"), "{summary}");
}
