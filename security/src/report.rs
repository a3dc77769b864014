//! The capability report: this process's capability sets and the kernel's facts,
//! compared with the model — which features can work, what each one misses, and
//! which held capabilities no enabled feature needs (excess). `tandem-loader
//! capabilities` prints it; the serving loader sends it over gRPC.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::kernel::KernelStatus;
use crate::status::ProcessStatus;
use crate::{Capability, Feature, FEATURES};

/// Which needs of a feature count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Loading and attaching programs: [`Feature::capabilities`].
    Attach,
    /// Attached, following new processes: [`Feature::runtime_capabilities`].
    Running,
}

impl Stage {
    fn needs(self, f: &Feature) -> &'static [Capability] {
        match self {
            Stage::Attach => f.capabilities,
            Stage::Running => f.runtime_capabilities,
        }
    }
}

/// Who may connect to the loader's socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SocketAllowlist {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub socket_group: Option<u32>,
}

/// What the report is about.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ids of the features in use (each must be available); the others are listed
    /// but need nothing.
    pub enabled: Vec<String>,
    pub stage: Stage,
    pub allowlist: Option<SocketAllowlist>,
}

impl Options {
    /// Every feature of the model, at attach time.
    pub fn all_features() -> Self {
        Options {
            enabled: FEATURES.iter().map(|f| f.id.to_owned()).collect(),
            stage: Stage::Attach,
            allowlist: None,
        }
    }
}

/// One feature's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureStatus {
    pub id: String,
    pub description: String,
    pub enabled: bool,
    pub available: bool,
    /// Capabilities it needs at the report's stage.
    pub capabilities: Vec<String>,
    pub missing_capabilities: Vec<String>,
    pub missing_facilities: Vec<String>,
    /// Needed capabilities covered only by CAP_SYS_ADMIN's fallback.
    pub via_sys_admin: Vec<String>,
}

/// A held capability no enabled feature needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Excess {
    pub capability: String,
    pub risk: String,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub stage: Stage,
    pub process: ProcessStatus,
    /// Why the process is privileged-equivalent (every capability, or SYS_ADMIN).
    pub privileged: Option<String>,
    pub kernel: KernelStatus,
    pub features: Vec<FeatureStatus>,
    pub excess: Vec<Excess>,
    pub socket_allowlist: Option<SocketAllowlist>,
    /// What `--strict` fails on: excess capabilities, unavailable enabled features,
    /// unknown feature ids.
    pub problems: Vec<String>,
}

/// Capabilities CAP_SYS_ADMIN stands in for (the kernel's fallback checks).
const SYS_ADMIN_COVERS: [Capability; 3] = [
    Capability::Bpf,
    Capability::Perfmon,
    Capability::CheckpointRestore,
];

impl Report {
    /// Reads this process's status and the kernel, then [`Report::build`]s.
    pub fn collect(opts: &Options) -> std::io::Result<Report> {
        Ok(Report::build(
            crate::status::read_self()?,
            crate::kernel::read(),
            opts,
        ))
    }

