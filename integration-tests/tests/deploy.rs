//! Issue 5, deployment half: the manifests in `deploy/` grant exactly what the capability
//! model (`tandem_security::loader_capabilities()`) says, and nothing else.
//!
//! The Kubernetes manifests and the Helm chart's output are parsed into Kubernetes types
//! (k8s-openapi) and checked by the same functions; `kubernetes-validate` checks them
//! against the API schemas offline; the systemd units are parsed and checked with
//! `systemd-analyze`; the Dockerfiles are checked line by line. Each posture check
//! returns its violations, so the mutation tests can show that changing one capability
//! (or any other setting checked) anywhere is caught. Finally the DaemonSet's security
//! contexts are reproduced with `setpriv` and the real binaries, to show that a loader
//! with exactly those capabilities and groups serves a processor with exactly its uid.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Namespace, PodSpec, Secret, SecurityContext, ServiceAccount,
    Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use tandem_integration_tests::{
    loader_bin, processor_bin, read_events, Running, PATIENCE, REQUIRE_PRIVILEGED_ENV,
};

const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const SETUP_HINT: &str = "run scripts/setup.sh (as root) to install it";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn kube_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn chart_dir() -> PathBuf {
    repo().join("deploy/helm/tandem")
}

/// The loader's capabilities as Kubernetes spells them (`BPF`, `PERFMON`, ...).
fn model_names() -> Vec<String> {
    tandem_security::loader_capabilities()
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------
// Parsing

/// Every object of one or more manifest files, by kind.
#[derive(Debug, Clone, Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    daemon_sets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
}

fn typed<T: serde::de::DeserializeOwned>(value: yaml_serde::Value, origin: &str) -> T {
    yaml_serde::from_value(value).unwrap_or_else(|e| panic!("{origin}: {e}"))
}

impl Objects {
    /// Parses a multi-document YAML stream; an unknown kind is an error (the tests
    /// must see every object a manifest creates).
    fn parse(text: &str, origin: &str) -> Objects {
        let mut out = Objects::default();
        out.add(text, origin);
        out
    }

    fn add(&mut self, text: &str, origin: &str) {
        for doc in yaml_serde::Deserializer::from_str(text) {
            let value = yaml_serde::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_else(|| panic!("{origin}: a document without kind"))
                .to_string();
            match kind.as_str() {
                "Namespace" => self.namespaces.push(typed(value, origin)),
                "ServiceAccount" => self.service_accounts.push(typed(value, origin)),
                "ClusterRole" => self.cluster_roles.push(typed(value, origin)),
                "ClusterRoleBinding" => self.cluster_role_bindings.push(typed(value, origin)),
                "ConfigMap" => self.config_maps.push(typed(value, origin)),
                "Secret" => self.secrets.push(typed(value, origin)),
                "DaemonSet" => self.daemon_sets.push(typed(value, origin)),
                "Deployment" => self.deployments.push(typed(value, origin)),
                other => panic!("{origin}: unexpected kind {other}"),
            }
        }
    }

    fn load(files: &[&str]) -> Objects {
        let mut out = Objects::default();
        for f in files {
            let path = kube_dir().join(f);
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            out.add(&text, f);
        }
        out
    }

    fn daemon_set_pod(&self) -> &PodSpec {
        assert_eq!(self.daemon_sets.len(), 1, "one DaemonSet");
        self.daemon_sets[0]
            .spec
            .template
            .spec
            .as_ref()
            .expect("DaemonSet pod spec")
    }

    fn daemon_set_pod_mut(&mut self) -> &mut PodSpec {
        self.daemon_sets[0]
            .spec
            .template
            .spec
            .as_mut()
            .expect("DaemonSet pod spec")
    }
}

/// The standard DaemonSet deployment: everything but the sidecar variant.
fn daemon_set_objects() -> Objects {
    Objects::load(&[
        "namespace.yaml",
        "rbac.yaml",
        "config.yaml",
        "daemonset.yaml",
    ])
}

// ---------------------------------------------------------------------------------
// Posture checks: each returns the list of violations (empty: fine).

#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PodMode {
    /// One pod per node: the node's PID namespace.
    Node,
    /// Next to an application: the pod's shared PID namespace.
    Sidecar,
}

/// What a pod may reference outside the objects checked (e.g. a chart's existing Secret).
#[derive(Default)]
struct External<'a> {
    secrets: &'a [&'a str],
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a Container> {
    spec.containers.iter().find(|c| c.name == name)
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name)
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    env(c, name).and_then(|e| e.value.as_deref())
}

fn env_field_ref<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    env(c, name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str())
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a Volume> {
    spec.volumes.iter().flatten().find(|v| v.name == name)
}

/// The volume mounted at `path` in `c`.
fn mounted_at<'a>(spec: &'a PodSpec, c: &Container, path: &str) -> Option<&'a Volume> {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == path.trim_end_matches('/'))
        .and_then(|m| volume(spec, &m.name))
}

fn caps(sc: Option<&SecurityContext>) -> (Vec<String>, Vec<String>) {
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    (
        caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
    )
}

/// A volume that holds a Kubernetes API token.
fn is_token_volume(v: &Volume) -> bool {
    v.secret.is_some()
        || v.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.service_account_token.is_some())
        })
}

