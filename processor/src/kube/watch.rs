//! The watchers: `kube::runtime::watcher` streams (list, then watch from the list's
//! resourceVersion; a relist when the server answers 410 Gone or the connection
//! breaks) with a backoff between failures, feeding the [`Store`].
//!
//! Each watcher logs its state changes once ([`WatchState`]): synced (with how many
//! objects), failing (with the first error; later errors of the same outage at debug
//! level), recovered. Every `resync` period the watch is dropped and started again,
//! which lists everything anew (OBI's `informers_resync_period`).

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::Api;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::meta::{cluster_name_of_node, replicaset_owner, service_ips, PodMeta};
use super::store::Store;

/// Shortest and longest pause between attempts after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], reset by any success.
#[derive(Debug, Clone)]
pub struct RetryBackoff {
    next: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { next: BACKOFF_MIN }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Some(d)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// What a watcher reports, for logging once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// First complete list.
    Synced { objects: usize },
    /// The first error after a healthy period (or at start).
    Failing { error: String },
    /// A complete list again after failures.
    Recovered { objects: usize },
}

/// A watcher's health: [`WatchState::ok`] / [`WatchState::error`] return a
/// [`Transition`] only when the state changes.
#[derive(Debug, Default)]
pub struct WatchState {
    synced_once: bool,
    failing: bool,
    listing: usize,
}

impl WatchState {
    pub fn ok<K>(&mut self, event: &Event<K>) -> Option<Transition> {
        match event {
            Event::Init => {
                self.listing = 0;
                None
            }
            Event::InitApply(_) => {
                self.listing += 1;
                None
            }
            Event::InitDone => {
                let objects = self.listing;
                if self.failing {
                    self.failing = false;
                    self.synced_once = true;
                    Some(Transition::Recovered { objects })
                } else if !self.synced_once {
                    self.synced_once = true;
                    Some(Transition::Synced { objects })
                } else {
                    None
                }
            }
            Event::Apply(_) | Event::Delete(_) => None,
        }
    }

    pub fn error(&mut self, error: String) -> Option<Transition> {
        if self.failing {
            return None;
        }
        self.failing = true;
        Some(Transition::Failing { error })
    }

    pub fn synced(&self) -> bool {
        self.synced_once
    }
}

/// Receives one watcher's events.
pub trait Sink<K>: Send + 'static {
    fn handle(&mut self, store: &Store, event: Event<K>);
}

/// Runs a watcher for `K` until the task is aborted.
pub async fn run<K, S>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    resync: Duration,
    store: Arc<Store>,
    synced: Arc<AtomicBool>,
    mut sink: S,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Sink<K>,
{
    let mut state = WatchState::default();
    loop {
        let started = Instant::now();
        let stream = watcher::watcher(api.clone(), config.clone()).backoff(RetryBackoff::default());
        let mut stream = std::pin::pin!(stream);
        let deadline = tokio::time::sleep(resync);
        let mut deadline = std::pin::pin!(deadline);
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = &mut deadline => break,
            };
            let transition = match item {
                None => break,
                Some(Ok(event)) => {
                    let t = state.ok(&event);
                    sink.handle(&store, event);
                    t
                }
                Some(Err(e)) => {
                    let text = error_text(&e);
                    let t = state.error(text.clone());
                    if t.is_none() {
                        debug!(watcher = what, "kubernetes: still failing: {text}");
                    }
                    t
                }
            };
            match transition {
                Some(Transition::Synced { objects }) => {
                    synced.store(true, Relaxed);
                    info!(watcher = what, objects, "kubernetes: {what} synced");
                }
                Some(Transition::Recovered { objects }) => {
                    synced.store(true, Relaxed);
                    info!(
                        watcher = what,
                        objects, "kubernetes: {what} watch recovered (listed again)"
                    );
                }
                Some(Transition::Failing { error }) => warn!(
                    watcher = what,
                    "kubernetes: {what} watch failing: {error}; spans keep flowing (undecorated \
                     for what is not known yet), retrying with backoff (up to {}s)",
                    BACKOFF_MAX.as_secs()
                ),
                None => {}
            }
        }
        debug!(
            watcher = what,
            after_secs = started.elapsed().as_secs(),
            "kubernetes: restarting the {what} watch (resync period)"
        );
    }
}

fn error_text(e: &watcher::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(inner) = cur {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = inner.source();
    }
    s
}

/// Pods of this node.
#[derive(Default)]
pub struct PodSink {
    listing: Vec<PodMeta>,
}

