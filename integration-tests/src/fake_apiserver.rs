//! A small Kubernetes API server for the tests (no real one can be installed here):
//! it speaks the protocol `kube::runtime::watcher` uses, over plain HTTP/1.1.
//!
//! - `GET /api/v1/pods`, `/api/v1/services`, `/api/v1/nodes`,
//!   `/apis/apps/v1/replicasets` (and the `/namespaces/<ns>/` forms): a `...List` with
//!   `metadata.resourceVersion`; items without `apiVersion`/`kind`, as the real server
//!   sends them.
//! - `?watch=1` (or `true`): a chunked stream of JSON lines `{"type":"ADDED"|"MODIFIED"|
//!   "DELETED"|"BOOKMARK"|"ERROR","object":...}`, starting after `resourceVersion`
//!   (without one, or `0`: every current object as `ADDED` first). A
//!   `resourceVersion` older than the last compaction ([`FakeApiServer::compact`])
//!   gets one `ERROR` event carrying a `Status` with code 410 (Gone), as the real
//!   server does. `allowWatchBookmarks=true` adds a `BOOKMARK` every second;
//!   `timeoutSeconds` ends the stream.
//! - `fieldSelector`: `spec.nodeName=<x>` and `metadata.name=<x>` (`=`, `==`, `!=`,
//!   comma-separated); anything else is a 400, like the real server.
//! - [`FakeApiServer::forbid`] makes a resource answer 403 (RBAC missing).
//!
//! Every change bumps one global resourceVersion. The server can be stopped
//! (listener and streams closed) and started again on the same port with the same
//! objects, to play an API server outage.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

type Body = BoxBody<Bytes, Infallible>;
type Chunk = Result<Frame<Bytes>, Infallible>;

/// A resource the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Service,
    Node,
    ReplicaSet,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::ReplicaSet => "apps/v1",
            _ => "v1",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Node => "Node",
            Kind::ReplicaSet => "ReplicaSet",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Node => "nodes",
            Kind::ReplicaSet => "replicasets",
        }
    }
}

struct Watch {
    id: u64,
    kind: Kind,
    namespace: Option<String>,
    selector: Vec<(String, bool, String)>,
    tx: mpsc::UnboundedSender<Chunk>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (kind, namespace, name) -> object (with apiVersion, kind, resourceVersion).
    objects: BTreeMap<(Kind, String, String), Value>,
    /// (resourceVersion, kind, event type, object) since the last compaction.
    history: Vec<(u64, Kind, &'static str, Value)>,
    compacted_through: u64,
    watches: Vec<Watch>,
    next_watch: u64,
    forbidden: HashSet<Kind>,
    requests: Vec<String>,
    /// Watches answered 410 Gone.
    gone: u64,
}

/// The fake API server. See the module doc.
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
    pub port: u16,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeApiServer {
    /// A server on an ephemeral port of 127.0.0.1, not started yet if `port` is
    /// given to [`FakeApiServer::start`] later: use [`FakeApiServer::new`] for that.
    pub fn start_any() -> FakeApiServer {
        let mut s = FakeApiServer::new(0);
        s.start();
        s
    }

    /// A server for `port`, not listening yet (an API server that is down).
    pub fn new(port: u16) -> FakeApiServer {
        FakeApiServer {
            state: Arc::new(Mutex::new(State::default())),
            runtime: None,
            port,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts listening (again) with the objects it has.
    pub fn start(&mut self) {
        assert!(self.runtime.is_none(), "fake API server already running");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake API server runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port)))
            .unwrap_or_else(|e| panic!("fake API server cannot listen on {}: {e}", self.port));
        self.port = listener.local_addr().expect("local addr").port();
        let state = self.state.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        self.runtime = Some(rt);
    }

