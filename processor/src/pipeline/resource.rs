//! Who produced a span: one OpenTelemetry resource per instrumented process, built
//! from the loader's `ProcessStarted` events.
//!
//! Attributes, later ones overriding earlier ones:
//! 1. `service.name` (the executable's file name, or `unknown_service` when tandem
//!    never saw the process start), `service.instance.id` (`<host.name>-<pid>`),
//!    `host.name`, `process.pid`, `process.executable.path`,
//!    `process.executable.name`, `container.id` (when in a container),
//!    `telemetry.sdk.name` = `tandem`, `telemetry.sdk.version` = this crate's version;
//!    then the loader's posture (`tandem.loader.*`, see [`ProcessMap::set_loader_attributes`]);
//! 2. `resource_attributes` (`OTEL_RESOURCE_ATTRIBUTES`);
//! 3. `service_name` / `service_namespace` settings (`OTEL_SERVICE_NAME`).
//!
//! OBI names its SDK `opentelemetry-ebpf-instrumentation` and sets
//! `telemetry.sdk.language` to the language it detected in the process; tandem
//! detects no language, so it leaves `telemetry.sdk.language` out rather than report
//! its own. The command line is not reported (it may hold secrets).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use tandem_proto::v1::ProcessStarted;

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
}

/// What is known of each process, fed from `ProcessStarted` events.
#[derive(Debug)]
pub struct ProcessMap {
    settings: ResourceSettings,
    /// `tandem.loader.*` attributes: the loader's capability posture.
    loader: BTreeMap<String, String>,
    by_pid: HashMap<u32, Arc<ProcessResource>>,
    /// Insertion order, for forgetting the oldest past `MAX_PROCESSES`.
    order: std::collections::VecDeque<u32>,
}

impl ProcessMap {
    pub fn new(settings: ResourceSettings) -> Self {
        ProcessMap {
            settings,
            loader: BTreeMap::new(),
            by_pid: HashMap::new(),
            order: Default::default(),
        }
    }

    /// A process started (or was found running). A pid seen again replaces the entry:
    /// it is a new process.
    pub fn on_started(&mut self, p: &ProcessStarted) {
        let res = Arc::new(self.build(p.pid, Some(p)));
        self.insert(p.pid, res);
    }

    /// Sets the `tandem.loader.*` attributes (the loader's capability posture) of
    /// the resources built from now on; resources built before keep theirs.
    pub fn set_loader_attributes(&mut self, attrs: BTreeMap<String, String>) {
        self.loader = attrs;
    }

    /// The resource of `pid`; a process tandem never saw start gets a minimal one
    /// (remembered, so that all its spans share it).
    pub fn get(&mut self, pid: u32) -> Arc<ProcessResource> {
        if let Some(r) = self.by_pid.get(&pid) {
            return r.clone();
        }
        let res = Arc::new(self.build(pid, None));
        self.insert(pid, res.clone());
        res
    }

    fn insert(&mut self, pid: u32, res: Arc<ProcessResource>) {
        if self.by_pid.insert(pid, res).is_none() {
            self.order.push_back(pid);
        }
        while self.by_pid.len() > MAX_PROCESSES {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_pid.remove(&old);
                }
                None => break,
            }
        }
    }

    fn build(&self, pid: u32, p: Option<&ProcessStarted>) -> ProcessResource {
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
        attrs.insert(
            "service.name".into(),
            exe_name
                .clone()
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
            if let Some(name) = exe_name {
                attrs.insert("process.executable.name".into(), name);
            }
            if !p.container_id.is_empty() {
                attrs.insert("container.id".into(), p.container_id.clone());
            }
        }
        for (k, v) in self.loader.iter().chain(&s.resource_attributes) {
            attrs.insert(k.clone(), v.clone());
        }
        if let Some(name) = &s.service_name {
            attrs.insert("service.name".into(), name.clone());
        }
        if let Some(ns) = &s.service_namespace {
            attrs.insert("service.namespace".into(), ns.clone());
        }
        let service_name = attrs.get("service.name").cloned().unwrap_or_default();
        let mut kvs: Vec<KeyValue> = attrs
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect();
        kvs.push(KeyValue::new("process.pid", i64::from(pid)));
        ProcessResource {
            pid,
            service_name,
            resource: Resource::builder_empty().with_attributes(kvs).build(),
        }
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
}
