//! The in-memory indexes the watchers fill and the span path reads.
//!
//! Writers (the watcher tasks) and readers (decoration, on the processor's event
//! loop) share one `RwLock`, held for map operations only: nothing awaits under it,
//! and nothing on the span path ever waits for the API server. Every change bumps
//! [`Store::version`], so readers can cache what they derived and look again only
//! when something changed.
//!
//! Memory: pods are those of this node (field selector); per pod only [`PodMeta`].
//! ReplicaSets keep their Deployment's name, Services their cluster IPs. Each map is
//! bounded ([`MAX_PODS`], [`MAX_OBJECTS`]); what does not fit is counted and not kept.
//!
//! Deleted pods stay findable for a grace period ([`Store::expire`]), so that spans
//! that arrive late (a connection's last request, the exporter's queue) are still
//! decorated.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::meta::{container_attributes, Owners, PodMeta};

/// Most pods kept (a node runs at most a few hundred).
pub const MAX_PODS: usize = 10_000;
/// Most ReplicaSets, and most Service IPs, kept.
pub const MAX_OBJECTS: usize = 100_000;

#[derive(Debug)]
struct PodEntry {
    meta: Arc<PodMeta>,
    deleted_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<String, PodEntry>,
    by_container: HashMap<String, String>,
    by_ip: HashMap<IpAddr, String>,
    /// (namespace, name) -> the Deployment controlling it, if any.
    replicasets: HashMap<(String, String), Option<String>>,
    services: HashMap<IpAddr, (String, String)>,
    detected_cluster_name: Option<String>,
}

/// What a peer address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `Pod` or `Service`.
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    /// The pod's top owner (Deployment, StatefulSet, …); for a Service, itself.
    pub owner_name: Option<String>,
}

/// Counts of what the store refused to keep (bounds reached).
#[derive(Debug, Default)]
pub struct Overflow {
    pub pods: AtomicU64,
    pub objects: AtomicU64,
}

/// A write in progress (see [`Store::write`]).
struct Writing<'a> {
    guard: RwLockWriteGuard<'a, Inner>,
    version: &'a AtomicU64,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.version.fetch_add(1, Release);
    }
}

impl std::ops::Deref for Writing<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.guard
    }
}

impl std::ops::DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.guard
    }
}

/// The shared indexes. See the module doc.
#[derive(Debug)]
pub struct Store {
    inner: RwLock<Inner>,
    version: AtomicU64,
    configured_cluster_name: Option<String>,
    pub overflow: Overflow,
    /// `attributes.kubernetes.resource_labels`, merged over OBI's defaults.
    resource_labels: super::meta::ResourceLabels,
}

impl Store {
    pub fn new(configured_cluster_name: Option<String>) -> Self {
        Self::with_resource_labels(configured_cluster_name, &Default::default())
    }

    /// A store naming services with `resource_labels` (merged over OBI's defaults).
    pub fn with_resource_labels(
        configured_cluster_name: Option<String>,
        resource_labels: &super::meta::ResourceLabels,
    ) -> Self {
        Store {
            inner: RwLock::new(Inner::default()),
            version: AtomicU64::new(0),
            configured_cluster_name,
            overflow: Overflow::default(),
            resource_labels: super::meta::resource_labels(resource_labels),
        }
    }