    /// Stops listening and ends every connection and watch (objects are kept).
    pub fn stop(&mut self) {
        lock(&self.state).watches.clear();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Adds or replaces an object (by kind, namespace, name); watchers get
    /// ADDED or MODIFIED.
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let mut s = lock(&self.state);
        s.rv += 1;
        let rv = s.rv;
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object without metadata.name")
            .to_owned();
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.name());
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{ns}-{name}", kind.plural()));
        }
        let key = (kind, ns, name);
        let kind_of_event = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key, object.clone());
        publish(&mut s, rv, kind, kind_of_event, object);
    }

    /// Deletes an object; watchers get DELETED.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut s = lock(&self.state);
        let Some(mut object) = s
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
        else {
            panic!("no {} {namespace}/{name} to delete", kind.name());
        };
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        publish(&mut s, rv, kind, "DELETED", object);
    }

    /// Forgets the history: watches resuming from an older resourceVersion get 410
    /// Gone (and must list again). Open watches are closed.
    pub fn compact(&self) {
        let mut s = lock(&self.state);
        s.compacted_through = s.rv;
        s.history.clear();
        s.watches.clear();
    }

    /// Answers 403 Forbidden for `kind` from now on.
    pub fn forbid(&self, kind: Kind) {
        lock(&self.state).forbidden.insert(kind);
    }

    /// How many watches were answered 410 Gone.
    pub fn gone_count(&self) -> u64 {
        lock(&self.state).gone
    }

    /// Every request so far, as `GET <path>?<query>`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// A kubeconfig file in `dir` pointing at this server (plain HTTP, a token).
    pub fn write_kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn publish(s: &mut State, rv: u64, kind: Kind, event: &'static str, object: Value) {
    let line = event_line(event, &object);
    s.watches.retain(|w| {
        if w.kind != kind || !selected(&object, w.namespace.as_deref(), &w.selector) {
            return !w.tx.is_closed();
        }
        w.tx.send(Ok(Frame::data(line.clone()))).is_ok()
    });
    s.history.push((rv, kind, event, object));
}

fn selected(object: &Value, namespace: Option<&str>, selector: &[(String, bool, String)]) -> bool {
    if let Some(ns) = namespace {
        if object["metadata"]["namespace"] != ns {
            return false;
        }
    }
    selector.iter().all(|(field, equal, value)| {
        let pointer = format!("/{}", field.replace('.', "/"));
        let actual = object
            .pointer(&pointer)
            .and_then(Value::as_str)
            .unwrap_or("");
        (actual == value) == *equal
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn route(path: &str) -> Option<(Kind, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (rest, core) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (rest, true),
        ["apis", "apps", "v1", rest @ ..] => (rest, false),
        _ => return None,
    };
    let (ns, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some((*ns).to_owned()), *plural),
        _ => return None,
    };
    let kind = match (core, plural) {
        (true, "pods") => Kind::Pod,
        (true, "services") => Kind::Service,
        (true, "nodes") => Kind::Node,
        (false, "replicasets") => Kind::ReplicaSet,
        _ => return None,
    };
    Some((kind, ns))
}

fn parse_selector(text: &str) -> Result<Vec<(String, bool, String)>, String> {
    let mut out = Vec::new();
    for term in text.split(',').filter(|t| !t.is_empty()) {
        let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, true, v)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, true, v)
        } else {
            return Err(format!("invalid field selector term {term:?}"));
        };
        if !matches!(
            field,
            "spec.nodeName" | "metadata.name" | "metadata.namespace"
        ) {
            return Err(format!("field label not supported: {field}"));
        }
        out.push((field.to_owned(), equal, value.to_owned()));
    }
    Ok(out)
}

