//! Issue 14's gateway topology, end to end (docs/gateway.md): tandem exports to a
//! node-local collector (the agent, as a DaemonSet would run it), which forwards to a
//! gateway collector, which forwards to the backend; tandem's own Kubernetes
//! decoration is off, and `k8s.pod.ip` on the resource lets the gateway's
//! `k8sattributes` processor find the pod.
//!
//! Everything is real except the cluster: a python HTTP server runs in a cgroup v2
//! directory named like docker's (`docker-<64 hex>.scope`), so the loader reports its
//! container id; it listens on one of the host's own non-loopback addresses (a pod's IP,
//! as far as the pod is concerned) and curl calls it there. The loader captures with
//! eBPF (root); the processor exports OTLP/gRPC to a rotel collector on 127.0.0.1 (the
//! agent), which forwards to a second rotel (the gateway), which forwards to the
//! Python receiver (`testdata/otlp_receiver.py`), where the spans and metrics are
//! asserted exactly. Each collector logs what it forwards and tags what it sends with
//! `x-tandem-hop: <its name>`, so both hops are checked.

use std::time::Duration;

use serde_json::{json, Value};
use tandem_integration_tests::container::{ContainerServer, Runtime};
use tandem_integration_tests::fake_apiserver::objects::container_id;
use tandem_integration_tests::gateway::{host_address, Collector};
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::{require_root_bpf, start_ebpf_loader, wait_instrumenting, Running};

const USER_AGENT: &str = "tandem-gateway-test/1";
/// OTLP span kind SERVER.
const SERVER: i64 = 2;
/// Two collectors batch (200 ms each) before the receiver sees anything.
const EXPORT_PATIENCE: Duration = Duration::from_secs(30);

fn logs<'a>(p: &'a Running, collectors: &'a [&'a Collector]) -> impl Fn() -> String + 'a {
    move || {
        let mut out = format!("processor stderr:\n{}", p.stderr.text());
        for c in collectors {
            out.push('\n');
            out.push_str(&c.dump());
        }
        out
    }
}

/// The server span of `path` from process `pid`, once received.
fn server_span<'a>(records: &'a [Value], pid: i64, path: &str) -> Option<&'a Value> {
    spans(records).into_iter().find(|s| {
        s["kind"] == SERVER
            && s["resource"]["process.pid"] == pid
            && s["attributes"]["url.path"] == path
    })
}