/// Checks a pod running tandem: its two containers, volumes and service account.
fn pod_violations(spec: &PodSpec, mode: PodMode, objs: &Objects, ext: &External) -> Vec<String> {
    let mut v = Violations::default();
    let model = model_names();

    v.check(spec.automount_service_account_token == Some(false), || {
        "pod: automountServiceAccountToken must be false (the token goes to the processor only)"
            .into()
    });
    match mode {
        PodMode::Node => {
            v.check(spec.host_pid == Some(true), || {
                "pod: hostPID must be true (the loader traces only its own PID namespace's processes)".into()
            });
        }
        PodMode::Sidecar => {
            v.check(spec.share_process_namespace == Some(true), || {
                "pod: shareProcessNamespace must be true".into()
            });
            v.check(spec.host_pid != Some(true), || {
                "sidecar pod: no hostPID".into()
            });
        }
    }
    v.check(spec.host_network != Some(true), || {
        "pod: no hostNetwork".into()
    });
    v.check(spec.host_ipc != Some(true), || "pod: no hostIPC".into());
    let sa = spec.service_account_name.as_deref().unwrap_or("");
    v.check(
        objs.service_accounts
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(sa)),
        || format!("pod: serviceAccountName {sa:?} is not among the ServiceAccounts"),
    );

    let (Some(loader), Some(processor)) = (container(spec, "loader"), container(spec, "processor"))
    else {
        v.0.push("pod: needs containers named loader and processor".into());
        return v.0;
    };
    let pod_sc = spec.security_context.as_ref();

    // Loader: uid 0 with every capability dropped and exactly the model's added.
    let lsc = loader.security_context.as_ref();
    let (add, drop) = caps(lsc);
    let add_set: BTreeSet<&String> = add.iter().collect();
    let model_set: BTreeSet<&String> = model.iter().collect();
    v.check(add_set == model_set && add.len() == model.len(), || {
        format!("loader: capabilities.add is {add:?}, the model (tandem_security::loader_capabilities) is {model:?}")
    });
    v.check(drop == ["ALL"], || {
        format!("loader: capabilities.drop must be [ALL], is {drop:?}")
    });
    v.check(lsc.and_then(|s| s.privileged) != Some(true), || {
        "loader: must not be privileged".into()
    });
    v.check(
        lsc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        || "loader: readOnlyRootFilesystem must be true".into(),
    );
    v.check(
        lsc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        || "loader: allowPrivilegeEscalation must be false".into(),
    );
    // CRI gives added capabilities to uid 0 only (no ambient set): a non-root loader
    // would start with none. See deploy/kubernetes/daemonset.yaml.
    v.check(lsc.and_then(|s| s.run_as_user) == Some(0), || {
        "loader: runAsUser must be 0 (added capabilities reach uid 0 only)".into()
    });

    // Processor: non-root, nothing added, nothing to escalate to.
    let psc = processor.security_context.as_ref();
    let (padd, pdrop) = caps(psc);
    v.check(padd.is_empty(), || {
        format!("processor: must add no capabilities, adds {padd:?}")
    });
    v.check(pdrop == ["ALL"], || {
        format!("processor: capabilities.drop must be [ALL], is {pdrop:?}")
    });
    let non_root = psc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root));
    v.check(non_root == Some(true), || {
        "processor: runAsNonRoot must be true".into()
    });
    let uid = psc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    v.check(uid.is_some_and(|u| u != 0), || {
        format!("processor: runAsUser must be set and non-zero, is {uid:?}")
    });
    let gid = psc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    v.check(gid.is_some_and(|g| g != 0), || {
        format!("processor: runAsGroup must be set and non-zero, is {gid:?}")
    });
    v.check(
        psc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        || "processor: allowPrivilegeEscalation must be false".into(),
    );
    v.check(
        psc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        || "processor: readOnlyRootFilesystem must be true".into(),
    );
    v.check(psc.and_then(|s| s.privileged) != Some(true), || {
        "processor: must not be privileged".into()
    });
    let seccomp = psc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(pod_sc.and_then(|s| s.seccomp_profile.as_ref()))
        .map(|p| p.type_.as_str());
    v.check(seccomp == Some("RuntimeDefault"), || {
        format!("processor: seccompProfile must be RuntimeDefault, is {seccomp:?}")
    });

    // Every other container (the application in the sidecar variant) gains nothing.
    for c in &spec.containers {
        if c.name == "loader" || c.name == "processor" {
            continue;
        }
        let (a, _) = caps(c.security_context.as_ref());
        v.check(a.is_empty(), || {
            format!("{}: adds capabilities {a:?}", c.name)
        });
        v.check(
            c.security_context.as_ref().and_then(|s| s.privileged) != Some(true),
            || format!("{}: privileged", c.name),
        );
    }

    // The API token: a projected volume mounted into the processor, and nowhere else.
    match mounted_at(spec, processor, TOKEN_PATH) {
        None => {
            v.0.push(format!("processor: no volume mounted at {TOKEN_PATH}"))
        }
        Some(vol) => {
            let sources: Vec<_> = vol
                .projected
                .as_ref()
                .and_then(|p| p.sources.clone())
                .unwrap_or_default();
            v.check(
                sources.iter().any(|s| {
                    s.service_account_token
                        .as_ref()
                        .is_some_and(|t| t.path == "token")
                }),
                || "token volume: needs a serviceAccountToken source at path token".into(),
            );
            v.check(
                sources.iter().any(|s| {
                    s.config_map.as_ref().is_some_and(|c| {
                        c.name == "kube-root-ca.crt"
                            && c.items
                                .iter()
                                .flatten()
                                .any(|i| i.key == "ca.crt" && i.path == "ca.crt")
                    })
                }),
                || "token volume: needs ca.crt from the kube-root-ca.crt ConfigMap".into(),
            );
            v.check(
                sources.iter().any(|s| {
                    s.downward_api.as_ref().is_some_and(|d| {
                        d.items.iter().flatten().any(|i| {
                            i.path == "namespace"
                                && i.field_ref
                                    .as_ref()
                                    .is_some_and(|f| f.field_path == "metadata.namespace")
                        })
                    })
                }),
                || "token volume: needs namespace from the downward API".into(),
            );
        }
    }
    for c in &spec.containers {
        if c.name == "processor" {
            continue;
        }
        for m in c.volume_mounts.iter().flatten() {
            let token = volume(spec, &m.name).is_some_and(is_token_volume);
            v.check(!token && !m.mount_path.starts_with(TOKEN_PATH), || {
                format!(
                    "{}: mounts the API token ({} at {}); only the processor may",
                    c.name, m.name, m.mount_path
                )
            });
        }
    }

    // The socket: same path in both containers, on one emptyDir mounted in both.
    let lsock = env_value(loader, "TANDEM_LOADER_SOCKET");
    let psock = env_value(processor, "TANDEM_LOADER_SOCKET");
    v.check(lsock.is_some() && lsock == psock, || {
        format!("TANDEM_LOADER_SOCKET differs: loader {lsock:?}, processor {psock:?}")
    });
    if let Some(sock) = lsock {
        let dir = Path::new(sock)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lvol = mounted_at(spec, loader, &dir);
        let pvol = mounted_at(spec, processor, &dir);
        v.check(
            lvol.is_some_and(|l| l.empty_dir.is_some())
                && pvol.is_some_and(|p| p.empty_dir.is_some())
                && lvol.map(|l| &l.name) == pvol.map(|p| &p.name),
            || {
                format!(
                    "the socket directory {dir} must be one emptyDir mounted in both containers"
                )
            },
        );
    }
    // The socket's group is the processor's gid, and the loader belongs to it.
    let group = env_value(loader, "TANDEM_SOCKET_GROUP").and_then(|g| g.parse::<i64>().ok());
    v.check(group.is_some() && group == gid, || {
        format!("loader: TANDEM_SOCKET_GROUP {group:?} must be the processor's runAsGroup {gid:?}")
    });
    let supplemental = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    let fs_group = pod_sc.and_then(|s| s.fs_group);
    v.check(fs_group.is_some() && fs_group == gid, || {
        format!(
            "pod: fsGroup {fs_group:?} must be the processor's runAsGroup {gid:?} (token readable)"
        )
    });
    v.check(group.is_some_and(|g| supplemental.contains(&g)), || {
        format!("pod: supplementalGroups {supplemental:?} must contain the socket group {group:?}")
    });

    // Host paths: the loader's read-only tracefs only.
    for c in &spec.containers {
        for m in c.volume_mounts.iter().flatten() {
            let Some(hp) = volume(spec, &m.name).and_then(|v| v.host_path.as_ref()) else {
                continue;
            };
            v.check(c.name == "loader" && m.read_only == Some(true), || {
                format!(
                    "{}: host path {} must be the loader's and read-only",
                    c.name, hp.path
                )
            });
        }
    }
    v.check(
        mounted_at(spec, loader, "/sys/kernel/tracing").is_some_and(|v| v.host_path.is_some()),
        || "loader: tracefs (hostPath) must be mounted at /sys/kernel/tracing".into(),
    );

    // Processor environment: configuration file, secret headers, node and namespace.
    match env_value(processor, "OTEL_EBPF_CONFIG_PATH") {
        None => {
            v.0.push("processor: OTEL_EBPF_CONFIG_PATH is not set".into())
        }
        Some(path) => {
            let p = Path::new(path);
            let dir = p.parent().map(|d| d.to_string_lossy().into_owned());
            let file = p.file_name().map(|f| f.to_string_lossy().into_owned());
            let cm_name = dir
                .and_then(|d| mounted_at(spec, processor, &d))
                .and_then(|v| v.config_map.as_ref())
                .map(|c| c.name.clone());
            let has_key = cm_name.as_ref().is_some_and(|n| {
                objs.config_maps.iter().any(|cm| {
                    cm.metadata.name.as_ref() == Some(n)
                        && file
                            .as_ref()
                            .is_some_and(|f| cm.data.as_ref().is_some_and(|d| d.contains_key(f)))
                })
            });
            v.check(has_key, || {
                format!(
                    "processor: OTEL_EBPF_CONFIG_PATH {path} is not a key of a mounted ConfigMap"
                )
            });
        }
    }
    match env(processor, "OTEL_EXPORTER_OTLP_HEADERS")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|f| f.secret_key_ref.as_ref())
    {
        None => {
            v.0.push("processor: OTEL_EXPORTER_OTLP_HEADERS must come from a secretKeyRef".into())
        }
        Some(r) => {
            let found = objs.secrets.iter().any(|s| {
                s.metadata.name.as_deref() == Some(r.name.as_str())
                    && (s.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
                        || s.string_data
                            .as_ref()
                            .is_some_and(|d| d.contains_key(&r.key)))
            });
            v.check(found || ext.secrets.contains(&r.name.as_str()), || {
                format!("processor: Secret {}/{} not found", r.name, r.key)
            });
        }
    }
    v.check(
        env_field_ref(processor, "KUBE_NODE_NAME") == Some("spec.nodeName"),
        || "processor: KUBE_NODE_NAME must come from spec.nodeName".into(),
    );
    v.check(
        env_field_ref(processor, "KUBE_NAMESPACE") == Some("metadata.namespace"),
        || "processor: KUBE_NAMESPACE must come from metadata.namespace".into(),
    );
    v.check(
        env_value(processor, "TANDEM_REFUSE_PRIVILEGED") == Some("true"),
        || "processor: TANDEM_REFUSE_PRIVILEGED must be true (refuse to run privileged)".into(),
    );
    let kube = env_value(processor, "OTEL_EBPF_KUBE_METADATA_ENABLE");
    v.check(matches!(kube, Some("true" | "autodetect")), || {
        format!("processor: OTEL_EBPF_KUBE_METADATA_ENABLE must be true or autodetect, is {kube:?}")
    });
    // The loader gets nothing it would not use: no secrets, no API access.
    for e in loader.env.iter().flatten() {
        v.check(
            e.value_from
                .as_ref()
                .is_none_or(|f| f.secret_key_ref.is_none()),
            || format!("loader: env {} comes from a Secret", e.name),
        );
    }
    v.0
}