fn handle(state: &Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    lock(state).requests.push(format!(
        "{} {}?{}",
        req.method(),
        path,
        req.uri().query().unwrap_or("")
    ));
    let Some((kind, namespace)) = route(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if lock(state).forbidden.contains(&kind) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "{} is forbidden: User \"system:serviceaccount:tandem:tandem\" cannot list resource \"{}\"",
                kind.plural(),
                kind.plural()
            ),
        );
    }
    let selector = match parse_selector(query.get("fieldSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    if !watching {
        return list(state, kind, namespace.as_deref(), &selector);
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    watch(state, kind, namespace, selector, from, bookmarks, timeout)
}

fn list(
    state: &Arc<Mutex<State>>,
    kind: Kind,
    namespace: Option<&str>,
    selector: &[(String, bool, String)],
) -> Response<Body> {
    let s = lock(state);
    let items: Vec<Value> = s
        .objects
        .iter()
        .filter(|((k, _, _), o)| *k == kind && selected(o, namespace, selector))
        .map(|(_, o)| {
            let mut item = o.clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            item
        })
        .collect();
    let body = json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": {"resourceVersion": s.rv.to_string()},
        "items": items,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn watch(
    state: &Arc<Mutex<State>>,
    kind: Kind,
    namespace: Option<String>,
    selector: Vec<(String, bool, String)>,
    from: u64,
    bookmarks: bool,
    timeout: Option<Duration>,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
    let mut s = lock(state);
    let send = |line: Bytes| {
        let _ = tx.send(Ok(Frame::data(line)));
    };
    if from != 0 && from < s.compacted_through {
        s.gone += 1;
        let gone = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", s.compacted_through),
            "reason": "Expired", "code": 410,
        });
        send(event_line("ERROR", &gone));
        drop(tx);
    } else {
        if from == 0 {
            for ((k, _, _), o) in &s.objects {
                if *k == kind && selected(o, namespace.as_deref(), &selector) {
                    send(event_line("ADDED", o));
                }
            }
        } else {
            for (rv, k, event, o) in &s.history {
                if *rv > from && *k == kind && selected(o, namespace.as_deref(), &selector) {
                    send(event_line(event, o));
                }
            }
        }
        let id = s.next_watch;
        s.next_watch += 1;
        let keep = tx.clone();
        s.watches.push(Watch {
            id,
            kind,
            namespace,
            selector,
            tx,
        });
        // Bookmarks, and the end of the stream after timeoutSeconds.
        let state = state.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
            let mut deadline = std::pin::pin!(deadline);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = tick.tick() => {
                        if keep.is_closed() {
                            break;
                        }
                        if bookmarks {
                            let rv = lock(&state).rv;
                            let mark = json!({
                                "kind": kind.name(), "apiVersion": kind.api_version(),
                                "metadata": {"resourceVersion": rv.to_string()},
                            });
                            if keep.send(Ok(Frame::data(event_line("BOOKMARK", &mark)))).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            lock(&state).watches.retain(|w| w.id != id);
        });
    }
    drop(s);
    let body = StreamBody::new(UnboundedReceiverStream::new(rx));
    Response::builder()
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// Realistic objects.
pub mod objects {
    use serde_json::{json, Value};

    /// A 64-hex-digit container id derived from `seed` (distinct seeds, distinct ids).
    pub fn container_id(seed: &str) -> String {
        use std::hash::Hasher;
        let mut out = String::new();
        let mut i = 0u64;
        while out.len() < 64 {
            let mut fixed = std::hash::DefaultHasher::new();
            fixed.write(seed.as_bytes());
            fixed.write_u64(i);
            out.push_str(&format!("{:016x}", fixed.finish()));
            i += 1;
        }
        out
    }

    /// A running pod on `node` with one container `container` (id `containerd://<cid>`),
    /// owned by `owner` (kind, name) as controller.
    #[allow(clippy::too_many_arguments)]
    pub fn pod(
        namespace: &str,
        name: &str,
        node: &str,
        owner: Option<(&str, &str)>,
        container: &str,
        cid: &str,
        ip: &str,
        labels: Value,
        annotations: Value,
    ) -> Value {
        let owners: Vec<Value> = owner
            .iter()
            .map(|(kind, oname)| {
                json!({
                    "apiVersion": if *kind == "Job" { "batch/v1" } else { "apps/v1" },
                    "kind": kind, "name": oname, "uid": format!("uid-owner-{oname}"),
                    "controller": true, "blockOwnerDeletion": true,
                })
            })
            .collect();
        json!({
            "metadata": {
                "name": name, "namespace": namespace, "uid": format!("uid-pod-{namespace}-{name}"),
                "creationTimestamp": "2026-11-22T05:00:00Z",
                "labels": labels, "annotations": annotations, "ownerReferences": owners,
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": container, "image": "registry.example/app:1.0"}],
            },
            "status": {
                "phase": "Running",
                "podIP": ip, "podIPs": [{"ip": ip}],
                "hostIP": "192.0.2.10",
                "startTime": "2026-11-22T05:00:01Z",
                "containerStatuses": [{
                    "name": container, "ready": true, "restartCount": 0, "started": true,
                    "image": "registry.example/app:1.0",
                    "imageID": "registry.example/app@sha256:0123",
                    "containerID": format!("containerd://{cid}"),
                    "state": {"running": {"startedAt": "2026-11-22T05:00:02Z"}},
                }],
            },
        })
    }

    /// A ReplicaSet owned by Deployment `deployment`.
    pub fn replicaset(namespace: &str, name: &str, deployment: &str) -> Value {
        json!({
            "metadata": {
                "name": name, "namespace": namespace,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                    "uid": format!("uid-deploy-{deployment}"), "controller": true,
                }],
            },
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": deployment}}},
        })
    }

    pub fn node(name: &str, labels: Value) -> Value {
        json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"providerID": format!("fake://{name}")},
        })
    }

    pub fn service(namespace: &str, name: &str, cluster_ip: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
            },
        })
    }
}
