//! What tandem keeps of each Kubernetes object (only the fields decoration and
//! discovery need), and the rules that turn it into attributes.
//!
//! # Owners
//!
//! A pod's controller (the `ownerReferences` entry with `controller: true`, else the
//! first) names its direct owner. A `ReplicaSet` owned by a `Deployment` (learnt from
//! the ReplicaSet watcher) gives `k8s.deployment.name`; before that ReplicaSet is
//! known, a ReplicaSet name ending in `-<pod-template-hash label>` gives it too (the
//! naming rule of the Deployment controller). The top owner (Deployment, else the
//! direct owner) is `k8s.owner.name`.
//!
//! # service.name and service.namespace (OBI's rule, the OpenTelemetry convention)
//!
//! `service.name`, first found of: the pod annotation
//! `resource.opentelemetry.io/service.name`; the pod labels of
//! `resource_labels["service.name"]` (default `app.kubernetes.io/instance`, then
//! `app.kubernetes.io/name`); the top owner's name (Deployment, ReplicaSet,
//! StatefulSet, DaemonSet, Job, CronJob); the pod name. `service.namespace`: the
//! annotation `resource.opentelemetry.io/service.namespace`; the labels of
//! `resource_labels["service.namespace"]` (default `app.kubernetes.io/part-of`); the
//! pod's namespace. Every other `resource.opentelemetry.io/<key>` annotation becomes
//! the resource attribute `<key>`, and every other entry of `resource_labels`
//! (default `service.version`: `app.kubernetes.io/version`) the attribute from the
//! first of its labels the pod has, unless an annotation gave it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// Annotation prefix of resource attributes (OpenTelemetry convention).
pub const RESOURCE_ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";
/// `attributes.kubernetes.resource_labels`: resource attribute → the pod labels that
/// give it, first found wins.
pub type ResourceLabels = BTreeMap<String, Vec<String>>;