    /// Compares `process` and `kernel` with the model.
    pub fn build(process: ProcessStatus, kernel: KernelStatus, opts: &Options) -> Report {
        let effective: BTreeSet<&str> = process
            .capabilities
            .effective
            .iter()
            .map(String::as_str)
            .collect();
        let sys_admin = effective.contains("CAP_SYS_ADMIN");
        let mut problems = Vec::new();
        for id in &opts.enabled {
            if crate::feature(id).is_none() {
                problems.push(format!("unknown feature {id:?}"));
            }
        }
        let mut needed: BTreeSet<String> = BTreeSet::new();
        let mut features = Vec::new();
        for f in FEATURES {
            let enabled = opts.enabled.iter().any(|id| id == f.id);
            let needs = opts.stage.needs(f);
            let mut missing = Vec::new();
            let mut via_sys_admin = Vec::new();
            for cap in needs {
                let name = cap.to_string();
                if effective.contains(name.as_str()) {
                    continue;
                }
                if sys_admin && SYS_ADMIN_COVERS.contains(cap) {
                    via_sys_admin.push(name);
                } else {
                    missing.push(name);
                }
            }
            let missing_facilities: Vec<String> = f
                .facilities
                .iter()
                .filter(|fac| !kernel.facility(**fac).is_some_and(|s| s.available))
                .map(|fac| fac.name().to_owned())
                .collect();
            let available = missing.is_empty() && missing_facilities.is_empty();
            if enabled {
                needed.extend(needs.iter().map(Capability::to_string));
                if !via_sys_admin.is_empty() {
                    needed.insert("CAP_SYS_ADMIN".to_owned());
                }
                if !available {
                    let what: Vec<String> =
                        missing.iter().chain(&missing_facilities).cloned().collect();
                    problems.push(format!("{} unavailable: missing {}", f.id, what.join(", ")));
                }
            }
            features.push(FeatureStatus {
                id: f.id.to_owned(),
                description: f.description.to_owned(),
                enabled,
                available,
                capabilities: needs.iter().map(Capability::to_string).collect(),
                missing_capabilities: missing,
                missing_facilities,
                via_sys_admin,
            });
        }
        // SYS_ADMIN is excess even when it stands in for BPF/PERFMON: the narrow
        // capabilities should be granted instead.
        needed.remove("CAP_SYS_ADMIN");
        let excess: Vec<Excess> = process
            .held()
            .into_iter()
            .filter(|c| !needed.contains(c))
            .map(|c| Excess {
                risk: crate::risk(&c).to_owned(),
                capability: c,
            })
            .collect();
        for e in &excess {
            problems.push(format!("excess {}: {}", e.capability, e.risk));
        }
        let privileged = process.privileged();
        Report {
            stage: opts.stage,
            privileged,
            process,
            kernel,
            features,
            excess,
            socket_allowlist: opts.allowlist.clone(),
            problems,
        }
    }

    /// True when `--strict` passes: nothing excess, every enabled feature available.
    pub fn strict_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Ids of enabled features that cannot work.
    pub fn unavailable(&self) -> Vec<String> {
        self.features
            .iter()
            .filter(|f| f.enabled && !f.available)
            .map(|f| f.id.clone())
            .collect()
    }

    /// Names of the excess capabilities.
    pub fn excess_names(&self) -> Vec<String> {
        self.excess.iter().map(|e| e.capability.clone()).collect()
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        let eff = &self.process.capabilities.effective;
        let excess = self.excess_names();
        let unavailable = self.unavailable();
        format!(
            "uid {} gid {}, effective [{}], no_new_privs {}, seccomp {}, privileged {}, excess [{}], unavailable features [{}]",
            self.process.euid(),
            self.process.egid(),
            short(eff),
            self.process.no_new_privs,
            self.process.seccomp,
            self.privileged.as_deref().unwrap_or("no"),
            short(&excess),
            unavailable.join(",")
        )
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let p = &self.process;
        let c = &p.capabilities;
        let _ = writeln!(o, "Process (pid {}, stage {:?})", p.pid, self.stage);
        let _ = writeln!(o, "  uid {:?}  gid {:?}", p.uid, p.gid);
        for (name, set) in [
            ("effective", &c.effective),
            ("permitted", &c.permitted),
            ("inheritable", &c.inheritable),
            ("bounding", &c.bounding),
            ("ambient", &c.ambient),
        ] {
            let _ = writeln!(o, "  {name:<12} {}", list_or_none(set));
        }
        let _ = writeln!(
            o,
            "  no_new_privs {}  seccomp {}",
            p.no_new_privs, p.seccomp
        );
        let _ = writeln!(
            o,
            "  privileged   {}",
            self.privileged.as_deref().unwrap_or("no")
        );
        let k = &self.kernel;
        let _ = writeln!(o, "Kernel {}", k.release);
        let opt = |v: Option<i64>| v.map_or_else(|| "unknown".to_owned(), |v| v.to_string());
        let _ = writeln!(
            o,
            "  lockdown {}  perf_event_paranoid {}  unprivileged_bpf_disabled {}  bpffs {}",
            k.lockdown
                .as_deref()
                .unwrap_or("unknown (/sys/kernel/security/lockdown unreadable)"),
            opt(k.perf_event_paranoid),
            opt(k.unprivileged_bpf_disabled),
            if k.bpffs { "mounted" } else { "not mounted" }
        );
        for f in &k.facilities {
            let mark = if f.available { "ok  " } else { "MISS" };
            let _ = writeln!(o, "  {mark} {:<13} {}", f.facility.name(), f.detail);
        }
        let _ = writeln!(o, "Features");
        for f in &self.features {
            let state = match (f.enabled, f.available) {
                (_, true) => "available",
                (true, false) => "UNAVAILABLE",
                (false, false) => "unavailable (not enabled)",
            };
            let _ = write!(o, "  {:<18} {state}", f.id);
            let missing: Vec<&String> = f
                .missing_capabilities
                .iter()
                .chain(&f.missing_facilities)
                .collect();
            if !missing.is_empty() {
                let m: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                let _ = write!(o, ": missing {}", m.join(", "));
            }
            if !f.via_sys_admin.is_empty() {
                let _ = write!(
                    o,
                    " ({} only through CAP_SYS_ADMIN)",
                    f.via_sys_admin.join(", ")
                );
            }
            let _ = writeln!(o);
        }
        if self.excess.is_empty() {
            let _ = writeln!(o, "Excess capabilities: none");
        } else {
            let _ = writeln!(o, "Excess capabilities ({})", self.excess.len());
            for e in &self.excess {
                let _ = writeln!(o, "  {:<24} {}", e.capability, e.risk);
            }
        }
        if let Some(a) = &self.socket_allowlist {
            let _ = writeln!(
                o,
                "Socket allowlist: uids {:?}, gids {:?}, socket group {}",
                a.uids,
                a.gids,
                a.socket_group
                    .map_or_else(|| "none".to_owned(), |g| g.to_string())
            );
        }
        let _ = writeln!(
            o,
            "Strict: {}",
            if self.strict_ok() {
                "pass".to_owned()
            } else {
                format!("FAIL ({} problems)", self.problems.len())
            }
        );
        o
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(" ")
    }
}

