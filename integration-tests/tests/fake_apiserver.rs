//! The fake Kubernetes API server speaks the protocol a real one does, checked with a
//! plain HTTP client (curl): lists with a resourceVersion, watches resuming from one,
//! bookmarks, 410 Gone after compaction, field selectors, 403. (`tests/kube.rs` drives
//! the processor's `kube` watchers against it.)

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_integration_tests::fake_apiserver::objects::{container_id, pod};
use tandem_integration_tests::fake_apiserver::{FakeApiServer, Kind};

/// `curl -sS URL` -> (HTTP status, body).
fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.parse().expect("status"), body.to_owned())
}

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn a_pod(name: &str, node: &str) -> Value {
    pod(
        "shop",
        name,
        node,
        None,
        "app",
        &container_id(name),
        "10.0.0.1",
        json!({}),
        json!({}),
    )
}

#[test]
fn list_watch_bookmarks_gone_selectors_forbidden() {
    let api = FakeApiServer::start_any();
    api.apply(Kind::Pod, a_pod("a", "node-a"));
    api.apply(Kind::Pod, a_pod("b", "node-b"));
    let base = api.url();

    // List: the node's pods, a resourceVersion, items without apiVersion/kind.
    let (code, body) = get(&format!(
        "{base}/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&limit=500"
    ));
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("list JSON");
    assert_eq!(list["kind"], "PodList");
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("numeric rv");
    assert_eq!(rv, 2);
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "a");
    assert!(items[0]["kind"].is_null());

    // Watch from that version: only later changes of this node, then bookmarks,
    // until timeoutSeconds.
    let url = format!(
        "{base}/api/v1/pods?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=3&fieldSelector=spec.nodeName%3Dnode-a"
    );
    let watcher = std::thread::spawn(move || get(&url));
    std::thread::sleep(Duration::from_millis(500));
    let mut changed = a_pod("a", "node-a");
    changed["metadata"]["labels"] = json!({"v": "2"});
    api.apply(Kind::Pod, changed);
    api.apply(Kind::Pod, a_pod("c", "node-b"));
    api.delete(Kind::Pod, "shop", "a");
    let (code, body) = watcher.join().expect("watch thread");
    assert_eq!(code, 200);
    let events = lines(&body);
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] != "BOOKMARK")
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(kinds, ["MODIFIED", "DELETED"], "{body}");
    let modified = events
        .iter()
        .find(|e| e["type"] == "MODIFIED")
        .expect("MODIFIED");
    assert_eq!(modified["object"]["kind"], "Pod");
    assert_eq!(modified["object"]["metadata"]["resourceVersion"], "3");
    assert_eq!(modified["object"]["metadata"]["labels"]["v"], "2");
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .unwrap_or_else(|| panic!("no bookmark in {body}"));
    assert!(bookmark["object"]["metadata"]["resourceVersion"].is_string());

    // After compaction, resuming from an old version is 410 Gone.
    api.compact();
    let (code, body) = get(&format!(
        "{base}/api/v1/pods?watch=true&resourceVersion={rv}"
    ));
    assert_eq!(code, 200);
    let events = lines(&body);
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(api.gone_count(), 1);

    // Unsupported field selectors are refused; forbidden resources answer 403.
    let (code, body) = get(&format!(
        "{base}/api/v1/pods?fieldSelector=status.phase%3DRunning"
    ));
    assert_eq!(code, 400, "{body}");
    api.forbid(Kind::Service);
    let (code, body) = get(&format!("{base}/api/v1/services"));
    assert_eq!(code, 403);
    assert!(body.contains("forbidden"), "{body}");
    let (code, _) = get(&format!("{base}/apis/apps/v1/replicasets"));
    assert_eq!(code, 200);
    let (code, _) = get(&format!("{base}/api/v1/configmaps"));
    assert_eq!(code, 404);
}