impl Sink<Pod> for PodSink {
    fn handle(&mut self, store: &Store, event: Event<Pod>) {
        match event {
            Event::Init => self.listing.clear(),
            Event::InitApply(p) => self.listing.extend(PodMeta::from_pod(&p)),
            Event::InitDone => {
                store.pods_replace(std::mem::take(&mut self.listing), Instant::now())
            }
            Event::Apply(p) => {
                if let Some(m) = PodMeta::from_pod(&p) {
                    store.pod_apply(m);
                }
            }
            Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    store.pod_delete(uid, Instant::now());
                }
            }
        }
    }
}

/// ReplicaSets (their Deployment).
#[derive(Default)]
pub struct ReplicaSetSink {
    listing: Vec<((String, String), Option<String>)>,
}

impl Sink<ReplicaSet> for ReplicaSetSink {
    fn handle(&mut self, store: &Store, event: Event<ReplicaSet>) {
        match event {
            Event::Init => self.listing.clear(),
            Event::InitApply(rs) => self.listing.extend(replicaset_owner(&rs)),
            Event::InitDone => store.replicasets_replace(std::mem::take(&mut self.listing)),
            Event::Apply(rs) => {
                if let Some((k, d)) = replicaset_owner(&rs) {
                    store.replicaset_apply(k, d);
                }
            }
            Event::Delete(rs) => {
                if let Some((k, _)) = replicaset_owner(&rs) {
                    store.replicaset_delete(&k);
                }
            }
        }
    }
}

/// Services (their cluster IPs).
#[derive(Default)]
pub struct ServiceSink {
    listing: Vec<(std::net::IpAddr, (String, String))>,
}

impl Sink<Service> for ServiceSink {
    fn handle(&mut self, store: &Store, event: Event<Service>) {
        match event {
            Event::Init => self.listing.clear(),
            Event::InitApply(s) => self.listing.extend(service_ips(&s)),
            Event::InitDone => store.services_replace(std::mem::take(&mut self.listing)),
            Event::Apply(s) => store.services_apply(service_ips(&s)),
            Event::Delete(s) => {
                let ips: Vec<_> = service_ips(&s).into_iter().map(|(ip, _)| ip).collect();
                store.services_delete(&ips);
            }
        }
    }
}

/// This node (the cluster name in its labels).
#[derive(Default)]
pub struct NodeSink;

impl Sink<Node> for NodeSink {
    fn handle(&mut self, store: &Store, event: Event<Node>) {
        if let Event::Apply(n) | Event::InitApply(n) = event {
            store.set_detected_cluster_name(cluster_name_of_node(&n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = RetryBackoff::default();
        let seq: Vec<Duration> = (&mut b).take(7).collect();
        assert_eq!(seq[0], BACKOFF_MIN);
        assert_eq!(seq[1], BACKOFF_MIN * 2);
        assert_eq!(*seq.last().unwrap(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next(), Some(BACKOFF_MIN));
    }

    #[test]
    fn state_changes_are_reported_once() {
        let mut s = WatchState::default();
        // Failing at start (server down), twice: reported once.
        assert!(matches!(
            s.error("refused".into()),
            Some(Transition::Failing { .. })
        ));
        assert_eq!(s.error("refused again".into()), None);
        assert!(!s.synced());
        // Then a list: recovered, with its size.
        assert_eq!(s.ok::<()>(&Event::Init), None);
        assert_eq!(s.ok(&Event::InitApply(())), None);
        assert_eq!(s.ok(&Event::InitApply(())), None);
        assert_eq!(
            s.ok::<()>(&Event::InitDone),
            Some(Transition::Recovered { objects: 2 })
        );
        assert!(s.synced());
        // Events and a relist of a healthy watch say nothing.
        assert_eq!(s.ok(&Event::Apply(())), None);
        s.ok::<()>(&Event::Init);
        assert_eq!(s.ok::<()>(&Event::InitDone), None);
        // 410 Gone / timeouts show up as errors: reported once, then recovery.
        assert!(s.error("410 Gone".into()).is_some());
        assert!(s.error("timeout".into()).is_none());
        s.ok::<()>(&Event::Init);
        assert_eq!(
            s.ok::<()>(&Event::InitDone),
            Some(Transition::Recovered { objects: 0 })
        );

        let mut fresh = WatchState::default();
        fresh.ok::<()>(&Event::Init);
        assert_eq!(
            fresh.ok::<()>(&Event::InitDone),
            Some(Transition::Synced { objects: 0 })
        );
    }
}