/// Two requests (200 and 404) to a server in a container, over the host's address:
/// the server spans arrive through the agent and the gateway with their exact
/// attributes, under a resource with `k8s.pod.ip` = the address the clients called
/// and the process's `service.name`; its metrics carry the same resource.
#[test]
fn spans_reach_the_backend_through_agent_and_gateway_with_the_pod_ip() {
    let test = "spans_reach_the_backend_through_agent_and_gateway_with_the_pod_ip";
    if !require_root_bpf(test) {
        return;
    }
    let Some(pod_ip) = host_address() else {
        // Straight to the stderr handle (libtest captures eprintln! of passing tests).
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("SKIP {test}: the host has no non-loopback address (ip -o addr)\n").as_bytes(),
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let cid = container_id("gateway-web");
    let server = ContainerServer::start(
        Runtime::Docker,
        &cid,
        pod_ip,
        "gateway-web",
        &[("/shop/items.txt", "apples\npears\n")],
    );
    let pid = i64::from(server.pid());

    // Backend <- gateway <- agent <- tandem.
    let mut receiver = Receiver::start();
    let gateway = Collector::forwarding(dir.path(), "gateway", &receiver.endpoint(Protocol::Grpc));
    let agent = Collector::forwarding(dir.path(), "agent", &gateway.endpoint());
    let socket = dir.path().join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let config = write_config(
        dir.path(),
        "trace_printer: disabled\nroutes:\n  patterns:\n    - /shop/{item}\n",
    );
    let p = start_exporting_processor(
        &socket,
        "gateway-topology",
        &config,
        &[
            ("OTEL_EBPF_OPEN_PORT", server.port.to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", agent.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
            ("OTEL_EBPF_KUBE_METADATA_ENABLE", "false".to_string()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
        ],
    );
    wait_instrumenting(&loader, &format!("ports {}", server.port));

    let ua = format!("User-Agent: {USER_AGENT}");
    let found = server.get("/shop/items.txt", &[&ua]);
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(found.body, "apples\npears\n");
    let missing = server.get("/shop/missing.txt", &[&ua]);
    assert_eq!(missing.status, 404, "{missing:?}");

    let collectors = [&agent, &gateway];
    let context = logs(&p, &collectors);
    receiver.until(
        "the two server spans through agent and gateway",
        EXPORT_PATIENCE,
        &context,
        |r| {
            server_span(r, pid, "/shop/items.txt").is_some()
                && server_span(r, pid, "/shop/missing.txt").is_some()
        },
    );

    // The resource: the process's identity, its container, and the pod IP the
    // clients called (tandem's decoration is off: evidence only).
    let addr = pod_ip.to_string();
    let mut want_resource = process_resource(server.pid());
    want_resource["container.id"] = json!(cid);
    want_resource["k8s.pod.ip"] = json!(addr);
    for (path, run, status) in [
        ("/shop/items.txt", &found, 200),
        ("/shop/missing.txt", &missing, 404),
    ] {
        let span = server_span(&receiver.records, pid, path).expect("received");
        assert_eq!(
            span["resource"], want_resource,
            "resource of {path}: {span}"
        );
        assert_eq!(
            span["attributes"],
            json!({
                "client.address": addr,
                "http.request.body.size": 0,
                "http.request.method": "GET",
                "http.response.body.size": run.body.len(),
                "http.response.status_code": status,
                "http.route": "/shop/{item}",
                "network.peer.address": addr,
                "network.peer.port": run.local_port,
                "network.protocol.version": "1.1",
                "server.address": addr,
                "server.port": server.port,
                "url.path": path,
                "user_agent.original": USER_AGENT,
            }),
            "attributes of {path}: {span}"
        );
        assert_eq!(span["name"], "GET /shop/{item}", "{span}");
        // The last hop was the gateway's.
        assert_eq!(span["headers"]["x-tandem-hop"], "gateway", "{span}");
        // Both collectors forwarded it, with the pod IP on its resource.
        let id = span["span_id"].as_str().expect("span id");
        for c in [&agent, &gateway] {
            let seen = c.spans();
            let s = seen.iter().find(|s| s.span_id == id).unwrap_or_else(|| {
                panic!(
                    "{} did not forward span {id} ({path}):\n{}",
                    c.name,
                    c.dump()
                )
            });
            assert_eq!(s.resource["k8s.pod.ip"], addr, "{}: {s:?}", c.name);
            assert_eq!(s.attributes["url.path"], path, "{}: {s:?}", c.name);
        }
    }

    // Metrics: the same resource, through the same hops.
    let metric_attrs = json!({
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "http.route": "/shop/{item}",
        "server.port": server.port,
    });
    receiver.until(
        "the server's duration metric through agent and gateway",
        EXPORT_PATIENCE,
        &context,
        |r| latest_count(r, "http.server.request.duration", pid, &metric_attrs) >= 1,
    );
    let metric = receiver
        .records
        .iter()
        .rev()
        .find(|r| {
            r["signal"] == "metrics"
                && r["name"] == "http.server.request.duration"
                && r["resource"]["process.pid"] == pid
        })
        .expect("metric");
    assert_eq!(metric["resource"], want_resource, "{metric}");
    assert_eq!(metric["headers"]["x-tandem-hop"], "gateway", "{metric}");

    // curl runs on the host, outside any container: its spans (if the loader saw
    // it start) carry no pod IP.
    for s in receiver.spans() {
        if s["resource"]["process.pid"] != pid {
            assert!(s["resource"]["k8s.pod.ip"].is_null(), "{s}");
        }
    }
    drop(context);
    drop(p);
    drop(loader);
    drop(server);
}