    /// Bumped by every change.
    pub fn version(&self) -> u64 {
        self.version.load(Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The write lock; the version is bumped when the guard drops, while the lock is
    /// still held: a reader that sees the new version then reads the new data.
    fn write(&self) -> Writing<'_> {
        Writing {
            guard: self.inner.write().unwrap_or_else(|p| p.into_inner()),
            version: &self.version,
        }
    }

    // ---- writers (watcher tasks) ----

    /// A pod was added or changed.
    pub fn pod_apply(&self, pod: PodMeta) {
        let mut w = self.write();
        self.insert_pod(&mut w, pod);
    }

    fn insert_pod(&self, w: &mut Inner, pod: PodMeta) {
        if !w.pods.contains_key(&pod.uid) && w.pods.len() >= MAX_PODS {
            self.overflow.pods.fetch_add(1, Relaxed);
            return;
        }
        let uid = pod.uid.clone();
        if let Some(old) = w.pods.get(&uid) {
            let old = old.meta.clone();
            unindex(w, &old);
        }
        for (id, _) in &pod.containers {
            w.by_container.insert(id.clone(), uid.clone());
        }
        for ip in &pod.ips {
            w.by_ip.insert(*ip, uid.clone());
        }
        w.pods.insert(
            uid,
            PodEntry {
                meta: Arc::new(pod),
                deleted_at: None,
            },
        );
    }

    /// A pod was deleted: kept, findable, until [`Store::expire`] passes its grace.
    pub fn pod_delete(&self, uid: &str, now: Instant) {
        let mut w = self.write();
        if let Some(e) = w.pods.get_mut(uid) {
            e.deleted_at.get_or_insert(now);
        }
    }

    /// A complete list (after a (re)connection): pods absent from it count as
    /// deleted now.
    pub fn pods_replace(&self, pods: Vec<PodMeta>, now: Instant) {
        let mut w = self.write();
        let listed: std::collections::HashSet<String> =
            pods.iter().map(|p| p.uid.clone()).collect();
        for (uid, e) in w.pods.iter_mut() {
            if !listed.contains(uid) {
                e.deleted_at.get_or_insert(now);
            }
        }
        for p in pods {
            self.insert_pod(&mut w, p);
        }
    }

    /// Forgets pods deleted more than `grace` before `now`; returns how many.
    pub fn expire(&self, now: Instant, grace: Duration) -> usize {
        let due: Vec<String> = self
            .read()
            .pods
            .iter()
            .filter(|(_, e)| e.deleted_at.is_some_and(|t| now.duration_since(t) >= grace))
            .map(|(uid, _)| uid.clone())
            .collect();
        if due.is_empty() {
            return 0;
        }
        let mut w = self.write();
        for uid in &due {
            if let Some(e) = w.pods.remove(uid) {
                unindex(&mut w, &e.meta);
            }
        }
        due.len()
    }

    pub fn replicaset_apply(&self, key: (String, String), deployment: Option<String>) {
        let mut w = self.write();
        if !w.replicasets.contains_key(&key) && w.replicasets.len() >= MAX_OBJECTS {
            self.overflow.objects.fetch_add(1, Relaxed);
            return;
        }
        w.replicasets.insert(key, deployment);
    }

    pub fn replicaset_delete(&self, key: &(String, String)) {
        self.write().replicasets.remove(key);
    }

    pub fn replicasets_replace(&self, list: Vec<((String, String), Option<String>)>) {
        let mut w = self.write();
        w.replicasets.clear();
        for (k, d) in list.into_iter().take(MAX_OBJECTS) {
            w.replicasets.insert(k, d);
        }
    }

    pub fn services_apply(&self, ips: Vec<(IpAddr, (String, String))>) {
        let mut w = self.write();
        for (ip, svc) in ips {
            if !w.services.contains_key(&ip) && w.services.len() >= MAX_OBJECTS {
                self.overflow.objects.fetch_add(1, Relaxed);
                continue;
            }
            w.services.insert(ip, svc);
        }
    }

    pub fn services_delete(&self, ips: &[IpAddr]) {
        let mut w = self.write();
        for ip in ips {
            w.services.remove(ip);
        }
    }

    pub fn services_replace(&self, ips: Vec<(IpAddr, (String, String))>) {
        let mut w = self.write();
        w.services.clear();
        for (ip, svc) in ips.into_iter().take(MAX_OBJECTS) {
            w.services.insert(ip, svc);
        }
    }

    pub fn set_detected_cluster_name(&self, name: Option<String>) {
        if self.read().detected_cluster_name != name {
            self.write().detected_cluster_name = name;
        }
    }

    // ---- readers (span path; never wait for the API) ----

    /// `k8s.cluster.name`: configured, else detected from the node's labels.
    pub fn cluster_name(&self) -> Option<String> {
        self.configured_cluster_name
            .clone()
            .or_else(|| self.read().detected_cluster_name.clone())
    }

    /// The resource attributes of the container `container_id` (full id, lower
    /// case), when it belongs to a known pod (deleted ones included, within grace).
    pub fn container_attributes(&self, container_id: &str) -> Option<BTreeMap<String, String>> {
        let r = self.read();
        let uid = r.by_container.get(container_id)?;
        let pod = &r.pods.get(uid)?.meta;
        let owners = resolve(&r, pod);
        let cluster = self
            .configured_cluster_name
            .as_deref()
            .or(r.detected_cluster_name.as_deref());
        Some(container_attributes(
            pod,
            pod.container_name(container_id),
            &owners,
            cluster,
            &self.resource_labels,
        ))
    }

    /// What `ip` is: a known pod (this node's), else a Service's cluster IP.
    pub fn peer(&self, ip: IpAddr) -> Option<Peer> {
        let r = self.read();
        if let Some(pod) = r.by_ip.get(&ip).and_then(|uid| r.pods.get(uid)) {
            let owners = resolve(&r, &pod.meta);
            return Some(Peer {
                kind: "Pod",
                name: pod.meta.name.clone(),
                namespace: pod.meta.namespace.clone(),
                owner_name: owners.top,
            });
        }
        r.services.get(&ip).map(|(ns, name)| Peer {
            kind: "Service",
            name: name.clone(),
            namespace: ns.clone(),
            owner_name: Some(name.clone()),
        })
    }

    /// Calls `f` for every container of every live (not deleted) pod, with the pod,
    /// its owners and the container's id and name.
    pub fn for_each_container(&self, mut f: impl FnMut(&PodMeta, &Owners, &str, &str)) {
        let r = self.read();
        for e in r.pods.values().filter(|e| e.deleted_at.is_none()) {
            let owners = resolve(&r, &e.meta);
            for (id, name) in &e.meta.containers {
                f(&e.meta, &owners, id, name);
            }
        }
    }

    /// (live pods, deleted pods within grace, ReplicaSets, Service IPs).
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        let r = self.read();
        let deleted = r.pods.values().filter(|e| e.deleted_at.is_some()).count();
        (
            r.pods.len() - deleted,
            deleted,
            r.replicasets.len(),
            r.services.len(),
        )
    }
}

