//! Issue 6's acceptance: Kubernetes metadata decoration and Kubernetes-aware discovery,
//! end to end.
//!
//! No real API server can be installed here, so the processor talks to
//! `tandem_integration_tests::fake_apiserver` (list, watch with resourceVersions,
//! bookmarks, 410 Gone, field selectors, 403) through a kubeconfig file (`KUBECONFIG`),
//! like it would to a cluster's. The pods are real processes: a python HTTP server
//! started inside a cgroup v2 directory named like containerd's
//! (`tandem-test-<pid>.slice/cri-containerd-<64 hex>.scope`), so the loader finds the
//! container id in its cgroup path, and the fake API server serves a Pod whose
//! `containerStatuses[].containerID` is `containerd://<the same id>`. The loader
//! captures with eBPF (root), the processor exports to a real OTLP receiver.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_integration_tests::container::{ContainerServer, Runtime};
use tandem_integration_tests::fake_apiserver::objects::{
    container_id, node, pod, replicaset, service,
};
use tandem_integration_tests::fake_apiserver::{FakeApiServer, Kind};
use tandem_integration_tests::otlp::*;
use tandem_integration_tests::{
    free_port, require_root_bpf, start_ebpf_loader, wait_instrumenting, Running, PATIENCE,
};

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const NODE: &str = "node-a";
const EXPORT_PATIENCE: Duration = Duration::from_secs(30);

/// A fake pod's container (containerd's cgroup naming) serving `/<name>.txt` on
/// `addr`.
fn pod_server(cid: &str, addr: &str, name: &str) -> ContainerServer {
    ContainerServer::start(
        Runtime::Containerd,
        cid,
        addr.parse().expect("an IP address"),
        name,
        &[(&format!("/{name}.txt"), &format!("{name}\n"))],
    )
}

/// `curl` of `/<name>.txt` at `server`, which serves it (`<name>\n`).
fn get_page(server: &ContainerServer, name: &str) -> CurlRun {
    let run = server.get(&format!("/{name}.txt"), &[]);
    assert_eq!(run.status, 200, "{run:?}");
    assert_eq!(run.body, format!("{name}\n"));
    run
}

/// A processor with Kubernetes metadata on, reading `kubeconfig`, exporting to
/// `receiver`; `yaml` is its configuration file, `env` more variables.
fn kube_processor(
    dir: &Path,
    socket: &Path,
    name: &str,
    kubeconfig: &Path,
    receiver: &Receiver,
    yaml: &str,
    env: &[(&str, String)],
) -> Running {
    let config = write_config(dir, yaml);
    let mut all = vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("OTEL_EBPF_KUBE_METADATA_ENABLE", "true".to_string()),
        ("KUBE_NODE_NAME", NODE.to_string()),
        ("KUBE_NAMESPACE", "tandem".to_string()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            receiver.endpoint(Protocol::Grpc),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_EBPF_LOG_LEVEL", "debug".to_string()),
    ];
    all.extend(env.iter().cloned());
    start_exporting_processor(socket, name, &config, &all)
}

fn logs(p: &Running) -> impl Fn() -> String + '_ {
    move || format!("processor stderr:\n{}", p.stderr.text())
}

/// Spans of `kind` from process `pid` for `path`.
fn spans_of<'a>(records: &'a [Value], kind: i64, pid: i64, path: &str) -> Vec<&'a Value> {
    spans(records)
        .into_iter()
        .filter(|s| {
            s["kind"] == kind
                && s["resource"]["process.pid"] == pid
                && s["attributes"]["url.path"] == path
        })
        .collect()
}

/// Waits for a span of `kind`, process `pid`, `path`; returns it.
fn wait_span(
    receiver: &mut Receiver,
    p: &Running,
    kind: i64,
    pid: impl Into<i64>,
    path: &str,
) -> Value {
    let pid = pid.into();
    receiver.until(
        &format!("a span of kind {kind} from pid {pid} for {path}"),
        EXPORT_PATIENCE,
        &logs(p),
        |r| !spans_of(r, kind, pid, path).is_empty(),
    );
    spans_of(&receiver.records, kind, pid, path)[0].clone()
}

