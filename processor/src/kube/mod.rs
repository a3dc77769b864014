//! Kubernetes metadata: decoration of spans and metrics, and Kubernetes-aware
//! discovery. Only the processor talks to the API server; the loader never does.
//!
//! - [`watch`]: `kube::runtime` watchers on the pods of this node (field selector
//!   `spec.nodeName=$KUBE_NODE_NAME`), ReplicaSets (to find Deployments), Services
//!   (peer addresses) and this node (cluster name), with backoff and relists;
//! - [`store`]: what they learn, in memory, read by the span path without waiting;
//! - [`meta`]: the fields kept and the owner / `service.name` rules;
//! - [`discovery`]: `discovery.instrument` `k8s_*` entries to container ids.
//!
//! The loader's `ProcessStarted` carries the container id (from the cgroup path);
//! the pod's `containerStatuses[].containerID` joins it to the pod.

pub mod discovery;
pub mod meta;
pub mod store;
pub mod watch;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use tandem_proto::{selection, Selection};
use tokio::sync::watch as channel;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{KubeEnable, Kubernetes};
use discovery::KubeDiscovery;
pub use store::{Peer, Store};

/// How long a deleted pod's metadata stays, for late spans.
pub const DELETED_POD_GRACE: Duration = Duration::from_secs(60);
/// How often the discovery looks for changed pods (re-subscribing only on change).
pub const DISCOVERY_PERIOD: Duration = Duration::from_millis(300);

/// The selection that selects nothing: pid 0 is never a user process. Used while
/// Kubernetes discovery has found no container and nothing else is selected (an
/// empty selection would select every process).
pub fn nothing() -> Selection {
    Selection {
        pids: vec![0],
        ..Selection::default()
    }
}

/// Cannot start the Kubernetes metadata.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no usable Kubernetes configuration (in-cluster or KUBECONFIG): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Whether decoration is on: `true`, `false`, or `autodetect` (on inside a cluster,
/// i.e. `KUBERNETES_SERVICE_HOST` set, or with a kubeconfig file that exists).
pub fn enabled(k: &Kubernetes) -> bool {
    match k.enable {
        KubeEnable::True => true,
        KubeEnable::False => false,
        KubeEnable::Autodetect => {
            k.in_cluster
                || k.kubeconfig_path
                    .as_deref()
                    .is_some_and(|p| Path::new(p).is_file())
        }
    }
}

/// The running watchers and what they feed.
pub struct Kube {
    pub store: Arc<Store>,
    pods_synced: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Kube {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn client_config(k: &Kubernetes) -> Result<kube::Config, KubeError> {
    match &k.kubeconfig_path {
        Some(path) if !k.in_cluster || Path::new(path).is_file() => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })
        }
        _ => Ok(kube::Config::infer().await?),
    }
}

impl Kube {
    /// Starts the watchers (on the current Tokio runtime). Does not wait for the API
    /// server: until the first lists arrive, nothing is decorated.
    pub async fn start(k: &Kubernetes) -> Result<Kube, KubeError> {
        let config = client_config(k).await?;
        let cluster_url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)?;
        let store = Arc::new(Store::with_resource_labels(
            k.cluster_name.clone(),
            &k.resource_labels,
        ));
        let resync = k.informers_resync_period;
        let mut tasks = Vec::new();

        let pods_config = match &k.node_name {
            Some(node) => watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            None => {
                warn!(
                    "kubernetes: KUBE_NODE_NAME is not set (set it from the downward API, \
                     spec.nodeName): watching the pods of every node, memory grows with the cluster"
                );
                watcher::Config::default()
            }
        };
        info!(
            api = %cluster_url,
            node = k.node_name.as_deref().unwrap_or("(all nodes)"),
            namespace = k.own_namespace.as_deref().unwrap_or("(unknown)"),
            "kubernetes: starting the metadata watchers (pods, replicasets, services, node)"
        );
        let pods_synced = Arc::new(AtomicBool::new(false));
        tasks.push(tokio::spawn(watch::run(
            "pods",
            Api::<Pod>::all(client.clone()),
            pods_config,
            resync,
            store.clone(),
            pods_synced.clone(),
            watch::PodSink::default(),
        )));
        tasks.push(tokio::spawn(watch::run(
            "replicasets",
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
            resync,
            store.clone(),
            Arc::new(AtomicBool::new(false)),
            watch::ReplicaSetSink::default(),
        )));
        tasks.push(tokio::spawn(watch::run(
            "services",
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            resync,
            store.clone(),
            Arc::new(AtomicBool::new(false)),
            watch::ServiceSink::default(),
        )));
        if let Some(node) = &k.node_name {
            tasks.push(tokio::spawn(watch::run(
                "node",
                Api::<Node>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={node}")),
                resync,
                store.clone(),
                Arc::new(AtomicBool::new(false)),
                watch::NodeSink,
            )));
        }
        // Deleted pods leave after their grace period.
        let expiring = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                expiring.expire(Instant::now(), DELETED_POD_GRACE);
            }
        }));
        // Say so, once, when the first list is late.
        let timeout = k.informers_sync_timeout;
        let synced = pods_synced.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if !synced.load(Relaxed) {
                warn!(
                    timeout_secs = timeout.as_secs(),
                    "kubernetes: pods not listed within informers_sync_timeout; spans flow \
                     undecorated until the API server answers"
                );
            }
        }));
        Ok(Kube {
            store,
            pods_synced,
            tasks,
        })
    }

    pub fn pods_synced(&self) -> bool {
        self.pods_synced.load(Relaxed)
    }

    /// Follows the loader selection: `base` (what is selected without Kubernetes)
    /// plus the containers `discovery` finds, or [`nothing`] while both are empty.
    pub fn selection_updates(
        &mut self,
        discovery: KubeDiscovery,
        base: Selection,
    ) -> channel::Receiver<Selection> {
        let compute = {
            let base = base.clone();
            move |store: &Store| -> Selection {
                let found = Selection {
                    container_ids: discovery.container_ids(store).into_iter().collect(),
                    ..Selection::default()
                };
                match (base.is_empty(), found.is_empty()) {
                    (true, true) => nothing(),
                    (true, false) => found,
                    (false, true) => base.clone(),
                    (false, false) => selection::union([&base, &found]).unwrap_or_default(),
                }
            }
        };
        // The version is read before the first computation: a change that lands in
        // between is seen by the task (the watchers are already running).
        let mut seen = self.store.version();
        let (tx, rx) = channel::channel(compute(&self.store));
        let store = self.store.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(DISCOVERY_PERIOD);
            loop {
                tick.tick().await;
                let v = store.version();
                if v == seen {
                    continue;
                }
                seen = v;
                let next = compute(&store);
                tx.send_if_modified(|cur| {
                    if *cur == next {
                        return false;
                    }
                    info!(
                        selection = %selection::describe(&next),
                        "kubernetes discovery: selection changed"
                    );
                    *cur = next;
                    true
                });
                if tx.is_closed() {
                    return;
                }
            }
        }));
        rx
    }
}