fn resolve(r: &Inner, pod: &PodMeta) -> Owners {
    Owners::resolve(pod, |rs| {
        r.replicasets
            .get(&(pod.namespace.clone(), rs.to_owned()))
            .cloned()
    })
}

fn unindex(w: &mut Inner, pod: &PodMeta) {
    for (id, _) in &pod.containers {
        if w.by_container.get(id) == Some(&pod.uid) {
            w.by_container.remove(id);
        }
    }
    for ip in &pod.ips {
        if w.by_ip.get(ip) == Some(&pod.uid) {
            w.by_ip.remove(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::meta::Owner;

    fn pod(uid: &str, cid: &str, ip: &str) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: format!("web-{uid}"),
            namespace: "shop".into(),
            node_name: "n1".into(),
            start_time: None,
            owner: Some(Owner {
                kind: "ReplicaSet".into(),
                name: "web-abc".into(),
            }),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            containers: vec![(cid.into(), "app".into())],
            ips: vec![ip.parse().unwrap()],
        }
    }

    #[test]
    fn deleted_pods_stay_for_the_grace_period() {
        let s = Store::new(None);
        let t0 = Instant::now();
        s.pod_apply(pod("u1", "c1", "10.0.0.1"));
        let v = s.version();
        s.pod_delete("u1", t0);
        assert!(s.version() > v);
        assert!(s.container_attributes("c1").is_some());
        assert_eq!(s.sizes().1, 1);
        // Not discoverable any more, but still decorating.
        let mut seen = 0;
        s.for_each_container(|_, _, _, _| seen += 1);
        assert_eq!(seen, 0);
        assert_eq!(
            s.expire(t0 + Duration::from_secs(5), Duration::from_secs(10)),
            0
        );
        assert!(s.container_attributes("c1").is_some());
        assert_eq!(
            s.expire(t0 + Duration::from_secs(10), Duration::from_secs(10)),
            1
        );
        assert!(s.container_attributes("c1").is_none());
        assert!(s.peer("10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn relist_marks_missing_pods_deleted_and_ip_reuse_keeps_the_new_pod() {
        let s = Store::new(Some("c".into()));
        let t0 = Instant::now();
        s.pod_apply(pod("u1", "c1", "10.0.0.1"));
        // u2 takes u1's IP after u1 is gone from the relist.
        s.pods_replace(vec![pod("u2", "c2", "10.0.0.1")], t0);
        let peer = s.peer("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(peer.name, "web-u2");
        assert_eq!(s.sizes().0, 1);
        s.expire(t0 + Duration::from_secs(60), Duration::from_secs(1));
        // Expiring u1 did not remove u2's IP.
        assert_eq!(s.peer("10.0.0.1".parse().unwrap()).unwrap().name, "web-u2");
        assert_eq!(
            s.container_attributes("c2").unwrap()["k8s.cluster.name"],
            "c"
        );
    }

    #[test]
    fn replicaset_gives_the_deployment_and_services_the_peer() {
        let s = Store::new(None);
        s.pod_apply(pod("u1", "c1", "10.0.0.1"));
        assert!(!s
            .container_attributes("c1")
            .unwrap()
            .contains_key("k8s.deployment.name"));
        s.replicaset_apply(("shop".into(), "web-abc".into()), Some("web".into()));
        let a = s.container_attributes("c1").unwrap();
        assert_eq!(a["k8s.deployment.name"], "web");
        assert_eq!(a["service.name"], "web");
        s.services_apply(vec![(
            "10.96.0.10".parse().unwrap(),
            ("kube-system".into(), "kube-dns".into()),
        )]);
        let p = s.peer("10.96.0.10".parse().unwrap()).unwrap();
        assert_eq!((p.kind, p.name.as_str()), ("Service", "kube-dns"));
        s.set_detected_cluster_name(Some("prod".into()));
        assert_eq!(s.cluster_name().as_deref(), Some("prod"));
    }
}
