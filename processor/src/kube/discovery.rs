//! Kubernetes-aware discovery: `discovery.instrument` entries with `k8s_*` criteria
//! become the container ids of the matching pods, which the processor adds to its
//! loader selection (re-subscribing under the same name when they change).
//!
//! Within an entry every given criterion must match (AND); entries are alternatives
//! (OR). Values are globs (`checkout-*`). `k8s_pod_labels` / `k8s_pod_annotations`
//! map a name to a value glob; the label (annotation) must exist and match.
//! `k8s_owner_name` matches any owner (ReplicaSet, Deployment, StatefulSet, DaemonSet,
//! Job, CronJob). `k8s_container_name` (or `container_name`) matches the container.
//! Other criteria of an entry that also has `k8s_*` ones (ports, `exe_path`) are not
//! part of the loader's selection: the entry selects its pods' containers whole, and
//! the processor's exact selection (`crate::select`) applies them per process. A
//! container matching a `discovery.exclude_instrument` entry with `k8s_*` criteria is
//! left out.

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobMatcher};
use tracing::warn;

use super::meta::{Owners, PodMeta};
use super::store::Store;
use crate::config::InstrumentSelector;

/// One glob criterion; an invalid glob matches only its exact text.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    text: String,
    glob: Option<GlobMatcher>,
}

impl Pattern {
    pub(crate) fn new(text: &str, key: &str) -> Pattern {
        let glob = match Glob::new(text) {
            Ok(g) => Some(g.compile_matcher()),
            Err(e) => {
                warn!(
                    "discovery: `{key}: {text}` is not a valid glob ({e}); matching it literally"
                );
                None
            }
        };
        Pattern {
            text: text.to_owned(),
            glob,
        }
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match &self.glob {
            Some(g) => g.is_match(value),
            None => self.text == value,
        }
    }
}

/// An entry's Kubernetes criteria, compiled.
#[derive(Debug, Clone, Default)]
pub struct PodSelector {
    namespace: Option<Pattern>,
    pod_name: Option<Pattern>,
    deployment: Option<Pattern>,
    replicaset: Option<Pattern>,
    daemonset: Option<Pattern>,
    statefulset: Option<Pattern>,
    job: Option<Pattern>,
    cronjob: Option<Pattern>,
    owner: Option<Pattern>,
    container: Option<Pattern>,
    labels: Vec<(String, Pattern)>,
    annotations: Vec<(String, Pattern)>,
}

fn opt(v: &Option<String>, key: &str) -> Option<Pattern> {
    v.as_deref().map(|t| Pattern::new(t, key))
}

fn map(m: &BTreeMap<String, String>, key: &str) -> Vec<(String, Pattern)> {
    m.iter()
        .map(|(k, v)| (k.clone(), Pattern::new(v, &format!("{key}.{k}"))))
        .collect()
}

fn check(p: &Option<Pattern>, value: Option<&str>) -> bool {
    match p {
        None => true,
        Some(p) => value.is_some_and(|v| p.matches(v)),
    }
}

impl PodSelector {
    /// The entry's `k8s_*` criteria; `None` when it has none.
    pub fn of(e: &InstrumentSelector) -> Option<PodSelector> {
        if !e.has_kubernetes_criteria() {
            return None;
        }
        Some(PodSelector {
            namespace: opt(&e.k8s_namespace, "k8s_namespace"),
            pod_name: opt(&e.k8s_pod_name, "k8s_pod_name"),
            deployment: opt(&e.k8s_deployment_name, "k8s_deployment_name"),
            replicaset: opt(&e.k8s_replicaset_name, "k8s_replicaset_name"),
            daemonset: opt(&e.k8s_daemonset_name, "k8s_daemonset_name"),
            statefulset: opt(&e.k8s_statefulset_name, "k8s_statefulset_name"),
            job: opt(&e.k8s_job_name, "k8s_job_name"),
            cronjob: opt(&e.k8s_cronjob_name, "k8s_cronjob_name"),
            owner: opt(&e.k8s_owner_name, "k8s_owner_name"),
            container: e
                .k8s_container_name
                .as_ref()
                .or(e.container_name.as_ref())
                .map(|t| Pattern::new(t, "k8s_container_name")),
            labels: map(&e.k8s_pod_labels, "k8s_pod_labels"),
            annotations: map(&e.k8s_pod_annotations, "k8s_pod_annotations"),
        })
    }