/// RBAC: the pod's service account is bound to a ClusterRole that reads pods, nodes,
/// services and replicasets, and nothing more.
fn rbac_violations(objs: &Objects, sa_name: &str) -> Vec<String> {
    let mut v = Violations::default();
    let Some(sa) = objs
        .service_accounts
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(sa_name))
    else {
        return vec![format!("no ServiceAccount {sa_name}")];
    };
    let sa_ns = sa.metadata.namespace.clone();
    let bindings: Vec<&ClusterRoleBinding> =
        objs.cluster_role_bindings
            .iter()
            .filter(|b| {
                b.subjects.iter().flatten().any(|s| {
                    s.kind == "ServiceAccount" && s.name == sa_name && s.namespace == sa_ns
                })
            })
            .collect();
    v.check(bindings.len() == 1, || {
        format!("ServiceAccount {sa_name} ({sa_ns:?}) must be bound by exactly one ClusterRoleBinding, is by {}", bindings.len())
    });
    let expected: BTreeSet<(String, String, String)> = [
        ("", "pods"),
        ("", "nodes"),
        ("", "services"),
        ("apps", "replicasets"),
    ]
    .into_iter()
    .flat_map(|(g, r)| {
        ["get", "list", "watch"]
            .into_iter()
            .map(move |verb| (g.to_string(), r.to_string(), verb.to_string()))
    })
    .collect();
    for b in bindings {
        v.check(b.role_ref.kind == "ClusterRole", || {
            "binding: roleRef must be a ClusterRole".into()
        });
        let Some(role) = objs
            .cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
        else {
            v.0.push(format!("no ClusterRole {}", b.role_ref.name));
            continue;
        };
        v.check(role.aggregation_rule.is_none(), || {
            "ClusterRole: no aggregationRule".into()
        });
        let mut granted = BTreeSet::new();
        for rule in role.rules.iter().flatten() {
            v.check(
                rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
                || "ClusterRole: no resourceNames / nonResourceURLs".into(),
            );
            for g in rule.api_groups.iter().flatten() {
                for r in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        granted.insert((g.clone(), r.clone(), verb.clone()));
                    }
                }
            }
        }
        v.check(granted == expected, || {
            format!(
                "ClusterRole {}: grants {:?}, expected exactly get/list/watch on pods, nodes, services, replicasets",
                b.role_ref.name,
                granted
                    .symmetric_difference(&expected)
                    .collect::<Vec<_>>()
            )
        });
    }
    v.0
}

/// All checks of a DaemonSet deployment.
fn daemon_set_violations(objs: &Objects, ext: &External) -> Vec<String> {
    if objs.daemon_sets.len() != 1 {
        return vec![format!(
            "expected one DaemonSet, found {}",
            objs.daemon_sets.len()
        )];
    }
    let spec = objs.daemon_set_pod();
    let mut v = pod_violations(spec, PodMode::Node, objs, ext);
    v.extend(rbac_violations(
        objs,
        spec.service_account_name.as_deref().unwrap_or(""),
    ));
    v
}

fn assert_no_violations(what: &str, v: Vec<String>) {
    assert!(v.is_empty(), "{what}:\n  {}", v.join("\n  "));
}

// ---------------------------------------------------------------------------------
// External tools

fn tool_output(cmd: &mut Command, tool: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}; {SETUP_HINT}"))
}

/// Validates manifests against the Kubernetes API schemas, offline, rejecting unknown
/// fields.
fn kubernetes_validate(path: &Path) {
    let out = tool_output(
        Command::new("kubernetes-validate")
            .args(["--strict"])
            .arg(path),
        "kubernetes-validate",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate {}:\n{text}",
        path.display()
    );
    assert!(
        text.contains("passed"),
        "kubernetes-validate checked nothing:\n{text}"
    );
}

fn helm(args: &[&str]) -> Output {
    tool_output(
        Command::new("helm").args(args),
        "helm (from scripts/setup.sh)",
    )
}

fn helm_template(extra: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "t",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        "tandem",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm output is UTF-8")
}

// ---------------------------------------------------------------------------------
// Kubernetes manifests

#[test]
fn every_manifest_passes_the_kubernetes_schemas() {
    let mut files: Vec<PathBuf> = fs::read_dir(kube_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests: {files:?}");
    for f in &files {
        kubernetes_validate(f);
        // And every object is of a kind these tests check.
        Objects::parse(
            &fs::read_to_string(f).expect("read"),
            &f.display().to_string(),
        );
    }
}

#[test]
fn daemon_set_has_the_modelled_posture() {
    let objs = daemon_set_objects();
    assert_no_violations(
        "deploy/kubernetes DaemonSet",
        daemon_set_violations(&objs, &External::default()),
    );

    // Spelled out once more, directly against the model.
    let loader = container(objs.daemon_set_pod(), "loader").expect("loader");
    let add = loader
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .expect("loader adds capabilities");
    assert_eq!(add, model_names());
    assert_eq!(
        add,
        [
            "BPF",
            "PERFMON",
            "SYS_PTRACE",
            "CHECKPOINT_RESTORE",
            "DAC_READ_SEARCH"
        ]
    );
    // The namespace allows what the loader needs (Pod Security "privileged").
    let ns = &objs.namespaces[0];
    assert_eq!(
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce"))
            .map(String::as_str),
        Some("privileged")
    );
    for sa in &objs.service_accounts {
        assert_eq!(sa.automount_service_account_token, Some(false));
    }
}

#[test]
fn config_map_holds_obi_yaml_with_kubernetes_metadata_on() {
    let objs = daemon_set_objects();
    let cm = &objs.config_maps[0];
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("tandem-config.yml"))
        .expect("tandem-config.yml");
    let config: yaml_serde::Value = yaml_serde::from_str(text).expect("the config is YAML");
    assert_eq!(
        config["attributes"]["kubernetes"]["enable"],
        yaml_serde::Value::Bool(true)
    );
    assert!(config["discovery"]["instrument"].is_sequence());
}

#[test]
fn sidecar_has_the_modelled_posture() {
    let objs = Objects::load(&["namespace.yaml", "rbac.yaml", "config.yaml", "sidecar.yaml"]);
    assert_eq!(objs.deployments.len(), 1);
    let spec = objs.deployments[0]
        .spec
        .template
        .spec
        .as_ref()
        .expect("Deployment pod spec");
    assert_eq!(spec.containers.len(), 3, "application, loader, processor");
    assert_no_violations(
        "deploy/kubernetes/sidecar.yaml",
        pod_violations(spec, PodMode::Sidecar, &objs, &External::default()),
    );
    assert_no_violations(
        "sidecar RBAC",
        rbac_violations(&objs, spec.service_account_name.as_deref().unwrap_or("")),
    );
    let processor = container(spec, "processor").expect("processor");
    let app_port = container(spec, "app")
        .and_then(|c| c.ports.as_ref())
        .and_then(|p| p.first())
        .map(|p| p.container_port.to_string());
    assert_eq!(
        env_value(processor, "OTEL_EBPF_OPEN_PORT").map(str::to_string),
        app_port,
        "the processor selects the application's port"
    );
}