/// OBI's default [`ResourceLabels`], with the keys of `configured` replacing theirs.
pub fn resource_labels(configured: &ResourceLabels) -> ResourceLabels {
    let mut labels: ResourceLabels = [
        (
            "service.name",
            &["app.kubernetes.io/instance", "app.kubernetes.io/name"][..],
        ),
        ("service.namespace", &["app.kubernetes.io/part-of"][..]),
        ("service.version", &["app.kubernetes.io/version"][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
    .collect();
    labels.extend(configured.clone());
    labels
}
/// Label of the pods of a Deployment's ReplicaSet (the ReplicaSet name's suffix).
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Annotations longer than this are not kept (e.g. `last-applied-configuration`).
pub const MAX_ANNOTATION_VALUE: usize = 1024;

/// Node labels that name the cluster, in order of preference (EKS, eksctl, AKS,
/// Cluster API, GKE's fleet label).
pub const CLUSTER_NAME_NODE_LABELS: &[&str] = &[
    "eks.amazonaws.com/cluster-name",
    "alpha.eksctl.io/cluster-name",
    "kubernetes.azure.com/cluster",
    "cluster.x-k8s.io/cluster-name",
    "container.googleapis.com/cluster-name",
];

/// A pod's controlling owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// What is kept of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node_name: String,
    /// RFC 3339 (`status.startTime`).
    pub start_time: Option<String>,
    pub owner: Option<Owner>,
    pub labels: BTreeMap<String, String>,
    /// Annotations up to [`MAX_ANNOTATION_VALUE`] bytes each.
    pub annotations: BTreeMap<String, String>,
    /// (container id without the runtime prefix, lower case; container name).
    pub containers: Vec<(String, String)>,
    /// Pod IPs (not when the pod uses the host's network: its IP is the node's).
    pub ips: Vec<IpAddr>,
}

/// The container id of a `containerStatuses[].containerID` (`containerd://<hex>`,
/// `docker://<hex>`, `cri-o://<hex>`), lower case; `None` when empty.
pub fn strip_runtime(container_id: &str) -> Option<String> {
    let id = container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
        .trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<Owner> {
    let refs = refs?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .map(|r| Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
}

fn meta_str(v: Option<&String>) -> String {
    v.cloned().unwrap_or_default()
}

impl PodMeta {
    /// Keeps what decoration needs of `pod`; `None` without a uid or name.
    pub fn from_pod(pod: &Pod) -> Option<PodMeta> {
        let m: &ObjectMeta = &pod.metadata;
        let uid = m.uid.clone().filter(|u| !u.is_empty())?;
        let name = m.name.clone().filter(|n| !n.is_empty())?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut containers = Vec::new();
        if let Some(st) = status {
            for list in [
                &st.container_statuses,
                &st.init_container_statuses,
                &st.ephemeral_container_statuses,
            ]
            .into_iter()
            .flatten()
            {
                for c in list {
                    if let Some(id) = c.container_id.as_deref().and_then(strip_runtime) {
                        containers.push((id, c.name.clone()));
                    }
                }
            }
        }
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let mut ips: Vec<IpAddr> = Vec::new();
        if !host_network {
            if let Some(st) = status {
                let listed = st.pod_ips.iter().flatten().map(|p| p.ip.as_str());
                for ip in st.pod_ip.iter().map(String::as_str).chain(listed) {
                    if let Ok(ip) = ip.parse::<IpAddr>() {
                        if !ips.contains(&ip) {
                            ips.push(ip);
                        }
                    }
                }
            }
        }
        Some(PodMeta {
            uid,
            name,
            namespace: meta_str(m.namespace.as_ref()),
            node_name: meta_str(spec.and_then(|s| s.node_name.as_ref())),
            start_time: status
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.to_string()),
            owner: controller(m.owner_references.as_ref()),
            labels: m.labels.clone().unwrap_or_default(),
            annotations: m
                .annotations
                .iter()
                .flatten()
                .filter(|(_, v)| v.len() <= MAX_ANNOTATION_VALUE)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            containers,
            ips,
        })
    }

    /// The name of the container with id (or unique prefix of at least 12 digits) `id`.
    pub fn container_name(&self, id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(c, _)| c == id || (id.len() >= 12 && c.starts_with(id)))
            .map(|(_, n)| n.as_str())
    }
}

/// A ReplicaSet's name and its Deployment, if a Deployment controls it.
pub fn replicaset_owner(rs: &ReplicaSet) -> Option<((String, String), Option<String>)> {
    let m = &rs.metadata;
    let key = (meta_str(m.namespace.as_ref()), m.name.clone()?);
    let deployment = controller(m.owner_references.as_ref())
        .filter(|o| o.kind == "Deployment")
        .map(|o| o.name);
    Some((key, deployment))
}

/// A Service's cluster IPs with its (namespace, name).
pub fn service_ips(svc: &Service) -> Vec<(IpAddr, (String, String))> {
    let m = &svc.metadata;
    let (Some(name), Some(spec)) = (m.name.clone(), svc.spec.as_ref()) else {
        return Vec::new();
    };
    let ns = meta_str(m.namespace.as_ref());
    let mut out: Vec<(IpAddr, (String, String))> = Vec::new();
    let listed = spec.cluster_ips.iter().flatten();
    for ip in spec.cluster_ip.iter().chain(listed) {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            if !out.iter().any(|(i, _)| *i == ip) {
                out.push((ip, (ns.clone(), name.clone())));
            }
        }
    }
    out
}

/// The cluster name a node's labels give, if any ([`CLUSTER_NAME_NODE_LABELS`]).
pub fn cluster_name_of_node(node: &Node) -> Option<String> {
    let labels = node.metadata.labels.as_ref()?;
    CLUSTER_NAME_NODE_LABELS
        .iter()
        .find_map(|l| labels.get(*l))
        .filter(|v| !v.is_empty())
        .cloned()
}

/// A pod's owners as resolved: direct owner, and the Deployment above a ReplicaSet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub replicaset: Option<String>,
    pub deployment: Option<String>,
    pub statefulset: Option<String>,
    pub daemonset: Option<String>,
    pub job: Option<String>,
    pub cronjob: Option<String>,
    /// The top owner's name (`k8s.owner.name`), if the pod has an owner.
    pub top: Option<String>,
}

impl Owners {
    /// Resolves `pod`'s owners; `rs_deployment` answers which Deployment controls a
    /// ReplicaSet (`Some(None)`: known, controlled by none; `None`: not known).
    pub fn resolve(
        pod: &PodMeta,
        rs_deployment: impl Fn(&str) -> Option<Option<String>>,
    ) -> Owners {
        let mut o = Owners::default();
        let Some(owner) = &pod.owner else {
            return o;
        };
        match owner.kind.as_str() {
            "ReplicaSet" => {
                o.replicaset = Some(owner.name.clone());
                o.deployment = match rs_deployment(&owner.name) {
                    Some(known) => known,
                    None => pod
                        .labels
                        .get(POD_TEMPLATE_HASH_LABEL)
                        .and_then(|h| owner.name.strip_suffix(h.as_str()))
                        .and_then(|n| n.strip_suffix('-'))
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned),
                };
            }
            "StatefulSet" => o.statefulset = Some(owner.name.clone()),
            "DaemonSet" => o.daemonset = Some(owner.name.clone()),
            "Job" => o.job = Some(owner.name.clone()),
            "CronJob" => o.cronjob = Some(owner.name.clone()),
            _ => {}
        }
        o.top = o.deployment.clone().or_else(|| Some(owner.name.clone()));
        o
    }
}