    /// Whether the container `container` of `pod` matches every criterion.
    pub fn matches(&self, pod: &PodMeta, owners: &Owners, container: &str) -> bool {
        let any_owner = || {
            [
                &owners.replicaset,
                &owners.deployment,
                &owners.statefulset,
                &owners.daemonset,
                &owners.job,
                &owners.cronjob,
            ]
            .into_iter()
            .flatten()
            .chain(pod.owner.as_ref().map(|o| &o.name))
            .any(|n| self.owner.as_ref().is_some_and(|p| p.matches(n)))
        };
        check(&self.namespace, Some(&pod.namespace))
            && check(&self.pod_name, Some(&pod.name))
            && check(&self.deployment, owners.deployment.as_deref())
            && check(&self.replicaset, owners.replicaset.as_deref())
            && check(&self.daemonset, owners.daemonset.as_deref())
            && check(&self.statefulset, owners.statefulset.as_deref())
            && check(&self.job, owners.job.as_deref())
            && check(&self.cronjob, owners.cronjob.as_deref())
            && (self.owner.is_none() || any_owner())
            && check(&self.container, Some(container))
            && self
                .labels
                .iter()
                .all(|(k, p)| pod.labels.get(k).is_some_and(|v| p.matches(v)))
            && self
                .annotations
                .iter()
                .all(|(k, p)| pod.annotations.get(k).is_some_and(|v| p.matches(v)))
    }
}

/// The compiled `k8s_*` entries of `discovery.instrument` and `exclude_instrument`.
#[derive(Debug, Clone, Default)]
pub struct KubeDiscovery {
    include: Vec<PodSelector>,
    exclude: Vec<PodSelector>,
}

impl KubeDiscovery {
    pub fn new(instrument: &[InstrumentSelector], exclude: &[InstrumentSelector]) -> Self {
        KubeDiscovery {
            include: instrument.iter().filter_map(PodSelector::of).collect(),
            exclude: exclude.iter().filter_map(PodSelector::of).collect(),
        }
    }

    /// Whether any `discovery.instrument` entry has `k8s_*` criteria.
    pub fn is_active(&self) -> bool {
        !self.include.is_empty()
    }

    /// Container ids of the live pods that match.
    pub fn container_ids(&self, store: &Store) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        store.for_each_container(|pod, owners, id, name| {
            if self.include.iter().any(|s| s.matches(pod, owners, name))
                && !self.exclude.iter().any(|s| s.matches(pod, owners, name))
            {
                out.insert(id.to_owned());
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::meta::Owner;

    fn pod(name: &str, ns: &str, rs: &str, labels: &[(&str, &str)], cid: &str) -> PodMeta {
        PodMeta {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: ns.into(),
            node_name: "n".into(),
            start_time: None,
            owner: Some(Owner {
                kind: "ReplicaSet".into(),
                name: rs.into(),
            }),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            annotations: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
            containers: vec![(cid.into(), "app".into())],
            ips: vec![],
        }
    }

    fn entry(yaml: &str) -> InstrumentSelector {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn criteria_are_anded_entries_ored_globs_apply() {
        let store = Store::new(None);
        store.pod_apply(pod(
            "checkout-a",
            "shop",
            "checkout-5f",
            &[("pod-template-hash", "5f"), ("tier", "web")],
            "c1",
        ));
        store.pod_apply(pod(
            "cart-b",
            "shop",
            "cart-6a",
            &[("pod-template-hash", "6a")],
            "c2",
        ));
        store.pod_apply(pod(
            "checkout-c",
            "test",
            "checkout-7b",
            &[("pod-template-hash", "7b")],
            "c3",
        ));
        store.replicaset_apply(
            ("shop".into(), "checkout-5f".into()),
            Some("checkout".into()),
        );

        let ids = |inc: &[&str], exc: &[&str]| {
            let inc: Vec<_> = inc.iter().map(|y| entry(y)).collect();
            let exc: Vec<_> = exc.iter().map(|y| entry(y)).collect();
            KubeDiscovery::new(&inc, &exc)
                .container_ids(&store)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&["k8s_namespace: shop"], &[]), ["c1", "c2"]);
        assert_eq!(
            ids(
                &["{k8s_namespace: shop, k8s_deployment_name: 'check*'}"],
                &[]
            ),
            ["c1"]
        );
        // Deployment from the pod-template-hash rule (ReplicaSet not listed).
        assert_eq!(ids(&["k8s_deployment_name: checkout"], &[]), ["c1", "c3"]);
        assert_eq!(ids(&["k8s_pod_labels: {tier: 'w*'}"], &[]), ["c1"]);
        assert_eq!(
            ids(&["k8s_pod_labels: {missing: '*'}"], &[]),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(&["k8s_pod_annotations: {team: pay*}"], &[]),
            ["c1", "c2", "c3"]
        );
        assert_eq!(ids(&["k8s_owner_name: cart-*"], &[]), ["c2"]);
        assert_eq!(
            ids(&["k8s_pod_name: cart-b", "k8s_namespace: test"], &[]),
            ["c2", "c3"]
        );
        assert_eq!(
            ids(&["k8s_namespace: '*'"], &["k8s_namespace: test"]),
            ["c1", "c2"]
        );
        assert_eq!(
            ids(&["k8s_container_name: other"], &[]),
            Vec::<String>::new()
        );
        // Entries without k8s criteria take no part.
        assert!(!KubeDiscovery::new(&[entry("exe_path: '*/nginx'")], &[]).is_active());
    }
}