/// Mutations of the DaemonSet; each must be reported.
type Mutation = (&'static str, fn(&mut Objects));

fn loader_mut(o: &mut Objects) -> &mut Container {
    o.daemon_set_pod_mut()
        .containers
        .iter_mut()
        .find(|c| c.name == "loader")
        .expect("loader")
}

fn processor_mut(o: &mut Objects) -> &mut Container {
    o.daemon_set_pod_mut()
        .containers
        .iter_mut()
        .find(|c| c.name == "processor")
        .expect("processor")
}

fn loader_caps_mut(o: &mut Objects) -> &mut Vec<String> {
    loader_mut(o)
        .security_context
        .as_mut()
        .and_then(|s| s.capabilities.as_mut())
        .and_then(|c| c.add.as_mut())
        .expect("loader adds")
}

const MUTATIONS: &[Mutation] = &[
    ("loader loses DAC_READ_SEARCH", |o| {
        loader_caps_mut(o).retain(|c| c != "DAC_READ_SEARCH")
    }),
    // No feature of the model opens raw or packet sockets.
    ("loader gains NET_RAW", |o| {
        loader_caps_mut(o).push("NET_RAW".into())
    }),
    ("loader gains SYS_ADMIN", |o| {
        loader_caps_mut(o).push("SYS_ADMIN".into())
    }),
    ("loader swaps CHECKPOINT_RESTORE for SYS_RESOURCE", |o| {
        for c in loader_caps_mut(o).iter_mut() {
            if c == "CHECKPOINT_RESTORE" {
                *c = "SYS_RESOURCE".into();
            }
        }
    }),
    ("loader lists BPF twice instead of PERFMON", |o| {
        for c in loader_caps_mut(o).iter_mut() {
            if c == "PERFMON" {
                *c = "BPF".into();
            }
        }
    }),
    ("loader keeps the default capabilities", |o| {
        let sc = loader_mut(o).security_context.as_mut().expect("sc");
        sc.capabilities.as_mut().expect("caps").drop = None;
    }),
    ("loader privileged", |o| {
        loader_mut(o)
            .security_context
            .as_mut()
            .expect("sc")
            .privileged = Some(true)
    }),
    ("loader writable root filesystem", |o| {
        loader_mut(o)
            .security_context
            .as_mut()
            .expect("sc")
            .read_only_root_filesystem = Some(false)
    }),
    ("pod without hostPID", |o| {
        o.daemon_set_pod_mut().host_pid = None
    }),
    ("pod without fsGroup", |o| {
        if let Some(sc) = o.daemon_set_pod_mut().security_context.as_mut() {
            sc.fs_group = None;
        }
    }),
    ("pod automounts the token", |o| {
        o.daemon_set_pod_mut().automount_service_account_token = Some(true)
    }),
    ("token mounted into the loader", |o| {
        let m = processor_mut(o)
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == TOKEN_PATH)
            .cloned()
            .expect("token mount");
        loader_mut(o)
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(m);
    }),
    ("processor runs as root", |o| {
        processor_mut(o)
            .security_context
            .as_mut()
            .expect("sc")
            .run_as_user = Some(0)
    }),
    ("processor may run as root", |o| {
        processor_mut(o)
            .security_context
            .as_mut()
            .expect("sc")
            .run_as_non_root = None
    }),
    ("processor adds NET_ADMIN", |o| {
        let sc = processor_mut(o).security_context.as_mut().expect("sc");
        sc.capabilities.as_mut().expect("caps").add = Some(vec!["NET_ADMIN".into()]);
    }),
    ("processor may escalate", |o| {
        processor_mut(o)
            .security_context
            .as_mut()
            .expect("sc")
            .allow_privilege_escalation = Some(true)
    }),
    ("processor unconfined", |o| {
        let sc = processor_mut(o).security_context.as_mut().expect("sc");
        sc.seccomp_profile.as_mut().expect("seccomp").type_ = "Unconfined".into();
    }),
    ("processor writable root filesystem", |o| {
        processor_mut(o)
            .security_context
            .as_mut()
            .expect("sc")
            .read_only_root_filesystem = None
    }),
    ("socket group is not the processor's", |o| {
        for e in loader_mut(o).env.iter_mut().flatten() {
            if e.name == "TANDEM_SOCKET_GROUP" {
                e.value = Some("1000".into());
            }
        }
    }),
    ("processor looks for the socket elsewhere", |o| {
        for e in processor_mut(o).env.iter_mut().flatten() {
            if e.name == "TANDEM_LOADER_SOCKET" {
                e.value = Some("/tmp/loader.sock".into());
            }
        }
    }),
    ("processor may run privileged", |o| {
        processor_mut(o)
            .env
            .get_or_insert_with(Vec::new)
            .retain(|e| e.name != "TANDEM_REFUSE_PRIVILEGED")
    }),
    ("no node name", |o| {
        processor_mut(o)
            .env
            .get_or_insert_with(Vec::new)
            .retain(|e| e.name != "KUBE_NODE_NAME")
    }),
    ("headers in plain text", |o| {
        for e in processor_mut(o).env.iter_mut().flatten() {
            if e.name == "OTEL_EXPORTER_OTLP_HEADERS" {
                e.value_from = None;
                e.value = Some("Authorization=Bearer x".into());
            }
        }
    }),
    ("ClusterRole may create pods", |o| {
        o.cluster_roles[0].rules.get_or_insert_with(Vec::new)[0]
            .verbs
            .push("create".into())
    }),
    ("ClusterRole reads secrets", |o| {
        o.cluster_roles[0].rules.get_or_insert_with(Vec::new)[0]
            .resources
            .get_or_insert_with(Vec::new)
            .push("secrets".into())
    }),
    ("ClusterRole cannot watch replicasets", |o| {
        o.cluster_roles[0].rules.get_or_insert_with(Vec::new)[1]
            .verbs
            .retain(|v| v != "watch")
    }),
];

#[test]
fn posture_checks_catch_every_mutation() {
    let objs = daemon_set_objects();
    assert_no_violations(
        "unmutated",
        daemon_set_violations(&objs, &External::default()),
    );
    for (what, mutate) in MUTATIONS {
        let mut m = objs.clone();
        mutate(&mut m);
        let v = daemon_set_violations(&m, &External::default());
        assert!(!v.is_empty(), "not caught: {what}");
    }
    // Every single capability of the model, removed or replaced, is caught.
    for cap in model_names() {
        let mut m = objs.clone();
        loader_caps_mut(&mut m).retain(|c| *c != cap);
        assert!(
            !daemon_set_violations(&m, &External::default()).is_empty(),
            "dropping {cap} not caught"
        );
        let mut m = objs.clone();
        for c in loader_caps_mut(&mut m).iter_mut() {
            if *c == cap {
                *c = "SYS_ADMIN".into();
            }
        }
        assert!(
            !daemon_set_violations(&m, &External::default()).is_empty(),
            "replacing {cap} not caught"
        );
    }
}

// ---------------------------------------------------------------------------------
// Helm chart