/// The resource attributes of a container of `pod`: every `k8s.*` attribute
/// (`k8s.pod.ip` from `status.podIP`),
/// `service.name` and `service.namespace` (see the module doc), and the
/// `resource.opentelemetry.io/*` annotations.
pub fn container_attributes(
    pod: &PodMeta,
    container_name: Option<&str>,
    owners: &Owners,
    cluster_name: Option<&str>,
    resource_labels: &ResourceLabels,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            a.insert(k.to_owned(), v.to_owned());
        }
    };
    put("k8s.namespace.name", Some(&pod.namespace));
    put("k8s.pod.name", Some(&pod.name));
    put("k8s.pod.uid", Some(&pod.uid));
    // `status.podIP` (the first of `ips`); none for a pod on the host's network.
    let ip = pod.ips.first().map(ToString::to_string);
    put("k8s.pod.ip", ip.as_deref());
    put("k8s.node.name", Some(&pod.node_name));
    put("k8s.pod.start_time", pod.start_time.as_deref());
    put("k8s.container.name", container_name);
    put("k8s.replicaset.name", owners.replicaset.as_deref());
    put("k8s.deployment.name", owners.deployment.as_deref());
    put("k8s.statefulset.name", owners.statefulset.as_deref());
    put("k8s.daemonset.name", owners.daemonset.as_deref());
    put("k8s.job.name", owners.job.as_deref());
    put("k8s.cronjob.name", owners.cronjob.as_deref());
    put("k8s.owner.name", owners.top.as_deref());
    put("k8s.cluster.name", cluster_name);
    for (k, v) in &pod.annotations {
        if let Some(attr) = k.strip_prefix(RESOURCE_ANNOTATION_PREFIX) {
            if !attr.is_empty() && !v.is_empty() {
                a.insert(attr.to_owned(), v.clone());
            }
        }
    }
    let label_of = |attr: &str| {
        resource_labels
            .get(attr)
            .into_iter()
            .flatten()
            .find_map(|l| pod.labels.get(l).filter(|v| !v.is_empty()))
    };
    for attr in resource_labels.keys() {
        if attr == "service.name" || attr == "service.namespace" || a.contains_key(attr) {
            continue;
        }
        if let Some(v) = label_of(attr) {
            a.insert(attr.clone(), v.clone());
        }
    }
    let service_name = pod
        .annotations
        .get(&format!("{RESOURCE_ANNOTATION_PREFIX}service.name"))
        .filter(|v| !v.is_empty())
        .or_else(|| label_of("service.name"))
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| owners.top.clone())
        .unwrap_or_else(|| pod.name.clone());
    let service_namespace = pod
        .annotations
        .get(&format!("{RESOURCE_ANNOTATION_PREFIX}service.namespace"))
        .filter(|v| !v.is_empty())
        .or_else(|| label_of("service.namespace"))
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| pod.namespace.clone());
    a.insert("service.name".into(), service_name);
    if !service_namespace.is_empty() {
        a.insert("service.namespace".into(), service_namespace);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json(extra_meta: serde_json::Value, owner: Option<(&str, &str)>) -> Pod {
        let mut meta = serde_json::json!({
            "name": "checkout-7d9f8b6c5d-x2x9z",
            "namespace": "shop",
            "uid": "0b4e6a2c-1111-2222-3333-444455556666",
            "labels": {"pod-template-hash": "7d9f8b6c5d"},
        });
        if let Some((kind, name)) = owner {
            meta["ownerReferences"] = serde_json::json!([{
                "apiVersion": "apps/v1", "kind": kind, "name": name,
                "uid": "u", "controller": true
            }]);
        }
        if let (Some(m), Some(extra)) = (meta.as_object_mut(), extra_meta.as_object()) {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(serde_json::json!({
            "metadata": meta,
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
            "status": {
                "podIP": "10.1.2.3",
                "podIPs": [{"ip": "10.1.2.3"}, {"ip": "fd00::3"}],
                "startTime": "2026-01-02T03:04:05Z",
                "containerStatuses": [{
                    "name": "app", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0,
                    "containerID": format!("containerd://{}", "AB".repeat(32))
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn pod_fields_kept() {
        let p = PodMeta::from_pod(&pod_json(serde_json::json!({}), None)).unwrap();
        assert_eq!(p.containers, vec![("ab".repeat(32), "app".to_string())]);
        assert_eq!(p.container_name(&"ab".repeat(6)), Some("app"));
        assert_eq!(p.container_name("abab"), None);
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.start_time.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(p.node_name, "node-a");
        assert_eq!(strip_runtime("cri-o://ABC"), Some("abc".into()));
        assert_eq!(strip_runtime(""), None);
    }

    #[test]
    fn deployment_from_replicaset_or_hash() {
        let p = PodMeta::from_pod(&pod_json(
            serde_json::json!({}),
            Some(("ReplicaSet", "checkout-7d9f8b6c5d")),
        ))
        .unwrap();
        // Known ReplicaSet.
        let o = Owners::resolve(&p, |_| Some(Some("checkout".into())));
        assert_eq!(o.deployment.as_deref(), Some("checkout"));
        assert_eq!(o.top.as_deref(), Some("checkout"));
        // Known, no Deployment above it.
        let o = Owners::resolve(&p, |_| Some(None));
        assert_eq!(o.deployment, None);
        assert_eq!(o.top.as_deref(), Some("checkout-7d9f8b6c5d"));
        // Not known yet: the pod-template-hash rule.
        let o = Owners::resolve(&p, |_| None);
        assert_eq!(o.deployment.as_deref(), Some("checkout"));
        assert_eq!(o.replicaset.as_deref(), Some("checkout-7d9f8b6c5d"));
    }

    /// OBI's `resource_labels`: `app.kubernetes.io/instance` before `name`, the
    /// version label, and a configured list replacing a default one.
    #[test]
    fn resource_labels_name_services() {
        let p = PodMeta::from_pod(&pod_json(
            serde_json::json!({"labels": {
                "app.kubernetes.io/name": "checkout",
                "app.kubernetes.io/instance": "checkout-eu",
                "app.kubernetes.io/version": "1.4.2",
                "team": "payments",
            }}),
            None,
        ))
        .unwrap();
        let o = Owners::resolve(&p, |_| None);
        let a = container_attributes(&p, None, &o, None, &resource_labels(&ResourceLabels::new()));
        assert_eq!(a["service.name"], "checkout-eu");
        assert_eq!(a["service.version"], "1.4.2");
        let configured: ResourceLabels = [
            (
                "service.name".to_string(),
                vec!["app.kubernetes.io/name".to_string()],
            ),
            ("service.namespace".to_string(), vec!["team".to_string()]),
        ]
        .into();
        let a = container_attributes(&p, None, &o, None, &resource_labels(&configured));
        assert_eq!(a["service.name"], "checkout");
        assert_eq!(a["service.namespace"], "payments");
        assert_eq!(
            a["service.version"], "1.4.2",
            "defaults not configured stay"
        );
    }

    #[test]
    fn service_name_rules() {
        let attrs = |extra: serde_json::Value, owner| {
            let p = PodMeta::from_pod(&pod_json(extra, owner)).unwrap();
            let o = Owners::resolve(&p, |_| None);
            container_attributes(
                &p,
                Some("app"),
                &o,
                Some("prod"),
                &resource_labels(&ResourceLabels::new()),
            )
        };
        // Owner.
        let a = attrs(serde_json::json!({}), Some(("StatefulSet", "db")));
        assert_eq!(a["service.name"], "db");
        assert_eq!(a["service.namespace"], "shop");
        assert_eq!(a["k8s.statefulset.name"], "db");
        assert_eq!(a["k8s.cluster.name"], "prod");
        assert_eq!(a["k8s.container.name"], "app");
        assert_eq!(a["k8s.pod.ip"], "10.1.2.3", "status.podIP");
        assert!(!a.contains_key("k8s.deployment.name"));
        // No owner: the pod name.
        let a = attrs(serde_json::json!({}), None);
        assert_eq!(a["service.name"], "checkout-7d9f8b6c5d-x2x9z");
        // The label wins over the owner.
        let a = attrs(
            serde_json::json!({"labels": {"app.kubernetes.io/name": "lbl", "app.kubernetes.io/part-of": "store"}}),
            Some(("DaemonSet", "agent")),
        );
        assert_eq!(a["service.name"], "lbl");
        assert_eq!(a["service.namespace"], "store");
        assert_eq!(a["k8s.daemonset.name"], "agent");
        // The annotation wins over the label; other resource annotations are kept.
        let a = attrs(
            serde_json::json!({
                "labels": {"app.kubernetes.io/name": "lbl", "pod-template-hash": "7d9f8b6c5d"},
                "annotations": {
                    "resource.opentelemetry.io/service.name": "ann",
                    "resource.opentelemetry.io/service.namespace": "ans",
                    "resource.opentelemetry.io/deployment.environment.name": "staging",
                    "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(5000)
                }
            }),
            Some(("ReplicaSet", "checkout-7d9f8b6c5d")),
        );
        assert_eq!(a["service.name"], "ann");
        assert_eq!(a["service.namespace"], "ans");
        assert_eq!(a["deployment.environment.name"], "staging");
        assert_eq!(a["k8s.deployment.name"], "checkout");
        assert_eq!(a["k8s.owner.name"], "checkout");
    }
}
