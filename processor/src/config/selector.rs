//! `discovery.instrument` / `exclude_instrument` / `default_exclude_instrument`
//! entries as the file gives them (OBI's glob selectors), and the deserializers of
//! the discovery keys; `crate::select` applies them.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, IgnoredAny};
use serde::Deserialize;

use super::file::FIELD_MARK;
use super::values::{Ports, V};

type Ignored = Option<IgnoredAny>;

/// One entry of `discovery.instrument` (or `exclude_instrument`): OBI's glob selector.
/// All criteria given in one entry must match (AND); entries are alternatives (OR).
/// Every string criterion is a glob (OBI's `exe_path` in `discovery.instrument` is a
/// glob; the regular-expression form lived in the deprecated `discovery.services`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstrumentSelector {
    /// Service name for what matches (deprecated in OBI, still honoured there).
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(deserialize_with = "ports")]
    pub open_ports: Vec<tandem_proto::v1::PortRange>,
    /// Glob over the executable's full path (`*/nginx`).
    pub exe_path: Option<String>,
    /// Glob over the language (`java`, `go`, …).
    pub languages: Option<String>,
    pub target_pids: Vec<u32>,
    pub containers_only: bool,
    pub k8s_namespace: Option<String>,
    pub k8s_pod_name: Option<String>,
    pub k8s_deployment_name: Option<String>,
    pub k8s_replicaset_name: Option<String>,
    pub k8s_daemonset_name: Option<String>,
    pub k8s_statefulset_name: Option<String>,
    pub k8s_job_name: Option<String>,
    pub k8s_cronjob_name: Option<String>,
    /// Matches any owner (deployment, replicaset, daemonset, statefulset, …).
    pub k8s_owner_name: Option<String>,
    pub k8s_container_name: Option<String>,
    pub container_name: Option<String>,
    /// Globs over the command-line arguments after the executable, joined by
    /// single spaces (`*--port 8080*`): one glob, or a list of which any may match.
    #[serde(deserialize_with = "globs")]
    pub cmd_args: Vec<String>,
    /// Label name to value glob.
    pub k8s_pod_labels: BTreeMap<String, String>,
    /// Annotation name to value glob.
    pub k8s_pod_annotations: BTreeMap<String, String>,
    #[serde(rename = "exports")]
    _exports: Ignored,
    #[serde(rename = "sampler")]
    _sampler: Ignored,
    #[serde(rename = "routes")]
    _routes: Ignored,
    #[serde(rename = "metrics")]
    _metrics: Ignored,
}

impl InstrumentSelector {
    /// Whether the entry says something the loader can select on (ports, executable
    /// path, pids). Entries with only Kubernetes, container or language criteria
    /// cannot be expressed in a loader selection.
    pub fn has_loader_criteria(&self) -> bool {
        !self.open_ports.is_empty() || self.exe_path.is_some() || !self.target_pids.is_empty()
    }

    /// Whether the entry has `k8s_*` criteria (resolved to container ids by the
    /// processor's Kubernetes discovery when decoration is on).
    pub fn has_kubernetes_criteria(&self) -> bool {
        [
            &self.k8s_namespace,
            &self.k8s_pod_name,
            &self.k8s_deployment_name,
            &self.k8s_replicaset_name,
            &self.k8s_daemonset_name,
            &self.k8s_statefulset_name,
            &self.k8s_job_name,
            &self.k8s_cronjob_name,
            &self.k8s_owner_name,
            &self.k8s_container_name,
        ]
        .iter()
        .any(|c| c.is_some())
            || !self.k8s_pod_labels.is_empty()
            || !self.k8s_pod_annotations.is_empty()
    }

    fn has_any_criteria(&self) -> bool {
        self.has_loader_criteria()
            || self.languages.is_some()
            || !self.cmd_args.is_empty()
            || self.containers_only
            || self.container_name.is_some()
            || self.has_kubernetes_criteria()
    }
}

#[cfg(test)]
impl InstrumentSelector {
    /// The entry without its accepted-but-ignored keys (parsed, never acted on).
    pub(crate) fn without_ignored(&self) -> Self {
        InstrumentSelector {
            _exports: None,
            _sampler: None,
            _routes: None,
            _metrics: None,
            ..self.clone()
        }
    }
}

/// One glob or a list of globs.
pub(super) fn globs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(g)) => vec![g],
        Some(OneOrMany::Many(v)) => v,
    })
}

pub(super) fn ports<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<tandem_proto::v1::PortRange>, D::Error> {
    Ok(Option::<V<Ports>>::deserialize(d)?
        .map(|p| p.0 .0)
        .unwrap_or_default())
}

/// A list of selectors, each with at least one criterion (as OBI requires).
pub(super) fn checked_selectors<'de, D: Deserializer<'de>>(
    d: D,
    field: &str,
) -> Result<Option<Vec<InstrumentSelector>>, D::Error> {
    let list = Option::<Vec<InstrumentSelector>>::deserialize(d)?;
    if let Some(i) = list.iter().flatten().position(|s| !s.has_any_criteria()) {
        return Err(de::Error::custom(format!(
            "{FIELD_MARK}{field}[{i}]{FIELD_MARK}this entry has no selection criterion (give \
             open_ports, exe_path, target_pids, cmd_args, languages, containers_only, container_name or a k8s_* attribute)"
        )));
    }
    Ok(list)
}

pub(super) fn instrument<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<InstrumentSelector>, D::Error> {
    Ok(checked_selectors(d, "instrument")?.unwrap_or_default())
}

pub(super) fn exclude_instrument<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<InstrumentSelector>, D::Error> {
    Ok(checked_selectors(d, "exclude_instrument")?.unwrap_or_default())
}

/// Present but empty (`default_exclude_instrument:` or `[]`) means no default
/// exclusions, as in OBI; absent means OBI's defaults.
pub(super) fn default_exclude_instrument<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<InstrumentSelector>>, D::Error> {
    Ok(Some(
        checked_selectors(d, "default_exclude_instrument")?.unwrap_or_default(),
    ))
}

/// OBI's deprecated regular-expression selectors (`executable_path`,
/// `discovery.services`, …) are refused with directions: a regular expression cannot
/// be turned into the glob the loader matches, and ignoring a selector would
/// instrument other processes than the user asked for.
pub(super) fn refuse_regex<'de, D: Deserializer<'de>>(
    d: D,
    field: &str,
) -> Result<Ignored, D::Error> {
    IgnoredAny::deserialize(d)?;
    Err(de::Error::custom(format!(
        "{FIELD_MARK}{field}{FIELD_MARK}OBI's deprecated regular-expression selectors are not \
         supported by tandem; use discovery.instrument (open_ports, exe_path as a glob such as \
         */nginx, k8s_* attributes) or OTEL_EBPF_AUTO_TARGET_EXE / OTEL_EBPF_OPEN_PORT"
    )))
}

pub(super) fn refuse_executable_path<'de, D: Deserializer<'de>>(d: D) -> Result<Ignored, D::Error> {
    refuse_regex(d, "executable_path")
}

pub(super) fn refuse_services<'de, D: Deserializer<'de>>(d: D) -> Result<Ignored, D::Error> {
    refuse_regex(d, "services")
}

pub(super) fn refuse_exclude_services<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Ignored, D::Error> {
    refuse_regex(d, "exclude_services")
}

pub(super) fn refuse_default_exclude_services<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Ignored, D::Error> {
    refuse_regex(d, "default_exclude_services")
}