#[test]
fn chart_lints() {
    let chart = chart_dir();
    let out = helm(&["lint", "--strict", chart.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "helm lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chart_renders_the_same_posture() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Defaults: the chart creates its Secret.
    let rendered = helm_template(&[]);
    let path = dir.path().join("default.yaml");
    fs::write(&path, &rendered).expect("write");
    kubernetes_validate(&path);
    let objs = Objects::parse(&rendered, "helm template (defaults)");
    assert_eq!(objs.secrets.len(), 1, "the chart's Secret");
    assert_no_violations(
        "helm template (defaults)",
        daemon_set_violations(&objs, &External::default()),
    );
    let processor = container(objs.daemon_set_pod(), "processor").expect("processor");
    assert_eq!(
        env_value(processor, "OTEL_EBPF_OPEN_PORT"),
        Some("80,443,8000-8999")
    );
    assert_eq!(
        env_value(processor, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://otel-collector.observability:4317")
    );

    // Values: an existing Secret, an executable glob, another uid, images.
    let rendered = helm_template(&[
        "--set",
        "otlp.existingSecret=vendor-otlp",
        "--set",
        "otlp.existingSecretKey=api-headers",
        "--set",
        "selection.exeGlob=*/nginx",
        "--set",
        "processor.uid=1000",
        "--set",
        "processor.gid=1000",
        "--set",
        "image.loader.repository=registry.example/tandem-loader",
        "--set",
        "image.processor.tag=9.9.9",
    ]);
    let path = dir.path().join("values.yaml");
    fs::write(&path, &rendered).expect("write");
    kubernetes_validate(&path);
    let objs = Objects::parse(&rendered, "helm template (values)");
    assert!(objs.secrets.is_empty(), "no Secret with existingSecret");
    assert_no_violations(
        "helm template (values)",
        daemon_set_violations(
            &objs,
            &External {
                secrets: &["vendor-otlp"],
            },
        ),
    );
    let spec = objs.daemon_set_pod();
    let processor = container(spec, "processor").expect("processor");
    let loader = container(spec, "loader").expect("loader");
    assert_eq!(
        env_value(processor, "OTEL_EBPF_AUTO_TARGET_EXE"),
        Some("*/nginx")
    );
    let r = env(processor, "OTEL_EXPORTER_OTLP_HEADERS")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!(
        (r.name.as_str(), r.key.as_str()),
        ("vendor-otlp", "api-headers")
    );
    assert_eq!(env_value(loader, "TANDEM_SOCKET_GROUP"), Some("1000"));
    assert_eq!(
        loader.image.as_deref(),
        Some("registry.example/tandem-loader:0.1.0")
    );
    assert_eq!(processor.image.as_deref(), Some("tandem-processor:9.9.9"));

    // A root processor is refused at render time.
    let chart = chart_dir();
    let out = helm(&[
        "template",
        "t",
        chart.to_str().expect("utf-8 path"),
        "--set",
        "processor.uid=0",
    ]);
    assert!(!out.status.success(), "processor.uid=0 must not render");
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-zero"));
}

#[test]
fn chart_and_manifests_agree() {
    let plain = daemon_set_objects();
    let chart = Objects::parse(&helm_template(&[]), "helm template");
    let p = plain.daemon_set_pod();
    let c = chart.daemon_set_pod();
    for name in ["loader", "processor"] {
        let a = container(p, name).expect("container");
        let b = container(c, name).expect("container");
        assert_eq!(
            a.security_context, b.security_context,
            "{name} securityContext"
        );
        let names = |c: &Container| -> BTreeSet<String> {
            c.env.iter().flatten().map(|e| e.name.clone()).collect()
        };
        assert_eq!(
            names(a),
            names(b)
                .into_iter()
                .filter(|n| n != "OTEL_EBPF_OPEN_PORT")
                .collect(),
            "{name} env names"
        );
    }
    assert_eq!(p.security_context, c.security_context);
    assert_eq!(plain.cluster_roles[0].rules, chart.cluster_roles[0].rules);
}

// ---------------------------------------------------------------------------------
// systemd units

/// A unit file's `[Service]` (or other section) settings, in order.
fn unit_settings(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        if current == section {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

/// A list setting as systemd merges it: assignments accumulate, an empty one resets.
/// `None` when the setting never appears.
fn unit_list(settings: &[(String, String)], key: &str) -> Option<BTreeSet<String>> {
    let mut seen = false;
    let mut set = BTreeSet::new();
    for (k, v) in settings {
        if k != key {
            continue;
        }
        seen = true;
        if v.is_empty() {
            set.clear();
        }
        set.extend(v.split_whitespace().map(str::to_string));
    }
    seen.then_some(set)
}

fn unit_value<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn unit_text(name: &str) -> String {
    let path = repo().join("deploy/systemd").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `--socket PATH` in an ExecStart line.
fn socket_arg(exec: &str) -> Option<String> {
    let mut words = exec.split_whitespace();
    while let Some(w) = words.next() {
        if w == "--socket" {
            return words
                .next()
                .map(|s| s.trim_matches(['\'', '"']).to_string());
        }
        if let Some(p) = w.strip_prefix("--socket=") {
            return Some(p.trim_matches(['\'', '"']).to_string());
        }
    }
    None
}

fn loader_unit_violations(text: &str) -> Vec<String> {
    let s = unit_settings(text, "Service");
    let mut v = Violations::default();
    let model: BTreeSet<String> = tandem_security::loader_capabilities()
        .iter()
        .map(|c| c.to_string())
        .collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let got = unit_list(&s, key);
        v.check(got.as_ref() == Some(&model), || {
            format!("loader unit: {key} is {got:?}, the model is {model:?}")
        });
    }
    let user = unit_value(&s, "User").unwrap_or("");
    v.check(!user.is_empty() && user != "root" && user != "0", || {
        format!("loader unit: User must be a non-root user, is {user:?}")
    });
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RuntimeDirectory", "tandem"),
    ] {
        let got = unit_value(&s, key);
        v.check(got == Some(want), || {
            format!("loader unit: {key} must be {want}, is {got:?}")
        });
    }
    let exec = unit_value(&s, "ExecStart").unwrap_or("");
    v.check(exec.contains("tandem-loader"), || {
        "loader unit: ExecStart runs tandem-loader".into()
    });
    v.check(
        socket_arg(exec).is_some_and(|p| p.starts_with("/run/tandem/")),
        || "loader unit: --socket must be in its RuntimeDirectory /run/tandem".into(),
    );
    v.0
}

fn processor_unit_violations(text: &str, loader_text: &str) -> Vec<String> {
    let s = unit_settings(text, "Service");
    let l = unit_settings(loader_text, "Service");
    let mut v = Violations::default();
    let bounding = unit_list(&s, "CapabilityBoundingSet");
    v.check(bounding.as_ref().is_some_and(BTreeSet::is_empty), || {
        format!("processor unit: CapabilityBoundingSet must be present and empty, is {bounding:?}")
    });
    let ambient = unit_list(&s, "AmbientCapabilities");
    v.check(ambient.is_none_or(|a| a.is_empty()), || {
        "processor unit: no AmbientCapabilities".into()
    });
    v.check(unit_value(&s, "NoNewPrivileges") == Some("yes"), || {
        "processor unit: NoNewPrivileges=yes".into()
    });
    v.check(
        text.lines()
            .any(|l| l.trim() == "Environment=TANDEM_REFUSE_PRIVILEGED=true"),
        || "processor unit: Environment=TANDEM_REFUSE_PRIVILEGED=true".into(),
    );
    let user = unit_value(&s, "User").unwrap_or("");
    let dynamic = unit_value(&s, "DynamicUser") == Some("yes");
    v.check(
        dynamic || (!user.is_empty() && user != "root" && user != "0"),
        || format!("processor unit: needs DynamicUser=yes or a non-root User, has {user:?}"),
    );
    v.check(user != unit_value(&l, "User").unwrap_or(""), || {
        "processor unit: must not share the loader's user".into()
    });
    // Reaches the socket: the loader's group as primary group (the gid the loader
    // admits peers by) and for the socket file's permissions.
    let group = unit_value(&l, "Group");
    v.check(group.is_some() && unit_value(&s, "Group") == group, || {
        format!("processor unit: Group must be the loader's socket group {group:?}")
    });
    let loader_socket = socket_arg(unit_value(&l, "ExecStart").unwrap_or(""));
    let socket = socket_arg(unit_value(&s, "ExecStart").unwrap_or(""));
    v.check(socket.is_some() && socket == loader_socket, || {
        format!("processor unit: --socket {socket:?} must be the loader's {loader_socket:?}")
    });
    v.0
}

#[test]
fn systemd_units_have_the_modelled_capabilities() {
    let loader = unit_text("tandem-loader.service");
    let processor = unit_text("tandem-processor.service");
    assert_no_violations("tandem-loader.service", loader_unit_violations(&loader));
    assert_no_violations(
        "tandem-processor.service",
        processor_unit_violations(&processor, &loader),
    );
    // The users exist through sysusers.d, in the socket group.
    let sysusers = unit_text("tandem.sysusers.conf");
    let ls = unit_settings(&loader, "Service");
    let group = unit_value(&ls, "Group").expect("loader Group");
    for unit in [&loader, &processor] {
        let user = unit_value(&unit_settings(unit, "Service"), "User")
            .expect("User")
            .to_string();
        assert!(
            sysusers.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 3 && w[0] == "u" && w[1] == user && w[2] == format!("-:{group}")
            }),
            "sysusers declares {user} with primary group {group}"
        );
    }
    assert!(sysusers
        .lines()
        .any(|l| l.split_whitespace().take(2).eq(["g", group])));

    // Mutations: one capability changed anywhere is caught.
    for cap in tandem_security::loader_capabilities() {
        let name = cap.to_string();
        for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
            let mutated: String = loader
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{key}=")) {
                        l.replace(&format!("{name} "), "")
                            .replace(&format!(" {name}"), "")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            assert_ne!(mutated, loader);
            assert!(
                !loader_unit_violations(&mutated).is_empty(),
                "removing {name} from {key} not caught"
            );
        }
    }
    let extra = loader.replace("AmbientCapabilities=", "AmbientCapabilities=CAP_SYS_ADMIN ");
    assert!(!loader_unit_violations(&extra).is_empty());
    let reset = format!("{loader}\n[Service]\nCapabilityBoundingSet=\n");
    assert!(
        !loader_unit_violations(&reset).is_empty(),
        "an empty assignment resets"
    );
    let caps = processor.replace(
        "CapabilityBoundingSet=\n",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
    );
    assert!(!processor_unit_violations(&caps, &loader).is_empty());
    let root = loader.replace("User=tandem-loader", "User=root");
    assert!(!loader_unit_violations(&root).is_empty());
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    tool_output(
        Command::new("systemd-analyze").args(args).arg(unit),
        "systemd-analyze (Debian package systemd)",
    )
}

#[test]
fn systemd_units_verify_and_score() {
    let dir = tempfile::tempdir().expect("tempdir");
    // verify checks that ExecStart's binary exists: point it at the built binaries.
    for (unit, bin, threshold) in [
        ("tandem-loader.service", loader_bin(), 30),
        ("tandem-processor.service", processor_bin(), 20),
    ] {
        let text = unit_text(unit).replace(
            &format!(
                "/usr/local/bin/{}",
                bin.file_name().expect("name").to_string_lossy()
            ),
            bin.to_str().expect("utf-8 path"),
        );
        let path = dir.path().join(unit);
        fs::write(&path, text).expect("write unit");
        let out = systemd_analyze(&["verify"], &path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "systemd-analyze verify {unit}:\n{stderr}"
        );
        let own: Vec<&str> = stderr.lines().filter(|l| l.contains(unit)).collect();
        assert!(
            own.is_empty(),
            "systemd-analyze verify {unit} warns:\n{}",
            own.join("\n")
        );
        // The exposure score (0 best, 100 worst, as 10x the printed value) stays low.
        let out = systemd_analyze(
            &[
                "security",
                "--offline=true",
                &format!("--threshold={threshold}"),
            ],
            &path,
        );
        assert!(
            out.status.success(),
            "systemd-analyze security {unit} above {threshold}:\n{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains('✗') || l.contains("Overall"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------
// Dockerfiles (no container engine here: checked as text, not built)

/// A Dockerfile instruction: (op, arguments).
type Instruction = (String, String);

/// One build stage.
struct Stage {
    base: String,
    name: String,
    instructions: Vec<Instruction>,
}

/// Instructions of a Dockerfile: continuation lines joined, comments dropped.
fn dockerfile(name: &str) -> Vec<Instruction> {
    let text = fs::read_to_string(repo().join("deploy/docker").join(name)).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (op, rest) = current.split_once(' ').unwrap_or((current.as_str(), ""));
                out.push((op.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// The stages in order.
fn stages(instructions: &[Instruction]) -> Vec<Stage> {
    let mut out: Vec<Stage> = Vec::new();
    for (op, rest) in instructions {
        if op == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            out.push(Stage {
                base: words.first().unwrap_or(&"").to_string(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(last) = out.last_mut() {
            last.instructions.push((op.clone(), rest.clone()));
        }
    }
    out
}

/// Checks an image's stages; returns its final USER and the builder's instructions.
fn check_image(file: &str, bin: &str) -> (String, Vec<Instruction>) {
    let all = dockerfile(file);
    let st = stages(&all);
    assert!(st.len() >= 2, "{file}: multi-stage");
    let Stage {
        base: builder_base,
        name: builder_name,
        instructions: builder,
    } = &st[0];
    assert!(
        builder_base.starts_with("rust:"),
        "{file}: builds with the rust image, not {builder_base}"
    );
    assert!(
        builder.iter().any(|(op, r)| op == "RUN"
            && r.contains("cargo build")
            && r.contains("--release")
            && r.contains("--locked")
            && r.contains(&format!("-p {bin}"))),
        "{file}: cargo build --release --locked -p {bin}"
    );
    let Stage {
        base: runtime_base,
        instructions: runtime,
        ..
    } = st.last().expect("runtime stage");
    assert!(
        runtime_base.contains("distroless") || runtime_base.contains("-slim"),
        "{file}: minimal runtime image, not {runtime_base}"
    );
    let target = format!("/usr/local/bin/{bin}");
    assert!(
        runtime.iter().any(|(op, r)| op == "COPY"
            && r.contains(&format!("--from={builder_name}"))
            && r.contains(&format!("target/release/{bin}"))
            && r.ends_with(&target)),
        "{file}: copies the release binary from {builder_name} to {target}"
    );
    let entry = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entry.1).expect("ENTRYPOINT in exec form");
    assert_eq!(argv, [target]);
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| u.clone())
        .expect("USER");
    (user, builder.clone())
}

#[test]
fn dockerfiles_are_multi_stage_with_the_right_users() {
    // Processor: non-root, and the uid/gid the Kubernetes manifests run it as.
    let (user, _) = check_image("processor.Dockerfile", "tandem-processor");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let (uid, gid): (i64, i64) = (
        uid.parse().expect("numeric uid"),
        gid.parse().expect("numeric gid"),
    );
    assert_ne!(uid, 0, "processor image runs as non-root");
    assert_ne!(gid, 0);
    let objs = daemon_set_objects();
    let sc = container(objs.daemon_set_pod(), "processor")
        .and_then(|c| c.security_context.clone())
        .expect("processor securityContext");
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(uid), Some(gid)));

    // Loader: the eBPF toolchain of scripts/setup.sh, uid 0 (capabilities come from
    // the orchestrator's drop ALL + add, see the Dockerfile).
    let (user, builder) = check_image("loader.Dockerfile", "tandem-loader");
    assert_eq!(user, "0:0");
    let runs: Vec<&str> = builder
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    assert!(
        runs.iter().any(|r| r.contains("llvm-22-dev")),
        "LLVM 22 for bpf-linker"
    );
    assert!(
        runs.iter()
            .any(|r| r.contains("toolchain install nightly") && r.contains("rust-src")),
        "nightly + rust-src"
    );
    assert!(
        runs.iter().any(|r| r.contains("cargo install bpf-linker")
            && r.contains("--version 0.13.0")
            && r.contains("LLVM_PREFIX=/usr/lib/llvm-22")
            && r.contains("--features llvm-22")),
        "bpf-linker 0.13.0 against LLVM 22, as scripts/setup.sh"
    );
    let setup = fs::read_to_string(repo().join("scripts/setup.sh")).expect("setup.sh");
    assert!(setup.contains("bpf-linker --version 0.13.0") && setup.contains("--features llvm-22"));
    // The docker run line in the loader image's comments adds exactly the model.
    let text = fs::read_to_string(repo().join("deploy/docker/loader.Dockerfile")).expect("read");
    let added: BTreeSet<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--cap-add")
        .map(|w| w[1].to_string())
        .collect();
    assert_eq!(added, model_names().into_iter().collect::<BTreeSet<_>>());
}

// ---------------------------------------------------------------------------------
// The DaemonSet's permissions, reproduced with the real binaries

fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var(REQUIRE_PRIVILEGED_ENV).is_ok_and(|v| v == "1") {
        panic!("{test} needs root (setpriv), and {REQUIRE_PRIVILEGED_ENV}=1 requires it");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: needs root (setpriv)");
    false
}

/// The capability bits of `names` (`BPF`, ...), as /proc/<pid>/status prints them.
fn cap_mask(names: &[String]) -> u64 {
    tandem_security::Capability::ALL
        .into_iter()
        .filter(|c| names.iter().any(|n| n == c.name()))
        .map(|c| 1u64 << c.to_caps().index())
        .sum()
}

fn status_caps(pid: i32) -> BTreeMap<String, u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap"))
        .map(|(k, v)| {
            (
                k.to_string(),
                u64::from_str_radix(v.trim(), 16).expect("hex"),
            )
        })
        .collect()
}

/// `setpriv` arguments reproducing a container's user, groups and capabilities as the
/// container runtime applies them (bounding set = the added capabilities; uid 0 gets
/// the bounding set on exec, anyone else nothing).
fn setpriv(uid: i64, gid: i64, groups: &[i64], add: &[String], nnp: bool) -> Vec<String> {
    let bounding = if add.is_empty() {
        "-all".to_string()
    } else {
        format!(
            "-all,{}",
            add.iter()
                .map(|c| format!("+{}", c.to_lowercase()))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let mut a = vec![
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        if groups.is_empty() {
            "--clear-groups".into()
        } else {
            format!(
                "--groups={}",
                groups
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        },
        "--inh-caps=-all".into(),
        format!("--bounding-set={bounding}"),
    ];
    if nnp {
        a.push("--no-new-privs".into());
    }
    a.push("--".into());
    a
}

#[test]
fn daemon_set_security_contexts_let_exactly_the_processor_subscribe() {
    if !require_root("daemon_set_security_contexts_let_exactly_the_processor_subscribe") {
        return;
    }
    let objs = daemon_set_objects();
    let spec = objs.daemon_set_pod();
    let loader = container(spec, "loader").expect("loader");
    let processor = container(spec, "processor").expect("processor");
    let lsc = loader.security_context.clone().expect("loader sc");
    let psc = processor.security_context.clone().expect("processor sc");
    let add = lsc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .expect("add");
    let groups = spec
        .security_context
        .as_ref()
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();

    // The emptyDir: a fresh 0777 directory; the socket at the manifest's file name.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let empty_dir = dir.path().join("run");
    fs::create_dir(&empty_dir).expect("mkdir");
    fs::set_permissions(&empty_dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    let manifest_socket = env_value(loader, "TANDEM_LOADER_SOCKET").expect("socket");
    let socket = empty_dir.join(Path::new(manifest_socket).file_name().expect("file name"));
    // The ConfigMap, as mounted.
    let config_dir = dir.path().join("config");
    fs::create_dir(&config_dir).expect("mkdir");
    for (k, v) in objs.config_maps[0].data.iter().flatten() {
        fs::write(config_dir.join(k), v).expect("write config");
    }
    let config_path = config_dir.join(
        Path::new(env_value(processor, "OTEL_EBPF_CONFIG_PATH").expect("config path"))
            .file_name()
            .expect("file name"),
    );
    fs::set_permissions(&config_dir, fs::Permissions::from_mode(0o755)).expect("chmod");

    // Values straight from the manifest, except the paths above.
    let manifest_env = |c: &Container, cmd: &mut Command| {
        cmd.env_clear().env("PATH", "/usr/bin:/bin");
        for e in c.env.iter().flatten() {
            if let Some(v) = &e.value {
                cmd.env(&e.name, v);
            }
        }
        cmd.env("TANDEM_LOADER_SOCKET", &socket);
    };

    let mut cmd = Command::new("setpriv");
    cmd.args(setpriv(
        lsc.run_as_user.expect("uid"),
        lsc.run_as_group.expect("gid"),
        &groups,
        &add,
        lsc.allow_privilege_escalation == Some(false),
    ))
    .arg(loader_bin())
    .args([
        "--source",
        "synthetic",
        "--synthetic-requests",
        "20",
        "--rate",
        "200",
    ]);
    manifest_env(loader, &mut cmd);
    let loader_proc = Running::spawn(cmd, "tandem-loader (DaemonSet loader context)");
    loader_proc
        .stderr
        .wait_for("serving tandem.loader.v1", PATIENCE);

    // Exactly the model's capabilities, in every set that matters.
    let status = status_caps(loader_proc.pid());
    let want = cap_mask(&model_names());
    assert_eq!(status["CapEff"], want, "loader effective set");
    assert_eq!(status["CapPrm"], want, "loader permitted set");
    assert_eq!(status["CapBnd"], want, "loader bounding set");
    assert_eq!(status["CapAmb"], 0);

    // The socket belongs to the processor's group, mode 0660.
    let meta = fs::metadata(&socket).expect("socket exists");
    let gid = psc.run_as_group.expect("processor gid");
    assert_eq!(i64::from(meta.gid()), gid, "socket group");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");

    // The processor, as its securityContext says: receives the loader's events.
    let processor_cmd = |uid: i64, gid: i64, groups: &[i64], name: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args(setpriv(uid, gid, groups, &[], true))
            .arg(processor_bin())
            .args(["--print", "json", "--name", name]);
        manifest_env(processor, &mut cmd);
        cmd.env("OTEL_EBPF_CONFIG_PATH", &config_path)
            // No Kubernetes API and no collector here.
            .env("OTEL_EBPF_KUBE_METADATA_ENABLE", "false")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // Two processors on one host: a health check port each.
            .env(
                "OTEL_EBPF_HEALTH_CHECK_PORT",
                tandem_integration_tests::free_port().to_string(),
            );
        cmd
    };
    let p = Running::spawn(
        processor_cmd(psc.run_as_user.expect("uid"), gid, &groups, "daemonset"),
        "tandem-processor (DaemonSet processor context)",
    );
    let events = read_events(&p, 10, PATIENCE);
    assert!(
        events.iter().any(|e| e["kind"] == "data"),
        "data events: {events:?}"
    );
    let pstatus = status_caps(p.pid());
    assert_eq!(pstatus["CapEff"], 0, "processor has no capabilities");
    assert_eq!(pstatus["CapBnd"], 0, "processor cannot gain any");

    // Another unprivileged user, even with the socket group as a supplementary group
    // (so the file permissions let it connect), is refused by the loader's allowlist.
    let intruder = Running::spawn(
        processor_cmd(4242, 4242, &[gid], "intruder"),
        "tandem-processor (other uid)",
    );
    loader_proc.stderr.wait_for("refused peer", PATIENCE);
    assert_eq!(
        intruder.stdout.count("\"kind\""),
        0,
        "the intruder got no events"
    );
}

/// Users (uid, primary gid) and groups (gid) by name.
struct SysusersIds {
    users: BTreeMap<String, (u32, u32)>,
    groups: BTreeMap<String, u32>,
}

/// Runs `systemd-sysusers --root` with deploy/systemd/tandem.sysusers.conf on a copy of
/// this machine's /etc/passwd and /etc/group, and reads what it created.
fn sysusers_ids() -> SysusersIds {
    let root = tempfile::tempdir().expect("tempdir");
    let etc = root.path().join("etc");
    fs::create_dir(&etc).expect("mkdir");
    for f in ["passwd", "group"] {
        fs::copy(Path::new("/etc").join(f), etc.join(f)).expect("copy /etc file");
    }
    for f in ["shadow", "gshadow"] {
        fs::write(etc.join(f), "").expect("write");
    }
    let out = tool_output(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.path().display()))
            .arg(repo().join("deploy/systemd/tandem.sysusers.conf")),
        "systemd-sysusers (Debian package systemd)",
    );
    assert!(
        out.status.success(),
        "systemd-sysusers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| fs::read_to_string(etc.join(f)).expect("read");
    let users = read("passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?),
            ))
        })
        .collect();
    let groups = read("group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect();
    SysusersIds { users, groups }
}

/// The single-quoted script of an `ExecStart=/bin/sh -c '...'` line, with systemd's `$$`
/// unescaped.
fn exec_start_script(exec: &str) -> String {
    let start = exec.find('\'').expect("ExecStart has a quoted script");
    let end = exec.rfind('\'').expect("closing quote");
    exec[start + 1..end].replace("$$", "$")
}

#[test]
fn systemd_units_permissions_let_exactly_the_processor_subscribe() {
    if !require_root("systemd_units_permissions_let_exactly_the_processor_subscribe") {
        return;
    }
    let loader_unit = unit_settings(&unit_text("tandem-loader.service"), "Service");
    let processor_unit = unit_settings(&unit_text("tandem-processor.service"), "Service");
    // The users and group as systemd-sysusers creates them from tandem.sysusers.conf
    // (into a copy of this machine's /etc, as an installation would).
    let ids = sysusers_ids();
    let user_of = |unit: &[(String, String)]| unit_value(unit, "User").expect("User").to_string();
    let (loader_uid, _) = ids.users[&user_of(&loader_unit)];
    let (processor_uid, processor_gid) = ids.users[&user_of(&processor_unit)];
    let tandem_gid = ids.groups[unit_value(&loader_unit, "Group").expect("Group")];
    assert_eq!(
        processor_gid, tandem_gid,
        "the processor's primary group is the socket group"
    );

    // RuntimeDirectory=tandem, RuntimeDirectoryMode=0750, owned by User:Group.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let runtime_dir = dir
        .path()
        .join(unit_value(&loader_unit, "RuntimeDirectory").expect("RuntimeDirectory"));
    fs::create_dir(&runtime_dir).expect("mkdir");
    let mode = u32::from_str_radix(
        unit_value(&loader_unit, "RuntimeDirectoryMode").expect("mode"),
        8,
    )
    .expect("octal mode");
    fs::set_permissions(&runtime_dir, fs::Permissions::from_mode(mode)).expect("chmod");
    nix::unistd::chown(
        &runtime_dir,
        Some(nix::unistd::Uid::from_raw(loader_uid)),
        Some(nix::unistd::Gid::from_raw(tandem_gid)),
    )
    .expect("chown");
    let unit_socket =
        socket_arg(unit_value(&loader_unit, "ExecStart").expect("ExecStart")).expect("--socket");
    let socket = runtime_dir.join(Path::new(&unit_socket).file_name().expect("file name"));
    let localize = |s: &str| {
        s.replace(
            "/usr/local/bin/tandem-loader",
            loader_bin().to_str().expect("utf-8"),
        )
        .replace(
            "/usr/local/bin/tandem-processor",
            processor_bin().to_str().expect("utf-8"),
        )
        .replace(&unit_socket, socket.to_str().expect("utf-8"))
    };

    // The loader: User=, Group=, the unit's bounding and ambient sets, NoNewPrivileges,
    // UMask, and its ExecStart script (which asks `id -g` for the socket group).
    let caps = unit_list(&loader_unit, "AmbientCapabilities").expect("ambient");
    let plus = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        "umask {}; {} --source synthetic --synthetic-requests 20 --rate 200",
        unit_value(&loader_unit, "UMask").expect("UMask"),
        localize(&exec_start_script(
            unit_value(&loader_unit, "ExecStart").expect("ExecStart")
        ))
    );
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={loader_uid}"),
        format!("--regid={tandem_gid}"),
        "--clear-groups".into(),
        format!("--inh-caps={plus}"),
        format!("--ambient-caps={plus}"),
        format!("--bounding-set=-all,{plus}"),
    ]);
    assert_eq!(unit_value(&loader_unit, "NoNewPrivileges"), Some("yes"));
    cmd.args(["--no-new-privs", "--", "/bin/sh", "-c", &script]);
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    let loader = Running::spawn(cmd, "tandem-loader (systemd unit context)");
    loader.stderr.wait_for("serving tandem.loader.v1", PATIENCE);
    let status = status_caps(loader.pid());
    let want = cap_mask(&model_names());
    for set in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        assert_eq!(
            status[set], want,
            "loader {set} (ambient capabilities survive NoNewPrivileges)"
        );
    }
    let meta = fs::metadata(&socket).expect("socket exists");
    assert_eq!(meta.gid(), tandem_gid, "socket group: the loader's Group=");
    assert_eq!(meta.mode() & 0o777, 0o660);

    // The processor: its User and Group=tandem, no capabilities.
    assert_eq!(
        unit_value(&processor_unit, "Group"),
        unit_value(&loader_unit, "Group")
    );
    let exec = localize(unit_value(&processor_unit, "ExecStart").expect("ExecStart"));
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let processor_cmd = |uid: u32, gid: u32, groups: &[u32], name: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            if groups.is_empty() {
                "--clear-groups".to_string()
            } else {
                format!(
                    "--groups={}",
                    groups
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            },
            "--inh-caps=-all".into(),
            "--bounding-set=-all".into(),
            "--no-new-privs".into(),
            "--".into(),
        ])
        .args(&argv)
        .args(["--print", "json", "--name", name]);
        cmd.env_clear().env("PATH", "/usr/bin:/bin");
        cmd
    };
    let p = Running::spawn(
        processor_cmd(processor_uid, tandem_gid, &[tandem_gid], "unit"),
        "tandem-processor (systemd unit context)",
    );
    let events = read_events(&p, 10, PATIENCE);
    assert!(
        events.iter().any(|e| e["kind"] == "data"),
        "data events: {events:?}"
    );
    assert_eq!(status_caps(p.pid())["CapBnd"], 0);

    // Only a supplementary member of the group: may open the socket, refused as a peer.
    let other = Running::spawn(
        processor_cmd(4345, 4345, &[tandem_gid], "other"),
        "tandem-processor (other user in group tandem)",
    );
    loader.stderr.wait_for("refused peer", PATIENCE);
    assert_eq!(other.stdout.count("\"kind\""), 0);
}

