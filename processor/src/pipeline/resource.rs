//! Who produced a span: one OpenTelemetry resource per instrumented process, built
//! from the loader's `ProcessStarted` events.
//!
//! Attributes, later ones overriding earlier ones:
//! 1. `service.name` (the executable's file name; for a process that exited before
//!    the loader read it, the kernel's task name; `unknown_service` when tandem
//!    never saw the process start), `service.instance.id` (`<host.name>-<pid>`),
//!    `host.name`, `process.pid`, `process.executable.path`,
//!    `process.executable.name`, `container.id` (when in a container),
//!    `telemetry.sdk.name` = `tandem`, `telemetry.sdk.version` = this crate's version;
//!    then the loader's posture (`tandem.loader.*`, see [`ProcessMap::set_loader_attributes`]);
//! 2. with Kubernetes metadata on, for a process in a known pod's container: the
//!    `k8s.*` attributes, `service.name` / `service.namespace` from the pod (see
//!    `crate::kube::meta` for the rule) and its `resource.opentelemetry.io/*`
//!    annotations; looked up again whenever the Kubernetes store changed, so a pod
//!    learnt late (API server down at start) decorates the next spans;
//!
//!    2a. otherwise (decoration off, or no pod found for the process): `k8s.pod.ip`
//!    from evidence only (see [`pod_ip_evidence`]): the process is in a container
//!    and accepted a connection on a local, non-loopback address, which then is its
//!    pod's IP (the address a gateway collector's `k8sattributes` processor
//!    associates pods by, see docs/gateway.md). Without that evidence, no
//!    attribute: a process on the host's network or serving only on loopback gets
//!    none, rather than a guess. The first such address is kept for the process's
//!    life, and its resource built again once;
//!
//!    2b. what the process declares itself in its own environment (forwarded by the
//!    loader): its `OTEL_RESOURCE_ATTRIBUTES`, then its `OTEL_SERVICE_NAME` as
//!    `service.name` (an application's own name wins over its executable's and its
//!    pod's, as its OpenTelemetry SDK would report it);
//! 3. `resource_attributes` (tandem's own `OTEL_RESOURCE_ATTRIBUTES`);
//! 4. `service_name` / `service_namespace` settings (tandem's own `OTEL_SERVICE_NAME`).
//!
//! OBI names its SDK `opentelemetry-ebpf-instrumentation` and sets
//! `telemetry.sdk.language` to the language it detected in the process; tandem
//! detects no language, so it leaves `telemetry.sdk.language` out rather than report
//! its own. The command line is not reported (it may hold secrets).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use opentelemetry::{Key, KeyValue, Value};
use tandem_proto::v1::ProcessStarted;

use crate::kube::Store;

/// `telemetry.sdk.name` of everything tandem exports.
pub const SDK_NAME: &str = "tandem";

/// Processes remembered at most; past that, the oldest-started entries are
/// forgotten first (pids are reused, and exits are not reported here).
pub const MAX_PROCESSES: usize = 4096;

/// The resource-related settings (a subset of `ExportSettings`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSettings {
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    pub resource_attributes: BTreeMap<String, String>,
    /// `host.name`; see [`local_host_name`].
    pub host_name: String,
}

/// The attributes of one resource (keys unique, in the order given).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resource {
    attributes: Vec<KeyValue>,
}

impl Resource {
    /// A resource of `attributes`; a key given twice keeps its last value.
    pub fn new(attributes: impl IntoIterator<Item = KeyValue>) -> Self {
        let mut out: Vec<KeyValue> = Vec::new();
        for kv in attributes {
            match out.iter_mut().find(|o| o.key == kv.key) {
                Some(o) => o.value = kv.value,
                None => out.push(kv),
            }
        }
        Resource { attributes: out }
    }

    /// The value of `key`.
    pub fn get(&self, key: &Key) -> Option<Value> {
        self.attributes
            .iter()
            .find(|kv| &kv.key == key)
            .map(|kv| kv.value.clone())
    }