/// Waits until the processor's log has `needle` at least `n` times.
fn wait_logged(p: &Running, needle: &str, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while p.stderr.count(needle) < n {
        assert!(
            Instant::now() < deadline,
            "the processor never logged {needle:?} {n} times; stderr:\n{}",
            p.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the loader instruments a selection mentioning `what` (a container id);
/// on timeout, shows both logs.
fn wait_selected(loader: &Running, p: &Running, what: &str) {
    let deadline = Instant::now() + 2 * PATIENCE;
    while !loader
        .stderr
        .text()
        .lines()
        .any(|l| l.contains("ebpf: instrumenting") && l.contains(what))
    {
        assert!(
            Instant::now() < deadline,
            "the loader never instrumented {what}; loader stderr:\n{}\nprocessor stderr:\n{}",
            loader.stderr.text(),
            p.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The source programs the kernel and rescans /proc right after logging.
    std::thread::sleep(Duration::from_millis(300));
}

fn assert_attrs(resource: &Value, want: &Value) {
    for (k, v) in want.as_object().expect("object") {
        assert_eq!(&resource[k], v, "{k} in resource {resource}");
    }
}

fn deployment_pod(ns: &str, name: &str, rs: &str, cid: &str, ip: &str) -> Value {
    let hash = rs.rsplit('-').next().unwrap_or("");
    pod(
        ns,
        name,
        NODE,
        Some(("ReplicaSet", rs)),
        "app",
        cid,
        ip,
        json!({"app": "checkout", "pod-template-hash": hash}),
        json!({}),
    )
}

/// Every attribute, with the right values, on the spans of three real servers in
/// three pods of this node (a Deployment's, a StatefulSet's, a DaemonSet's);
/// peers that are pods or Services; a pod deleted, then a late span still decorated.
#[test]
fn spans_carry_the_pods_metadata() {
    if !require_root_bpf("spans_carry_the_pods_metadata") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (cid_web, cid_db, cid_agent) = (
        container_id("web"),
        container_id("db"),
        container_id("agent"),
    );
    let api = FakeApiServer::start_any();
    api.apply(
        Kind::Node,
        node(
            NODE,
            json!({"kubernetes.io/hostname": NODE, "cluster.x-k8s.io/cluster-name": "fake-cluster"}),
        ),
    );
    api.apply(Kind::Node, node("node-b", json!({})));
    api.apply(
        Kind::ReplicaSet,
        replicaset("shop", "checkout-5f7b9c", "checkout"),
    );
    api.apply(
        Kind::Pod,
        deployment_pod(
            "shop",
            "checkout-5f7b9c-abcde",
            "checkout-5f7b9c",
            &cid_web,
            "127.0.0.2",
        ),
    );
    api.apply(
        Kind::Pod,
        pod(
            "data",
            "db-0",
            NODE,
            Some(("StatefulSet", "db")),
            "postgres",
            &cid_db,
            "10.244.0.7",
            json!({"app.kubernetes.io/part-of": "storage"}),
            json!({"resource.opentelemetry.io/service.name": "orders-db"}),
        ),
    );
    api.apply(Kind::Service, service("data", "db", "127.0.0.4"));
    api.apply(
        Kind::Pod,
        // Not kube-system: OBI's default_exclude_instrument leaves that namespace out.
        pod(
            "node-agents",
            "node-agent-x1",
            NODE,
            Some(("DaemonSet", "node-agent")),
            "agent",
            &cid_agent,
            "10.244.0.8",
            json!({"app.kubernetes.io/name": "agent"}),
            json!({}),
        ),
    );
    // A pod of another node: never listed to this processor.
    api.apply(
        Kind::Pod,
        pod(
            "shop",
            "checkout-5f7b9c-zzzzz",
            "node-b",
            Some(("ReplicaSet", "checkout-5f7b9c")),
            "app",
            &container_id("b"),
            "10.244.1.9",
            json!({"app": "checkout", "pod-template-hash": "5f7b9c"}),
            json!({}),
        ),
    );
    let kubeconfig = api.write_kubeconfig(dir.path());

    let web = pod_server(&cid_web, "127.0.0.2", "web");
    let db = pod_server(&cid_db, "127.0.0.4", "db");
    let agent = pod_server(&cid_agent, "127.0.0.5", "agent");
    let socket = dir.path().join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let mut receiver = Receiver::start();
    let ports = format!("{},{},{}", web.port, db.port, agent.port);
    let mut p = kube_processor(
        dir.path(),
        &socket,
        "kube-decoration",
        &kubeconfig,
        &receiver,
        "trace_printer: disabled\n",
        &[("OTEL_EBPF_OPEN_PORT", ports.clone())],
    );
    wait_instrumenting(&loader, &format!("ports {ports}"));
    wait_logged(&p, "kubernetes: pods synced", 1);
    wait_logged(&p, "kubernetes: replicasets synced", 1);
    wait_logged(&p, "kubernetes: node synced", 1);

    let curl_web = get_page(&web, "web");
    get_page(&db, "db");
    get_page(&agent, "agent");

    let s = wait_span(&mut receiver, &p, SERVER, web.pid(), "/web.txt");
    assert_attrs(
        &s["resource"],
        &json!({
            "k8s.namespace.name": "shop",
            "k8s.pod.name": "checkout-5f7b9c-abcde",
            "k8s.pod.uid": "uid-pod-shop-checkout-5f7b9c-abcde",
            "k8s.pod.start_time": "2026-11-22T05:00:01Z",
            "k8s.node.name": NODE,
            "k8s.container.name": "app",
            "k8s.replicaset.name": "checkout-5f7b9c",
            "k8s.deployment.name": "checkout",
            "k8s.owner.name": "checkout",
            "k8s.cluster.name": "fake-cluster",
            "container.id": cid_web,
            "service.name": "checkout",
            "service.namespace": "shop",
        }),
    );
    for absent in ["k8s.statefulset.name", "k8s.daemonset.name"] {
        assert!(s["resource"][absent].is_null(), "{absent}: {s}");
    }

    let s = wait_span(&mut receiver, &p, SERVER, db.pid(), "/db.txt");
    assert_attrs(
        &s["resource"],
        &json!({
            "k8s.namespace.name": "data",
            "k8s.pod.name": "db-0",
            "k8s.statefulset.name": "db",
            "k8s.container.name": "postgres",
            "k8s.node.name": NODE,
            "k8s.cluster.name": "fake-cluster",
            "service.name": "orders-db",
            "service.namespace": "storage",
        }),
    );
    assert!(s["resource"]["k8s.deployment.name"].is_null(), "{s}");

    let s = wait_span(&mut receiver, &p, SERVER, agent.pid(), "/agent.txt");
    assert_attrs(
        &s["resource"],
        &json!({
            "k8s.namespace.name": "node-agents",
            "k8s.pod.name": "node-agent-x1",
            "k8s.daemonset.name": "node-agent",
            "k8s.container.name": "agent",
            "service.name": "agent",
            "service.namespace": "node-agents",
        }),
    );

    // Peers: curl (not in a pod) called the web pod's IP and the db Service's IP.
    let c = wait_span(&mut receiver, &p, CLIENT, curl_web.pid, "/web.txt");
    assert_attrs(
        &c["attributes"],
        &json!({
            "k8s.dst.name": "checkout-5f7b9c-abcde",
            "k8s.dst.namespace": "shop",
            "k8s.dst.type": "Pod",
            "k8s.dst.owner.name": "checkout",
        }),
    );
    assert!(
        c["resource"]["k8s.pod.name"].is_null(),
        "curl is in no pod: {c}"
    );
    receiver.until("db client span", EXPORT_PATIENCE, &logs(&p), |r| {
        spans(r)
            .iter()
            .any(|s| s["kind"] == CLIENT && s["attributes"]["url.path"] == "/db.txt")
    });
    let c = spans(&receiver.records)
        .into_iter()
        .find(|s| s["kind"] == CLIENT && s["attributes"]["url.path"] == "/db.txt")
        .cloned()
        .expect("db client span");
    assert_attrs(
        &c["attributes"],
        &json!({"k8s.dst.name": "db", "k8s.dst.namespace": "data", "k8s.dst.type": "Service"}),
    );

    // The pod is deleted; a request that comes after is still decorated (grace).
    api.delete(Kind::Pod, "shop", "checkout-5f7b9c-abcde");
    std::thread::sleep(Duration::from_millis(1500));
    web.add_page("/late.txt", "late\n");
    get_page(&web, "late");
    let s = wait_span(&mut receiver, &p, SERVER, web.pid(), "/late.txt");
    assert_attrs(
        &s["resource"],
        &json!({"k8s.pod.name": "checkout-5f7b9c-abcde", "k8s.deployment.name": "checkout"}),
    );

    // Pods were watched on this node only, and the deletion was seen.
    let requests = api.requests();
    let pod_requests: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("/api/v1/pods"))
        .collect();
    assert!(!pod_requests.is_empty());
    for r in &pod_requests {
        assert!(r.contains("fieldSelector=spec.nodeName%3Dnode-a"), "{r}");
    }
    p.stop();
    let exit = p.stderr.wait_for("kubernetes metadata at exit", PATIENCE);
    assert!(exit.contains("pods=2"), "{exit}");
    assert!(exit.contains("deleted=1"), "{exit}");
    drop(loader);
}

/// The API server is down when the processor starts, then comes up: spans flow
/// undecorated, then decorated, without restart. Then it goes away again, forgets its
/// history (410 Gone on the resumed watch) and comes back: the processor lists again
/// and sees what changed meanwhile. Services are forbidden (403) throughout: pods are
/// decorated anyway. Each outage is logged once.
#[test]
fn api_server_outages_do_not_stop_spans() {
    if !require_root_bpf("api_server_outages_do_not_stop_spans") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cid = container_id("outage");
    let mut api = FakeApiServer::new(free_port());
    api.forbid(Kind::Service);
    api.apply(Kind::Node, node(NODE, json!({})));
    api.apply(Kind::ReplicaSet, replicaset("shop", "cart-6d8f", "cart"));
    api.apply(
        Kind::Pod,
        deployment_pod("shop", "cart-6d8f-q1w2e", "cart-6d8f", &cid, "10.244.0.20"),
    );
    let kubeconfig = api.write_kubeconfig(dir.path());
    let web = pod_server(&cid, "127.0.0.1", "one");
    web.add_page("/two.txt", "two\n");
    web.add_page("/three.txt", "three\n");
    let socket = dir.path().join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let mut receiver = Receiver::start();
    let p = kube_processor(
        dir.path(),
        &socket,
        "kube-outage",
        &kubeconfig,
        &receiver,
        "trace_printer: disabled\n",
        &[("OTEL_EBPF_OPEN_PORT", web.port.to_string())],
    );
    wait_instrumenting(&loader, &format!("ports {}", web.port));
    wait_logged(&p, "kubernetes: pods watch failing", 1);

    get_page(&web, "one");
    let s = wait_span(&mut receiver, &p, SERVER, web.pid(), "/one.txt");
    assert!(s["resource"]["k8s.pod.name"].is_null(), "undecorated: {s}");
    assert!(
        s["resource"]["service.name"]
            .as_str()
            .unwrap_or("")
            .starts_with("python"),
        "{s}"
    );

    api.start();
    wait_logged(&p, "kubernetes: pods watch recovered", 1);
    get_page(&web, "two");
    let s = wait_span(&mut receiver, &p, SERVER, web.pid(), "/two.txt");
    assert_attrs(
        &s["resource"],
        &json!({"k8s.pod.name": "cart-6d8f-q1w2e", "k8s.deployment.name": "cart", "service.name": "cart"}),
    );

    // Down again; the pod changes meanwhile; the server forgets its history.
    api.stop();
    wait_logged(&p, "kubernetes: pods watch failing", 2);
    let mut changed = deployment_pod("shop", "cart-6d8f-q1w2e", "cart-6d8f", &cid, "10.244.0.20");
    changed["metadata"]["annotations"] =
        json!({"resource.opentelemetry.io/service.name": "cart-v2"});
    api.apply(Kind::Pod, changed);
    api.compact();
    let before = api.requests().len();
    api.start();
    wait_logged(&p, "kubernetes: pods watch recovered", 2);
    get_page(&web, "three");
    let s = wait_span(&mut receiver, &p, SERVER, web.pid(), "/three.txt");
    assert_attrs(
        &s["resource"],
        &json!({"service.name": "cart-v2", "k8s.pod.name": "cart-6d8f-q1w2e"}),
    );
    // Its resumed watch was refused (410 Gone), and it listed again (a GET without
    // watch) after coming back.
    assert!(api.gone_count() >= 1, "{:?}", api.requests());
    assert!(
        api.requests()[before..]
            .iter()
            .any(|r| r.contains("/api/v1/pods") && !r.contains("watch=")),
        "{:?}",
        api.requests()
    );
    // Logged once per outage, not once per retry; the 403 once.
    assert_eq!(
        p.stderr.count("kubernetes: pods watch failing"),
        2,
        "{}",
        p.stderr.text()
    );
    assert_eq!(
        p.stderr.count("kubernetes: services watch failing"),
        1,
        "{}",
        p.stderr.text()
    );
    assert!(p.stderr.text().contains("403"), "{}", p.stderr.text());
    drop(loader);
}

/// `discovery.instrument` with `k8s_namespace` and `k8s_pod_labels`: the loader
/// captures the matching pod's process and not the other; when the other pod's
/// labels change to match, it is captured too (the processor re-subscribes).
#[test]
fn kubernetes_discovery_selects_matching_pods() {
    if !require_root_bpf("kubernetes_discovery_selects_matching_pods") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (cid_a, cid_b) = (container_id("disc-a"), container_id("disc-b"));
    let api = FakeApiServer::start_any();
    api.apply(Kind::Node, node(NODE, json!({})));
    let pod_b = |app: &str| {
        pod(
            "shop",
            "cart-0",
            NODE,
            Some(("StatefulSet", "cart")),
            "app",
            &cid_b,
            "10.244.0.31",
            json!({"app": app}),
            json!({}),
        )
    };
    api.apply(
        Kind::Pod,
        pod(
            "shop",
            "checkout-0",
            NODE,
            Some(("StatefulSet", "checkout")),
            "app",
            &cid_a,
            "10.244.0.30",
            json!({"app": "checkout"}),
            json!({}),
        ),
    );
    api.apply(Kind::Pod, pod_b("cart"));
    let kubeconfig = api.write_kubeconfig(dir.path());
    let a = pod_server(&cid_a, "127.0.0.1", "a");
    let b = pod_server(&cid_b, "127.0.0.1", "b");
    b.add_page("/b2.txt", "b2\n");
    let socket = dir.path().join("loader.sock");
    let loader = start_ebpf_loader(&socket, &[]);
    let mut receiver = Receiver::start();
    let p = kube_processor(
        dir.path(),
        &socket,
        "kube-discovery",
        &kubeconfig,
        &receiver,
        "discovery:\n  instrument:\n    - k8s_namespace: shop\n      k8s_pod_labels:\n        app: 'check*'\n",
        &[],
    );
    wait_selected(&loader, &p, &cid_a);
    get_page(&a, "a");
    get_page(&b, "b");
    wait_span(&mut receiver, &p, SERVER, a.pid(), "/a.txt");
    receiver.settle(Duration::from_secs(3));
    let from_b: Vec<&Value> = spans(&receiver.records)
        .into_iter()
        .filter(|s| {
            s["resource"]["process.pid"] == b.pid() || s["attributes"]["url.path"] == "/b.txt"
        })
        .collect();
    assert!(from_b.is_empty(), "pod b is not selected: {from_b:?}");
    assert!(
        !loader.stderr.text().contains(&cid_b),
        "the loader was never asked for b's container"
    );

    // b's labels change: it matches now.
    api.apply(Kind::Pod, pod_b("checkout-v2"));
    wait_selected(&loader, &p, &cid_b);
    assert!(p
        .stderr
        .text()
        .contains("selection changed; subscribing again under the same name"));
    get_page(&b, "b2");
    let s = wait_span(&mut receiver, &p, SERVER, b.pid(), "/b2.txt");
    assert_attrs(
        &s["resource"],
        &json!({"k8s.pod.name": "cart-0", "k8s.statefulset.name": "cart"}),
    );
}