/// Environment variable names a binary's `--help` documents (`[env: NAME=...]`).
fn help_env_names(bin: &Path) -> BTreeSet<String> {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split("env: ")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

/// Every string literal naming an environment variable in the processor's sources.
fn processor_source_env_names() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).expect("read source");
                for lit in text.split('"').skip(1).step_by(2) {
                    if !lit.is_empty()
                        && lit
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    {
                        out.insert(lit.to_string());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&repo().join("processor/src"), &mut out);
    out
}

#[test]
fn every_environment_variable_set_is_one_the_binaries_read() {
    let loader_known = help_env_names(&loader_bin());
    let mut processor_known = help_env_names(&processor_bin());
    processor_known.extend(processor_source_env_names());

    let pods = every_pod(&[
        "--set",
        "selection.exeGlob=*/x",
        "--set",
        "otlp.protocol=grpc",
        "--set",
        "kubernetes.clusterName=c",
    ]);
    for (origin, spec) in &pods {
        for (name, known) in [("loader", &loader_known), ("processor", &processor_known)] {
            let c = container(spec, name).expect("container");
            for e in c.env.iter().flatten() {
                assert!(
                    known.contains(&e.name),
                    "{origin}: {name} sets {}, which tandem-{name} does not read",
                    e.name
                );
            }
        }
    }
    // The systemd units' variables too.
    for (unit, known) in [
        ("tandem-loader.service", &loader_known),
        ("tandem-processor.service", &processor_known),
    ] {
        for (k, v) in unit_settings(&unit_text(unit), "Service") {
            if k == "Environment" {
                let name = v.split_once('=').map(|(n, _)| n).unwrap_or(&v);
                assert!(known.contains(name), "{unit}: {name} is not read");
            }
        }
    }
}

