//! Issue 15: grpc-go (Debian's `golang-google-grpc-dev`) over TLS — HTTP/2 on Go's
//! crypto/tls, server and client in Go: RPC spans of both ends with exact
//! attributes, and the RPC server metric.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::*;

/// One binary for both ends: `grpc server PORT CERT KEY` serves the standard health
/// service; `grpc client PORT` calls `grpc.health.v1.Health/Check` for the services
/// `""` (SERVING) and `missing` (NOT_FOUND) over one TLS connection.
const GRPC: &str = r#"package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	switch os.Args[1] {
	case "server":
		creds, err := credentials.NewServerTLSFromFile(os.Args[3], os.Args[4])
		if err != nil {
			panic(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:"+os.Args[2])
		if err != nil {
			panic(err)
		}
		s := grpc.NewServer(grpc.Creds(creds))
		healthpb.RegisterHealthServer(s, health.NewServer())
		fmt.Println("listening")
		panic(s.Serve(lis))
	case "client":
		creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := grpc.DialContext(ctx, "127.0.0.1:"+os.Args[2], grpc.WithTransportCredentials(creds), grpc.WithBlock())
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		for _, svc := range []string{"", "missing"} {
			r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			fmt.Printf("%q %v %v\n", svc, r.GetStatus(), err)
		}
	}
}
"#;

fn spans_of(records: &[Value], kind: i64, pid: Option<i64>) -> Vec<&Value> {
    spans(records)
        .into_iter()
        .filter(|s| {
            s["kind"] == kind
                && s["attributes"]["rpc.method"] == "Check"
                && pid.is_none_or(|p| s["resource"]["process.pid"] == p)
        })
        .collect()
}

#[test]
fn grpc_go_over_tls_gives_rpc_spans_and_metrics() {
    let test = "grpc_go_over_tls_gives_rpc_spans_and_metrics";
    if !require_root_bpf(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = golang::build(dir.path(), GRPC, "grpcdemo", "");
    let port = free_port();
    let socket = dir.path().join("loader.sock");
    let loader = start_unprivileged_ebpf_loader(&loader_caps(), dir.path(), &socket, &[]);
    let mut receiver = Receiver::start();
    let config = write_config(dir.path(), "routes:\n  unmatched: path\n");
    let mut env = grpc_export_env(&receiver, port);
    env.push(("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()));
    let exporter = start_exporting_processor(&socket, test, &config, &env);
    wait_instrumenting(&loader, &format!("ports {port}"));
    let (cert, key) = make_certificate(dir.path());
    let mut cmd = Command::new(&bin);
    cmd.args(["server", &port.to_string()]).arg(&cert).arg(&key);
    let mut server = Running::spawn(cmd, &format!("grpc-go server :{port}"));
    wait_listening(&mut server, port, PATIENCE);
    let client = |what: &str| -> i64 {
        let child = Command::new(&bin)
            .args(["client", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the grpc-go client");
        let pid = i64::from(child.id());
        let out = child.wait_with_output().expect("wait for the client");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("\"\" SERVING <nil>"), "{what}: {text}");
        assert!(text.contains("NotFound"), "{what}: {text}");
        pid
    };
    // The first client's connection selects the server and has its binary probed
    // (on the file: the clients, the same binary, are probed from their start).
    client("warm-up");
    loader
        .stderr
        .wait_for("Go crypto/tls uprobes attached", PATIENCE);
    let client_pid = client("measured");
    let pid = i64::from(server.pid());
    let status_of = |s: &Value| s["attributes"]["rpc.grpc.status_code"].as_i64();
    receiver.until(
        "the measured client's RPC spans at both ends",
        Duration::from_secs(30),
        &|| stderr_of(&[("loader", &loader), ("processor", &exporter)]),
        |r| {
            [(2, pid), (3, client_pid)].iter().all(|(kind, p)| {
                let s = spans_of(r, *kind, Some(*p));
                s.iter().any(|s| status_of(s) == Some(0))
                    && s.iter().any(|s| status_of(s) == Some(5))
            })
        },
    );
    for (kind, p) in [(2, pid), (3, client_pid)] {
        let all = spans_of(&receiver.records, kind, Some(p));
        let ok = all
            .iter()
            .find(|s| status_of(s) == Some(0))
            .expect("the SERVING call");
        let a = &ok["attributes"];
        assert_eq!(ok["name"], "/grpc.health.v1.Health/Check", "{ok}");
        assert_eq!(a["rpc.system"], "grpc", "{ok}");
        assert_eq!(a["rpc.service"], "grpc.health.v1.Health", "{ok}");
        assert_eq!(a["server.port"], port, "{ok}");
    }
    // The server's resource (a short-lived client may be reported before its
    // process facts: issue 17).
    let server_span = spans_of(&receiver.records, 2, Some(pid))[0];
    assert_eq!(
        server_span["resource"]["service.name"], "grpcdemo",
        "{server_span}"
    );
    receiver.until(
        "rpc.server.call.duration of the NOT_FOUND Check",
        Duration::from_secs(30),
        &|| format!("processor:\n{}", exporter.stderr.text()),
        |r| {
            r.iter().any(|m| {
                m["signal"] == "metrics"
                    && m["name"] == "rpc.server.call.duration"
                    && m["resource"]["process.pid"] == pid
                    && m["points"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p["attributes"]["rpc.method"] == "Check"
                                && p["attributes"]["rpc.grpc.status_code"] == 5
                                && p["count"].as_u64().unwrap_or(0) >= 1
                        })
                    })
            })
        },
    );
}