    pub fn iter(&self) -> impl Iterator<Item = &KeyValue> {
        self.attributes.iter()
    }

    pub fn len(&self) -> usize {
        self.attributes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }
}

/// The resource of tandem's own metrics: `service.name` = `name` (the processor's
/// subscription name), `host.name`, `telemetry.sdk.*`.
pub fn own_resource(name: &str, host_name: &str) -> Resource {
    Resource::new([
        KeyValue::new("service.name", name.to_owned()),
        KeyValue::new("host.name", host_name.to_owned()),
        KeyValue::new("telemetry.sdk.name", SDK_NAME),
        KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ])
}

/// This machine's host name (`/proc/sys/kernel/hostname`), `localhost` if unreadable.
pub fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// One process's identity as exported.
#[derive(Debug)]
pub struct ProcessResource {
    pub pid: u32,
    /// `service.name` as exported.
    pub service_name: String,
    pub resource: Resource,
    /// The OTLP `Resource` message of `resource`, encoded once for every export.
    pub otlp: Vec<u8>,
}

impl ProcessResource {
    /// The process `pid` (0 for tandem itself) with `resource`.
    pub fn new(pid: u32, resource: Resource) -> Self {
        let service_name = resource
            .get(&Key::from_static_str("service.name"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let otlp = crate::export::encode::resource(&resource);
        ProcessResource {
            pid,
            service_name,
            resource,
            otlp,
        }
    }
}

/// `k8s.pod.ip` as resource attribute key.
pub const POD_IP: &str = "k8s.pod.ip";

/// The pod IP that a connection accepted on local address `local` shows, for a
/// process in a container (`in_container`: the loader gave a container id): the
/// address itself (an IPv4-mapped IPv6 address as IPv4), unless it is loopback,
/// unspecified, link-local or multicast (none of which is ever a pod's IP). `None`:
/// no evidence. A process outside a container gets none: its addresses are the
/// host's.
pub fn pod_ip_evidence(in_container: bool, local: IpAddr) -> Option<IpAddr> {
    if !in_container {
        return None;
    }
    let ip = local.to_canonical();
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    (!(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local)).then_some(ip)
}

/// What the loader said of a process.
#[derive(Debug, Clone, Default)]
struct Started {
    exe_path: String,
    /// The kernel's task name, for a process whose executable was not read.
    comm: String,
    container_id: String,
    /// The process's own `OTEL_RESOURCE_ATTRIBUTES` then `OTEL_SERVICE_NAME`, as
    /// resource attributes (see the module documentation, step 2b).
    own: Vec<(String, String)>,
}

/// The resource attributes a process declares itself in its environment (the
/// loader forwards its `OTEL_*` entries): `OTEL_RESOURCE_ATTRIBUTES` (`k=v,...`,
/// percent-decoded; a malformed value is ignored whole, as the SDKs do), then
/// `OTEL_SERVICE_NAME` as `service.name`.
fn own_attributes(otel_env: &[String]) -> Vec<(String, String)> {
    let get = |name: &str| {
        otel_env.iter().find_map(|e| {
            e.strip_prefix(name)
                .and_then(|r| r.strip_prefix('='))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        })
    };
    let mut out = get("OTEL_RESOURCE_ATTRIBUTES")
        .and_then(|v| crate::config::parse_key_values(v).ok())
        .unwrap_or_default();
    if let Some(name) = get("OTEL_SERVICE_NAME") {
        out.push(("service.name".into(), name.to_string()));
    }
    out
}

#[derive(Debug)]
struct Entry {
    started: Option<Started>,
    resource: Arc<ProcessResource>,
    /// Kubernetes store version last looked at, and what it gave.
    kube_version: u64,
    kube_attrs: Option<BTreeMap<String, String>>,
    /// `k8s.pod.ip` from evidence ([`pod_ip_evidence`]), once found.
    pod_ip: Option<IpAddr>,
    /// The process exited: its facts are kept for its last events (a close after
    /// the exit), and forgotten first when the map is full.
    exited: bool,
}

/// What is known of each process, fed from `ProcessStarted` events.
#[derive(Debug)]
pub struct ProcessMap {
    settings: ResourceSettings,
    /// `tandem.loader.*` attributes: the loader's capability posture.
    loader: BTreeMap<String, String>,
    kube: Option<Arc<Store>>,
    by_pid: HashMap<u32, Entry>,
    /// Insertion order, for forgetting the oldest past `MAX_PROCESSES`.
    order: std::collections::VecDeque<u32>,
    /// Exited processes in exit order: forgotten before any live one.
    exited: std::collections::VecDeque<u32>,
}

impl ProcessMap {
    pub fn new(settings: ResourceSettings) -> Self {
        ProcessMap {
            settings,
            loader: BTreeMap::new(),
            kube: None,
            by_pid: HashMap::new(),
            order: Default::default(),
            exited: Default::default(),
        }
    }

    /// Decorates with the Kubernetes metadata of `store` from now on.
    pub fn set_kubernetes(&mut self, store: Arc<Store>) {
        self.kube = Some(store);
    }

    /// A process started (or was found running). A pid seen again replaces the entry:
    /// it is a new process.
    pub fn on_started(&mut self, p: &ProcessStarted) {
        let started = Started {
            exe_path: p.exe_path.clone(),
            comm: p.comm.clone(),
            container_id: p.container_id.clone(),
            own: own_attributes(&p.otel_env),
        };
        let (kube_version, kube_attrs) = self.kube_lookup(Some(&started));
        let resource = Arc::new(self.build(p.pid, Some(&started), kube_attrs.as_ref(), None));
        self.insert(
            p.pid,
            Entry {
                started: Some(started),
                resource,
                kube_version,
                kube_attrs,
                pod_ip: None,
                exited: false,
            },
        );
    }

    /// Process `pid` exited: its facts stay for its late events until the map
    /// needs the room (exited processes go first, oldest exit first).
    pub fn on_exit(&mut self, pid: u32) {
        if let Some(e) = self.by_pid.get_mut(&pid) {
            if !e.exited {
                e.exited = true;
                self.exited.push_back(pid);
            }
        }
        if self.exited.len() > 2 * MAX_PROCESSES {
            let by_pid = &self.by_pid;
            self.exited
                .retain(|pid| by_pid.get(pid).is_some_and(|e| e.exited));
        }
    }

    /// Process `pid` accepted a connection on local address `local` (it is the
    /// server): evidence of its pod's IP when it is in a container (see
    /// [`pod_ip_evidence`]). The first evidence is kept and the resource built again
    /// once; after that, or for a process without a container (or not seen
    /// starting), this is one map lookup.
    pub fn on_served(&mut self, pid: u32, local: IpAddr) {
        let Some(e) = self.by_pid.get(&pid) else {
            return;
        };
        if e.pod_ip.is_some() {
            return;
        }
        let in_container = e
            .started
            .as_ref()
            .is_some_and(|s| !s.container_id.is_empty());
        let Some(ip) = pod_ip_evidence(in_container, local) else {
            return;
        };
        // A decorated resource has the pod's own IP already: kept as it is.
        let resource = e
            .kube_attrs
            .is_none()
            .then(|| Arc::new(self.build(pid, e.started.as_ref(), None, Some(ip))));
        if let Some(e) = self.by_pid.get_mut(&pid) {
            e.pod_ip = Some(ip);
            if let Some(r) = resource {
                e.resource = r;
            }
        }
    }

    fn kube_lookup(&self, started: Option<&Started>) -> (u64, Option<BTreeMap<String, String>>) {
        match (&self.kube, started) {
            (Some(store), Some(s)) if !s.container_id.is_empty() => {
                let v = store.version();
                (v, store.container_attributes(&s.container_id))
            }
            _ => (0, None),
        }
    }

    /// Processes remembered.
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// `host.name` of the resources built here.
    pub fn host_name(&self) -> &str {
        &self.settings.host_name
    }

    /// Sets the `tandem.loader.*` attributes (the loader's capability posture) of
    /// the resources built from now on; resources built before keep theirs.
    pub fn set_loader_attributes(&mut self, attrs: BTreeMap<String, String>) {
        self.loader = attrs;
    }

    /// The resource of `pid`; a process tandem never saw start gets a minimal one
    /// (remembered, so that all its spans share it). With Kubernetes metadata, a
    /// changed store is looked at again (no API call: an in-memory lookup).
    pub fn get(&mut self, pid: u32) -> Arc<ProcessResource> {
        let kube_version = self.kube.as_ref().map(|s| s.version());
        if let Some(e) = self.by_pid.get(&pid) {
            let stale = kube_version.is_some_and(|v| v != e.kube_version)
                && e.started
                    .as_ref()
                    .is_some_and(|s| !s.container_id.is_empty());
            if !stale {
                return e.resource.clone();
            }
            let started = e.started.clone();
            let pod_ip = e.pod_ip;
            let (v, attrs) = self.kube_lookup(started.as_ref());
            let rebuild = attrs != e.kube_attrs;
            let resource = if rebuild {
                Arc::new(self.build(pid, started.as_ref(), attrs.as_ref(), pod_ip))
            } else {
                e.resource.clone()
            };
            if let Some(e) = self.by_pid.get_mut(&pid) {
                e.kube_version = v;
                e.kube_attrs = attrs;
                e.resource = resource.clone();
            }
            return resource;
        }
        let res = Arc::new(self.build(pid, None, None, None));
        self.insert(
            pid,
            Entry {
                started: None,
                resource: res.clone(),
                kube_version: kube_version.unwrap_or(0),
                kube_attrs: None,
                pod_ip: None,
                exited: false,
            },
        );
        res
    }

    fn insert(&mut self, pid: u32, res: Entry) {
        if self.by_pid.insert(pid, res).is_none() {
            self.order.push_back(pid);
        }
        while self.by_pid.len() > MAX_PROCESSES {
            // An exited process first (skipping pids that started again).
            if let Some(old) = self.exited.pop_front() {
                if self.by_pid.get(&old).is_some_and(|e| e.exited) {
                    self.by_pid.remove(&old);
                }
                continue;
            }
            match self.order.pop_front() {
                Some(old) => {
                    self.by_pid.remove(&old);
                }
                None => break,
            }
        }
        // The order keeps pids forgotten as exited: dropped now and then.
        if self.order.len() > 2 * MAX_PROCESSES {
            let live = &self.by_pid;
            self.order.retain(|pid| live.contains_key(pid));
        }
    }

    fn build(
        &self,
        pid: u32,
        p: Option<&Started>,
        kube: Option<&BTreeMap<String, String>>,
        pod_ip: Option<IpAddr>,
    ) -> ProcessResource {
        let s = &self.settings;
        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        let exe_name = p
            .map(|p| {
                p.exe_path
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .filter(|n| !n.is_empty());
        // A process gone before the loader read its executable (a short-lived
        // client) is named by the kernel's task name.
        let task_name = p.map(|p| p.comm.clone()).filter(|n| !n.is_empty());
        attrs.insert(
            "service.name".into(),
            exe_name
                .clone()
                .or_else(|| task_name.clone())
                .unwrap_or_else(|| "unknown_service".to_string()),
        );
        attrs.insert(
            "service.instance.id".into(),
            format!("{}-{pid}", s.host_name),
        );
        attrs.insert("host.name".into(), s.host_name.clone());
        attrs.insert("telemetry.sdk.name".into(), SDK_NAME.into());
        attrs.insert(
            "telemetry.sdk.version".into(),
            env!("CARGO_PKG_VERSION").into(),
        );
        if let Some(p) = p {
            if !p.exe_path.is_empty() {
                attrs.insert("process.executable.path".into(), p.exe_path.clone());
            }
            if let Some(name) = exe_name.or(task_name) {
                attrs.insert("process.executable.name".into(), name);
            }
            if !p.container_id.is_empty() {
                attrs.insert("container.id".into(), p.container_id.clone());
            }
        }
        for (k, v) in self.loader.iter().chain(kube.into_iter().flatten()) {
            attrs.insert(k.clone(), v.clone());
        }
        // The pod's own IP when decoration found the pod; the evidence otherwise.
        if let (None, Some(ip)) = (kube, pod_ip) {
            attrs.insert(POD_IP.into(), ip.to_string());
        }
        for (k, v) in p.into_iter().flat_map(|p| &p.own) {
            attrs.insert(k.clone(), v.clone());
        }
        for (k, v) in &s.resource_attributes {
            attrs.insert(k.clone(), v.clone());
        }
        if let Some(name) = &s.service_name {
            attrs.insert("service.name".into(), name.clone());
        }
        if let Some(ns) = &s.service_namespace {
            attrs.insert("service.namespace".into(), ns.clone());
        }
        let mut kvs: Vec<KeyValue> = attrs
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect();
        kvs.push(KeyValue::new("process.pid", i64::from(pid)));
        ProcessResource::new(pid, Resource::new(kvs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::{Key, Value};

    fn started(pid: u32, exe: &str) -> ProcessStarted {
        ProcessStarted {
            pid,
            exe_path: exe.into(),
            container_id: "abc123".into(),
            ..Default::default()
        }
    }

    fn get(r: &ProcessResource, key: &'static str) -> Option<Value> {
        r.resource.get(&Key::from_static_str(key))
    }

    fn settings() -> ResourceSettings {
        ResourceSettings {
            host_name: "box".into(),
            ..Default::default()
        }
    }

    #[test]
    fn loader_attributes_go_to_later_resources_and_configuration_wins() {
        let mut s = settings();
        s.resource_attributes
            .insert("tandem.loader.uid".into(), "configured".into());
        let mut m = ProcessMap::new(s);
        let before = m.get(1);
        m.set_loader_attributes(BTreeMap::from([
            ("tandem.loader.uid".to_string(), "65534".to_string()),
            (
                "tandem.loader.capabilities.excess".to_string(),
                String::new(),
            ),
            ("tandem.loader.no_new_privs".to_string(), "true".to_string()),
        ]));
        let after = m.get(2);
        let get = |r: &ProcessResource, k: &str| {
            r.resource
                .get(&opentelemetry::Key::from(k.to_string()))
                .map(|v| v.to_string())
        };
        assert_eq!(get(&before, "tandem.loader.no_new_privs"), None);
        assert_eq!(
            get(&after, "tandem.loader.no_new_privs").as_deref(),
            Some("true")
        );
        assert_eq!(
            get(&after, "tandem.loader.uid").as_deref(),
            Some("configured")
        );
    }

    #[test]
    fn resource_from_process_started() {
        let mut m = ProcessMap::new(settings());
        m.on_started(&started(42, "/usr/bin/python3.11"));
        let r = m.get(42);
        assert_eq!(r.service_name, "python3.11");
        assert_eq!(get(&r, "service.name"), Some("python3.11".into()));
        assert_eq!(get(&r, "service.instance.id"), Some("box-42".into()));
        assert_eq!(get(&r, "host.name"), Some("box".into()));
        assert_eq!(get(&r, "process.pid"), Some(42i64.into()));
        assert_eq!(
            get(&r, "process.executable.path"),
            Some("/usr/bin/python3.11".into())
        );
        assert_eq!(get(&r, "container.id"), Some("abc123".into()));
        assert_eq!(get(&r, "telemetry.sdk.name"), Some("tandem".into()));
        assert_eq!(get(&r, "telemetry.sdk.language"), None);
    }

    #[test]
    fn unknown_process_and_overrides() {
        let mut s = settings();
        s.resource_attributes
            .insert("deployment.environment.name".into(), "prod".into());
        s.resource_attributes
            .insert("service.name".into(), "from-attrs".into());
        let mut m = ProcessMap::new(s.clone());
        let r = m.get(7);
        assert_eq!(r.service_name, "from-attrs");
        assert_eq!(get(&r, "deployment.environment.name"), Some("prod".into()));
        assert_eq!(get(&r, "process.executable.path"), None);

        s.service_name = Some("checkout".into());
        s.service_namespace = Some("shop".into());
        let mut m = ProcessMap::new(s);
        m.on_started(&started(8, "/bin/app"));
        let r = m.get(8);
        assert_eq!(r.service_name, "checkout");
        assert_eq!(get(&r, "service.namespace"), Some("shop".into()));

        let mut m = ProcessMap::new(settings());
        assert_eq!(m.get(9).service_name, "unknown_service");
        // A start seen later replaces the minimal entry.
        m.on_started(&started(9, "/bin/late"));
        assert_eq!(m.get(9).service_name, "late");

        // Gone before its executable was read: the kernel's task name.
        m.on_started(&ProcessStarted {
            comm: "curl".into(),
            ..started(10, "")
        });
        let r = m.get(10);
        assert_eq!(r.service_name, "curl");
        assert_eq!(get(&r, "process.executable.name"), Some("curl".into()));
        assert_eq!(get(&r, "process.executable.path"), None);
    }

    #[test]
    fn bounded() {
        let mut m = ProcessMap::new(settings());
        for pid in 0..(MAX_PROCESSES as u32 + 10) {
            m.on_started(&started(pid, "/bin/x"));
        }
        assert_eq!(m.by_pid.len(), MAX_PROCESSES);
        assert!(!m.by_pid.contains_key(&0));
        assert!(m.by_pid.contains_key(&(MAX_PROCESSES as u32 + 9)));
    }

    #[test]
    fn churn_forgets_exited_processes_before_long_lived_ones() {
        let mut m = ProcessMap::new(settings());
        m.on_started(&started(1, "/usr/sbin/nginx"));
        // Far more short-lived processes than the map holds, each exiting.
        for pid in 100..(100 + 3 * MAX_PROCESSES as u32) {
            m.on_started(&started(pid, "/usr/bin/curl"));
            m.on_exit(pid);
        }
        assert_eq!(m.get(1).service_name, "nginx");
        // The last exited ones are still known (for their late events).
        assert_eq!(m.get(99 + 3 * MAX_PROCESSES as u32).service_name, "curl");
        assert!(m.by_pid.len() <= MAX_PROCESSES);
        assert!(m.order.len() <= 2 * MAX_PROCESSES + 1);
        assert!(m.exited.len() <= MAX_PROCESSES);
    }

    #[test]
    fn kubernetes_metadata_learnt_late_decorates_the_next_spans() {
        use crate::kube::meta::{Owner, PodMeta};
        let store = Arc::new(Store::new(Some("prod".into())));
        let mut m = ProcessMap::new(settings());
        m.set_kubernetes(store.clone());
        m.on_started(&started(5, "/usr/bin/server"));
        // The API server has not answered yet: undecorated.
        assert_eq!(m.get(5).service_name, "server");
        assert_eq!(get(&m.get(5), "k8s.pod.name"), None);
        let first = m.get(5);
        assert!(
            Arc::ptr_eq(&first, &m.get(5)),
            "cached while nothing changed"
        );
        store.pod_apply(PodMeta {
            uid: "u".into(),
            name: "web-0".into(),
            namespace: "shop".into(),
            node_name: "n1".into(),
            start_time: Some("2026-01-01T00:00:00Z".into()),
            owner: Some(Owner {
                kind: "StatefulSet".into(),
                name: "web".into(),
            }),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            containers: vec![("abc123".into(), "app".into())],
            ips: vec![],
        });
        let r = m.get(5);
        assert_eq!(r.service_name, "web");
        assert_eq!(get(&r, "k8s.pod.name"), Some("web-0".into()));
        assert_eq!(get(&r, "k8s.statefulset.name"), Some("web".into()));
        assert_eq!(get(&r, "k8s.cluster.name"), Some("prod".into()));
        assert_eq!(get(&r, "service.namespace"), Some("shop".into()));
        // An unrelated change keeps the same resource.
        store.set_detected_cluster_name(Some("other".into()));
        assert!(Arc::ptr_eq(&r, &m.get(5)));
    }
}

#[cfg(test)]
mod own_env_tests {
    use super::*;
    use opentelemetry::Key;

    #[test]
    fn a_process_names_itself_with_its_own_otel_variables() {
        let mut m = ProcessMap::new(ResourceSettings {
            host_name: "box".into(),
            ..Default::default()
        });
        m.on_started(&ProcessStarted {
            pid: 5,
            exe_path: "/usr/bin/python3.11".into(),
            otel_env: vec![
                "OTEL_RESOURCE_ATTRIBUTES=service.namespace=shop,deployment.environment=prod,service.name=ignored".into(),
                "OTEL_SERVICE_NAME=checkout".into(),
                "OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318".into(),
            ],
            ..Default::default()
        });
        let r = m.get(5);
        let get = |k: &'static str| {
            r.resource
                .get(&Key::from_static_str(k))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("checkout"));
        assert_eq!(get("service.namespace").as_deref(), Some("shop"));
        assert_eq!(get("deployment.environment").as_deref(), Some("prod"));
        assert_eq!(r.service_name, "checkout");
        // A malformed OTEL_RESOURCE_ATTRIBUTES is ignored whole.
        m.on_started(&ProcessStarted {
            pid: 6,
            exe_path: "/usr/bin/node".into(),
            otel_env: vec!["OTEL_RESOURCE_ATTRIBUTES=no-equals-sign".into()],
            ..Default::default()
        });
        assert_eq!(m.get(6).service_name, "node");
        // tandem's own OTEL_SERVICE_NAME still wins over everything.
        let mut m = ProcessMap::new(ResourceSettings {
            service_name: Some("forced".into()),
            ..Default::default()
        });
        m.on_started(&ProcessStarted {
            pid: 5,
            otel_env: vec!["OTEL_SERVICE_NAME=checkout".into()],
            ..Default::default()
        });
        assert_eq!(m.get(5).service_name, "forced");
    }
}

#[cfg(test)]
mod pod_ip_tests {
    use super::*;
    use opentelemetry::Key;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn pod_ip(r: &ProcessResource) -> Option<String> {
        r.resource
            .get(&Key::from_static_str(POD_IP))
            .map(|v| v.to_string())
    }

    /// A map knowing pid 5 in container `cid` ("" = not in a container).
    fn map_with(cid: &str) -> ProcessMap {
        let mut m = ProcessMap::new(ResourceSettings {
            host_name: "box".into(),
            ..Default::default()
        });
        m.on_started(&ProcessStarted {
            pid: 5,
            exe_path: "/usr/bin/server".into(),
            container_id: cid.into(),
            ..Default::default()
        });
        m
    }

    #[test]
    fn the_rule_needs_a_container_and_a_routable_local_address() {
        assert_eq!(pod_ip_evidence(true, ip("10.1.2.3")), Some(ip("10.1.2.3")));
        assert_eq!(pod_ip_evidence(true, ip("fd00::7")), Some(ip("fd00::7")));
        // A dual-stack listener's view of an IPv4 connection.
        assert_eq!(
            pod_ip_evidence(true, ip("::ffff:10.1.2.3")),
            Some(ip("10.1.2.3"))
        );
        for none in [
            "127.0.0.1",
            "127.0.0.2",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "169.254.1.1",
            "fe80::1",
            "224.0.0.1",
        ] {
            assert_eq!(pod_ip_evidence(true, ip(none)), None, "{none}");
        }
        // Outside a container the addresses are the host's: no evidence.
        assert_eq!(pod_ip_evidence(false, ip("10.1.2.3")), None);
    }

    #[test]
    fn a_container_serving_on_a_non_loopback_address_gets_k8s_pod_ip_once() {
        let mut m = map_with("abc123");
        assert_eq!(pod_ip(&m.get(5)), None, "no evidence yet");
        m.on_served(5, ip("127.0.0.1"));
        assert_eq!(pod_ip(&m.get(5)), None, "loopback is no evidence");
        m.on_served(5, ip("10.244.0.7"));
        let r = m.get(5);
        assert_eq!(pod_ip(&r).as_deref(), Some("10.244.0.7"));
        assert_eq!(r.service_name, "server");
        // Built once: later connections (any address) change nothing.
        m.on_served(5, ip("10.244.0.7"));
        m.on_served(5, ip("10.9.9.9"));
        assert!(Arc::ptr_eq(&r, &m.get(5)));
        // A new process with that pid starts without it.
        m.on_started(&ProcessStarted {
            pid: 5,
            exe_path: "/usr/bin/other".into(),
            container_id: "abc123".into(),
            ..Default::default()
        });
        assert_eq!(pod_ip(&m.get(5)), None);
    }

    #[test]
    fn no_k8s_pod_ip_outside_a_container_or_for_an_unknown_process() {
        let mut m = map_with("");
        m.on_served(5, ip("10.244.0.7"));
        assert_eq!(pod_ip(&m.get(5)), None, "not in a container");
        // Never seen starting: nothing known of its container.
        m.on_served(6, ip("10.244.0.7"));
        assert_eq!(pod_ip(&m.get(6)), None);
        m.on_served(6, ip("10.244.0.7"));
        assert_eq!(pod_ip(&m.get(6)), None);
    }

    #[test]
    fn decoration_gives_the_pods_own_ip_and_evidence_fills_in_when_no_pod_is_found() {
        use crate::kube::meta::PodMeta;
        let store = Arc::new(Store::new(None));
        let mut m = map_with("abc123");
        m.set_kubernetes(store.clone());
        m.on_started(&ProcessStarted {
            pid: 5,
            exe_path: "/usr/bin/server".into(),
            container_id: "abc123".into(),
            ..Default::default()
        });
        // Decoration on, no pod known for the container: the evidence.
        m.on_served(5, ip("192.0.2.9"));
        assert_eq!(pod_ip(&m.get(5)).as_deref(), Some("192.0.2.9"));
        // A pod decorating a process first, evidence later: the resource stays.
        m.on_started(&ProcessStarted {
            pid: 6,
            exe_path: "/usr/bin/server".into(),
            container_id: "def456".into(),
            ..Default::default()
        });
        // The pod is learnt: its status IP, as the rest of its metadata.
        store.pod_apply(PodMeta {
            uid: "u".into(),
            name: "web-0".into(),
            namespace: "shop".into(),
            node_name: "n1".into(),
            start_time: None,
            owner: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            containers: vec![
                ("abc123".into(), "app".into()),
                ("def456".into(), "side".into()),
            ],
            ips: vec![ip("10.244.0.7")],
        });
        let r = m.get(5);
        let decorated = m.get(6);
        assert_eq!(pod_ip(&decorated).as_deref(), Some("10.244.0.7"));
        m.on_served(6, ip("10.244.0.7"));
        assert!(Arc::ptr_eq(&decorated, &m.get(6)), "not built again");
        assert_eq!(pod_ip(&r).as_deref(), Some("10.244.0.7"));
        assert_eq!(
            r.resource
                .get(&Key::from_static_str("k8s.pod.name"))
                .map(|v| v.to_string())
                .as_deref(),
            Some("web-0")
        );
    }
}