/// Issue 14 (`health_check`): every processor container's probes ask the health
/// check the same container turns on — the port named by the probes is the port of
/// `OTEL_EBPF_HEALTH_CHECK_PORT`, on every interface, liveness on `/healthz` and
/// readiness on `/readyz`. (What those paths answer is tested in
/// `processor/src/health.rs` and `tests/health.rs`.)
#[test]
fn processor_probes_reach_the_health_check_it_enables() {
    let pods = every_pod(&[]);
    for (origin, spec) in &pods {
        let c = container(spec, "processor").expect("processor container");
        let port: i32 = env_value(c, "OTEL_EBPF_HEALTH_CHECK_PORT")
            .unwrap_or_else(|| panic!("{origin}: no OTEL_EBPF_HEALTH_CHECK_PORT"))
            .parse()
            .expect("a port");
        assert_eq!(
            env_value(c, "OTEL_EBPF_HEALTH_CHECK_LISTEN_ADDRESS"),
            Some("0.0.0.0"),
            "{origin}: the kubelet probes the pod's address"
        );
        let named = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("health"))
            .unwrap_or_else(|| panic!("{origin}: no port named health"));
        assert_eq!(named.container_port, port, "{origin}");
        for (probe, path) in [
            (c.liveness_probe.as_ref(), "/healthz"),
            (c.readiness_probe.as_ref(), "/readyz"),
        ] {
            let get = probe
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{origin}: no httpGet probe for {path}"));
            assert_eq!(get.path.as_deref(), Some(path), "{origin}");
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("health".into()),
                "{origin}"
            );
        }
    }
}

/// The pod specs of the DaemonSet manifest, the sidecar manifest and the chart
/// rendered with `chart_args`.
fn every_pod(chart_args: &[&str]) -> Vec<(String, PodSpec)> {
    let plain = daemon_set_objects();
    let sidecar = Objects::load(&["sidecar.yaml"]);
    let chart = Objects::parse(&helm_template(chart_args), "helm template");
    vec![
        ("daemonset.yaml".into(), plain.daemon_set_pod().clone()),
        (
            "sidecar.yaml".into(),
            sidecar.deployments[0]
                .spec
                .template
                .spec
                .clone()
                .expect("pod spec"),
        ),
        ("helm template".into(), chart.daemon_set_pod().clone()),
    ]
}