/// A capability list, or a count when it is long (e.g. root's 41).
fn short(v: &[String]) -> String {
    if v.len() > 8 {
        format!("{} capabilities", v.len())
    } else {
        v.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{facilities, Facts};
    use crate::status::ProcessStatus;

    fn kernel(version: (u32, u32)) -> KernelStatus {
        let facts = Facts {
            version,
            btf: true,
            tracefs: Some("/sys/kernel/tracing".into()),
            procfs: true,
        };
        KernelStatus {
            release: format!("{}.{}.0", version.0, version.1),
            version,
            btf: true,
            lockdown: Some("integrity".into()),
            perf_event_paranoid: Some(2),
            unprivileged_bpf_disabled: Some(2),
            tracefs: facts.tracefs.clone(),
            bpffs: false,
            facilities: facilities(&facts),
        }
    }

    fn process(caps: &[&str]) -> ProcessStatus {
        let v: Vec<String> = caps.iter().map(|c| (*c).to_owned()).collect();
        let mut p = ProcessStatus {
            pid: 7,
            uid: [65534; 4],
            gid: [65534; 4],
            seccomp: "disabled".into(),
            ..ProcessStatus::default()
        };
        p.capabilities.effective = v.clone();
        p.capabilities.permitted = v;
        p
    }

    /// The model's capability set (`crate::loader_capabilities`), `CAP_` names.
    fn modelled() -> Vec<String> {
        crate::loader_capabilities()
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    fn build(caps: &[String], version: (u32, u32), opts: &Options) -> Report {
        let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
        Report::build(process(&refs), kernel(version), opts)
    }

    #[test]
    fn exactly_the_modelled_capabilities_pass_strict() {
        let r = build(&modelled(), (6, 18), &Options::all_features());
        assert!(r.features.iter().all(|f| f.available), "{r:#?}");
        assert!(r.excess.is_empty());
        assert!(r.strict_ok(), "{:?}", r.problems);
        assert_eq!(r.privileged, None);
    }

    #[test]
    fn a_missing_capability_is_named_per_feature() {
        let caps: Vec<String> = modelled()
            .into_iter()
            .filter(|c| c != "CAP_CHECKPOINT_RESTORE")
            .collect();
        let r = build(&caps, (6, 18), &Options::all_features());
        assert_eq!(r.unavailable(), ["tls_uprobes"]);
        let tls = r.features.iter().find(|f| f.id == "tls_uprobes").unwrap();
        assert_eq!(tls.missing_capabilities, ["CAP_CHECKPOINT_RESTORE"]);
        assert!(!r.strict_ok());
        assert!(r.problems[0].contains("CAP_CHECKPOINT_RESTORE"));
    }

    /// No feature opens raw or packet sockets (there is no socket filter): a loader
    /// granted CAP_NET_RAW holds it for nothing, and the report says so.
    #[test]
    fn net_raw_is_excess_with_its_risk() {
        let mut caps = modelled();
        caps.push("CAP_NET_RAW".into());
        let r = build(&caps, (6, 18), &Options::all_features());
        assert!(r.features.iter().all(|f| f.available), "{r:#?}");
        assert_eq!(r.excess_names(), ["CAP_NET_RAW"]);
        assert!(r.excess[0].risk.contains("packet sockets"), "{r:#?}");
        assert!(!r.strict_ok());
        assert_eq!(r.privileged, None);
    }

    #[test]
    fn sys_admin_is_excess_with_a_risk_note_and_privileged() {
        let mut caps = modelled();
        caps.push("CAP_SYS_ADMIN".into());
        let r = build(&caps, (6, 18), &Options::all_features());
        assert_eq!(r.excess_names(), ["CAP_SYS_ADMIN"]);
        assert!(r.excess[0].risk.contains("CAP_BPF + CAP_PERFMON"));
        assert_eq!(r.privileged.as_deref(), Some("holds CAP_SYS_ADMIN"));
        assert!(!r.strict_ok());
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_but_stays_excess() {
        let r = build(
            &["CAP_SYS_ADMIN".to_owned()],
            (6, 18),
            &Options {
                enabled: vec!["syscall_capture".into()],
                stage: Stage::Attach,
                allowlist: None,
            },
        );
        let sc = r
            .features
            .iter()
            .find(|f| f.id == "syscall_capture")
            .unwrap();
        assert!(sc.available);
        assert_eq!(sc.via_sys_admin, ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(r.excess_names(), ["CAP_SYS_ADMIN"]);
    }

    #[test]
    fn capabilities_of_disabled_features_are_excess() {
        let r = build(
            &modelled(),
            (6, 18),
            &Options {
                enabled: vec!["syscall_capture".into(), "process_discovery".into()],
                stage: Stage::Attach,
                allowlist: None,
            },
        );
        assert_eq!(r.excess_names(), ["CAP_CHECKPOINT_RESTORE"]);
    }

    #[test]
    fn running_stage_needs_only_the_runtime_set() {
        let opts = Options {
            enabled: vec![
                "syscall_capture".into(),
                "sock_tracepoints".into(),
                "process_discovery".into(),
            ],
            stage: Stage::Running,
            allowlist: Some(SocketAllowlist {
                uids: vec![0, 1000],
                gids: vec![],
                socket_group: None,
            }),
        };
        let kept = [
            "CAP_DAC_READ_SEARCH".to_owned(),
            "CAP_SYS_PTRACE".to_owned(),
        ];
        let r = build(&kept, (6, 18), &opts);
        assert!(r.strict_ok(), "{:?}", r.problems);
        let r = build(&modelled(), (6, 18), &opts);
        assert_eq!(
            r.excess_names(),
            ["CAP_BPF", "CAP_CHECKPOINT_RESTORE", "CAP_PERFMON"]
        );
        assert!(r.to_text().contains("uids [0, 1000]"));
    }

    #[test]
    fn old_kernel_names_the_missing_facility() {
        let r = build(&modelled(), (6, 1), &Options::all_features());
        let tls = r.features.iter().find(|f| f.id == "tls_uprobes").unwrap();
        assert_eq!(tls.missing_facilities, ["uprobe_multi"]);
        assert_eq!(r.unavailable(), ["tls_uprobes"]);
    }

    #[test]
    fn unknown_features_fail_strict_and_json_has_the_sections() {
        let r = build(
            &modelled(),
            (6, 18),
            &Options {
                enabled: vec!["nope".into()],
                stage: Stage::Attach,
                allowlist: None,
            },
        );
        assert!(r.problems.iter().any(|p| p.contains("unknown feature")));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in [
            "process",
            "kernel",
            "features",
            "excess",
            "problems",
            "privileged",
        ] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
        assert_eq!(v["process"]["uid"][1], 65534);
        let text = r.to_text();
        assert!(text.contains("Excess capabilities ("), "{text}");
        assert!(r.summary().contains("uid 65534"));
    }
}
