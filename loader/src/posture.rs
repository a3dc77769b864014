//! The loader's security posture: the capability report at start-up, the drop to the
//! run-time capability set once the probes are attached, and the report afterwards
//! (served by the `CapabilityReport` RPC).

use std::sync::Mutex;

use tandem_proto::v1::{CapabilityReportResponse, CapabilitySummary};
use tandem_security::report::{Options, Report, SocketAllowlist, Stage};
use tracing::{info, warn};

/// What the serving (or recording) loader knows about its own privileges.
pub struct Posture {
    enabled: Vec<String>,
    allowlist: Option<SocketAllowlist>,
    before: Option<Report>,
    after: Mutex<Option<After>>,
}

struct After {
    report: Report,
    dropped: Vec<String>,
}

impl Posture {
    /// Takes the start-up report for a loader whose source uses `enabled` features,
    /// and logs its summary (WARN when anything is excess or unavailable).
    pub fn new(
        enabled: &[tandem_security::FeatureId],
        allowlist: Option<SocketAllowlist>,
    ) -> Posture {
        let enabled: Vec<String> = enabled.iter().map(|f| f.name().to_owned()).collect();
        let opts = Options {
            enabled: enabled.clone(),
            stage: Stage::Attach,
            allowlist: allowlist.clone(),
        };
        let before = match Report::collect(&opts) {
            Ok(r) => {
                // The model's own capabilities that this source does not use are dropped
                // once the probes are attached; anything beyond the model deserves a WARN.
                let beyond: Vec<String> = r
                    .excess_names()
                    .into_iter()
                    .filter(|c| tandem_security::capability(c).is_none())
                    .collect();
                if beyond.is_empty() {
                    info!("capabilities at start-up: {}", r.summary());
                } else {
                    warn!(
                        "capabilities at start-up: {}; held beyond what any loader feature needs: {} (grant only what `tandem-loader capabilities` lists)",
                        r.summary(),
                        if beyond.len() > 8 { format!("{} capabilities", beyond.len()) } else { beyond.join(",") }
                    );
                }
                Some(r)
            }
            Err(e) => {
                warn!("cannot read this process's capabilities (/proc/self/status): {e}");
                None
            }
        };
        Posture {
            enabled,
            allowlist,
            before,
            after: Mutex::new(None),
        }
    }

    /// After attaching: keeps only what the enabled features need from now on (see
    /// `tandem_security::Feature::runtime_capabilities`), sets no_new_privs, and logs
    /// before and after. A failure is logged, never fatal: capture goes on.
    pub fn drop_after_attach(&self) {
        let features = self
            .enabled
            .iter()
            .filter_map(|id| tandem_security::feature(id));
        let keep = tandem_security::runtime_capabilities(features);
        let before = tandem_security::status::read_self().ok();
        let dropped = match tandem_security::privilege::drop_to(&keep) {
            Ok(d) => d,
            Err(e) => {
                warn!("could not drop the capabilities no longer needed: {e:#}");
                return;
            }
        };
        let opts = Options {
            enabled: self.enabled.clone(),
            stage: Stage::Running,
            allowlist: self.allowlist.clone(),
        };
        match Report::collect(&opts) {
            Ok(report) => {
                info!(
                    before = %before.map(|b| b.capabilities.effective.join(",")).unwrap_or_default(),
                    dropped = %dropped.removed.join(","),
                    kept = %dropped.kept.join(","),
                    bounding_reduced = dropped.bounding_reduced,
                    "dropped the capabilities no longer needed after attaching; set no_new_privs: {}",
                    report.summary()
                );
                if let Ok(mut after) = self.after.lock() {
                    *after = Some(After {
                        report,
                        dropped: dropped.removed,
                    });
                }
            }
            Err(e) => warn!("cannot read this process's capabilities after the drop: {e}"),
        }
    }

    /// The `CapabilityReport` answer.
    pub fn response(&self) -> CapabilityReportResponse {
        let after = self.after.lock().ok();
        let after = after.as_ref().and_then(|a| a.as_ref());
        let current = after.map(|a| &a.report).or(self.before.as_ref());
        let allow = self.allowlist.clone().unwrap_or_default();
        CapabilityReportResponse {
            current: current.map(summary),
            before_json: self
                .before
                .as_ref()
                .map(Report::to_json)
                .unwrap_or_default(),
            after_json: after.map(|a| a.report.to_json()).unwrap_or_default(),
            dropped: after.map(|a| a.dropped.clone()).unwrap_or_default(),
            allowed_uids: allow.uids,
            allowed_gids: allow.gids,
        }
    }
}

fn summary(r: &Report) -> CapabilitySummary {
    let c = &r.process.capabilities;
    CapabilitySummary {
        uid: r.process.euid(),
        gid: r.process.egid(),
        effective: c.effective.clone(),
        permitted: c.permitted.clone(),
        bounding: c.bounding.clone(),
        no_new_privs: r.process.no_new_privs,
        seccomp: r.process.seccomp.clone(),
        privileged: r.privileged.clone().unwrap_or_default(),
        excess: r.excess_names(),
        unavailable_features: r.unavailable(),
        strict_ok: r.strict_ok(),
    }
}
