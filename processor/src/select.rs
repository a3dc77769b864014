//! Which processes are reported: OBI's selection semantics, exactly.
//!
//! The loader's selection is declarative and coarse (any of ports, executable
//! globs, pids, container ids), so the processor subscribes to a superset (see
//! `Config::selection`) and decides here, per process, with OBI's rules:
//!
//! - a process is selected when it matches one `discovery.instrument` entry (or the
//!   entry made of `open_port` / `OTEL_EBPF_AUTO_TARGET_EXE` / `target_pids`), and
//!   within an entry **every** criterion given must match (AND); entries are
//!   alternatives (OR). With no entry at all, every process matches;
//! - then it is dropped when it matches any `discovery.exclude_instrument` entry or
//!   any `default_exclude_instrument` entry (OBI's list unless configured);
//! - a process none of whose own facts match, whose parent is selected, is selected
//!   too (a server's forked workers), unless excluded;
//! - the processor's own selection flags (`--open-port`, `--exe`, `--pid`,
//!   `--container-id`) are further alternatives, each on its own.
//!
//! Criteria and the facts they read: `exe_path` (glob over the full executable
//! path), `cmd_args` (glob over the arguments after the executable, joined by
//! single spaces), `languages` (glob over the language recognised from the
//! executable's name, see [`language_of`]), `open_ports` (a local port the process
//! accepted a connection on, or a port it connected to as a client — the loader's
//! reading, learnt from its connections), `target_pids`, `containers_only` (the
//! loader reported a container id), and the Kubernetes criteria (`k8s_*`,
//! `container_name`) against the pod of the process's container in the
//! Kubernetes store — without Kubernetes metadata they match nothing.
//!
//! A process the processor never saw start (no facts) is not judged: its events
//! pass, as the loader selected them (counted as `unjudged`). Events of processes
//! not selected are dropped before stitching and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tandem_proto::v1::{ConnectionOpened, PortRange, ProcessStarted, Role};
use tandem_proto::Selection;
use tracing::debug;

use crate::config::{Discovery, InstrumentSelector};
use crate::kube::discovery::{Pattern, PodSelector};
use crate::kube::Store;

/// Processes remembered at most (the oldest-started are forgotten first).
pub const MAX_PROCESSES: usize = 8192;
/// Distinct ports remembered per process.
pub const MAX_PORTS: usize = 64;

/// OBI's `default_exclude_instrument` executables, plus tandem's own binaries.
pub const DEFAULT_EXCLUDED_EXE: &str = "{*beyla,*alloy,*prometheus-config-reloader,*obi,*otelcol,\
     *otelcol-contrib,*otelcol-contrib[!/]*,*tandem-loader,*tandem-processor}";

/// OBI's `default_exclude_instrument` Kubernetes namespaces.
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-node-lease",
    "local-path-storage",
    "grafana-alloy",
    "cert-manager",
    "monitoring",
    "gke-connect",
    "gke-gmp-system",
    "gke-managed-cim",
    "gke-managed-filestorecsi",
    "gke-managed-metrics-server",
    "gke-managed-system",
    "gke-system",
    "gke-managed-volumepopulator",
    "gatekeeper-system",
];

/// The `default_exclude_instrument` used when the configuration gives none.
pub fn default_exclusions() -> Vec<InstrumentSelector> {
    let mut exe = InstrumentSelector::default();
    exe.exe_path = Some(DEFAULT_EXCLUDED_EXE.into());
    let mut out = vec![exe];
    out.extend(DEFAULT_EXCLUDED_NAMESPACES.iter().map(|ns| {
        let mut e = InstrumentSelector::default();
        e.k8s_namespace = Some((*ns).into());
        e
    }));
    out
}

/// Languages recognised from a process's executable name (and, for `java -jar`
/// style launchers, nothing more): `python`, `nodejs`, `java`, `ruby`, `php`,
/// `dotnet`, `perl`. Compiled languages (Go, Rust, C++) need the binary itself
/// and are not recognised.
pub const LANGUAGES: &[&str] = &["python", "nodejs", "java", "ruby", "php", "dotnet", "perl"];

/// The language of a process from its executable path, when recognisable.
pub fn language_of(exe_path: &str) -> Option<&'static str> {
    let name = exe_path.rsplit('/').next().unwrap_or(exe_path);
    let starts = |p: &str| name.starts_with(p);
    Some(if starts("python") || starts("pypy") || starts("uwsgi") {
        "python"
    } else if name == "node" || name == "nodejs" || name == "bun" || name == "deno" {
        "nodejs"
    } else if name == "java" {
        "java"
    } else if starts("ruby") || name == "puma" || name == "unicorn" {
        "ruby"
    } else if starts("php") {
        "php"
    } else if name == "dotnet" {
        "dotnet"
    } else if starts("perl") {
        "perl"
    } else {
        return None;
    })
}

/// One entry, compiled: every criterion given must match.
#[derive(Debug, Clone, Default)]
struct Entry {
    exe: Option<Pattern>,
    /// Any of them (none: no criterion).
    cmd_args: Vec<Pattern>,
    language: Option<Pattern>,
    ports: Vec<PortRange>,
    pids: Vec<u32>,
    containers_only: bool,
    /// Container id prefixes (only the processor's `--container-id` flag).
    container_ids: Vec<String>,
    pod: Option<PodSelector>,
}

impl Entry {
    fn of(e: &InstrumentSelector) -> Self {
        Entry {
            exe: e.exe_path.as_deref().map(|t| Pattern::new(t, "exe_path")),
            cmd_args: e
                .cmd_args
                .iter()
                .map(|t| Pattern::new(t, "cmd_args"))
                .collect(),
            language: e.languages.as_deref().map(|t| Pattern::new(t, "languages")),
            ports: e.open_ports.clone(),
            pids: e.target_pids.clone(),
            containers_only: e.containers_only,
            container_ids: Vec::new(),
            pod: PodSelector::of(e).or_else(|| {
                // `container_name` alone is a Kubernetes container name too.
                e.container_name.as_ref()?;
                let mut k = InstrumentSelector::default();
                k.k8s_container_name = e.container_name.clone();
                PodSelector::of(&k)
            }),
        }
    }

    /// Whether the entry reads the process's ports (its verdict may change as
    /// connections are seen).
    fn needs_ports(&self) -> bool {
        !self.ports.is_empty()
    }

    fn matches(&self, pid: u32, p: &Proc, kube: Option<&Store>) -> bool {
        let text =
            |pat: &Option<Pattern>, value: &str| pat.as_ref().is_none_or(|pat| pat.matches(value));
        (self.pids.is_empty() || self.pids.contains(&pid))
            && text(&self.exe, &p.exe_path)
            && (self.cmd_args.is_empty() || self.cmd_args.iter().any(|g| g.matches(&p.args)))
            && self
                .language
                .as_ref()
                .is_none_or(|pat| p.language.is_some_and(|l| pat.matches(l)))
            && (self.ports.is_empty()
                || p.ports
                    .iter()
                    .any(|port| self.ports.iter().any(|r| r.contains(*port))))
            && (!self.containers_only || !p.container_id.is_empty())
            && (self.container_ids.is_empty()
                || self
                    .container_ids
                    .iter()
                    .any(|c| !p.container_id.is_empty() && p.container_id.starts_with(c)))
            && self
                .pod
                .as_ref()
                .is_none_or(|sel| pod_matches(sel, &p.container_id, kube))
    }
}

/// Whether the pod of `container_id` matches `sel` (false without a store or pod).
fn pod_matches(sel: &PodSelector, container_id: &str, kube: Option<&Store>) -> bool {
    let (Some(store), false) = (kube, container_id.is_empty()) else {
        return false;
    };
    let mut found = false;
    store.for_each_container(|pod, owners, id, name| {
        if !found && id == container_id && sel.matches(pod, owners, name) {
            found = true;
        }
    });
    found
}

/// What is known of a process.
#[derive(Debug, Clone, Default)]
struct Proc {
    ppid: u32,
    exe_path: String,
    args: String,
    language: Option<&'static str>,
    container_id: String,
    ports: Vec<u16>,
    verdict: Verdict,
    /// The Kubernetes store's version the verdict was made with.
    kube_version: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Verdict {
    #[default]
    NotSelected,
    Selected,
    Excluded,
}

/// Counts of the selection, for the summary and the internal metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectStats {
    /// Processes judged and selected, at their last verdict.
    pub selected: u64,
    /// Processes judged and dropped by an exclusion.
    pub excluded: u64,
    /// Processes judged and matching no entry (yet: ports may come later).
    pub not_matching: u64,
    /// Events dropped because their process is not selected.
    pub events_dropped: u64,
    /// Events of processes never seen starting, passed unjudged.
    pub unjudged_events: u64,
    /// Processes forgotten past [`MAX_PROCESSES`].
    pub forgotten: u64,
}

/// The exact per-process selection.
pub struct Selector {
    include: Vec<Entry>,
    exclude: Vec<Entry>,
    /// No include entry: every process matches (before exclusions).
    everything: bool,
    /// Some entry reads ports, so connections re-judge their process.
    reads_ports: bool,
    /// Some entry reads Kubernetes metadata.
    reads_kube: bool,
    kube: Option<Arc<Store>>,
    by_pid: HashMap<u32, Proc>,
    order: VecDeque<u32>,
    stats: SelectStats,
}

impl Selector {
    /// The selection of `discovery`, with the processor's own flags (`extra`) as
    /// further alternatives.
    pub fn new(discovery: &Discovery, extra: &Selection) -> Self {
        let mut include: Vec<Entry> = discovery.instrument.iter().map(Entry::of).collect();
        if !discovery.open_port.is_empty()
            || discovery.auto_target_exe.is_some()
            || !discovery.target_pids.is_empty()
        {
            let mut e = InstrumentSelector::default();
            e.open_ports = discovery.open_port.clone();
            e.exe_path = discovery.auto_target_exe.clone();
            e.target_pids = discovery.target_pids.clone();
            include.push(Entry::of(&e));
        }
        include.extend(extra.exe_globs.iter().map(|g| Entry {
            exe: Some(Pattern::new(g, "--exe")),
            ..Default::default()
        }));
        if !extra.ports.is_empty() {
            include.push(Entry {
                ports: extra.ports.clone(),
                ..Default::default()
            });
        }
        if !extra.pids.is_empty() {
            include.push(Entry {
                pids: extra.pids.clone(),
                ..Default::default()
            });
        }
        if !extra.container_ids.is_empty() {
            include.push(Entry {
                container_ids: extra.container_ids.clone(),
                ..Default::default()
            });
        }
        let defaults = discovery
            .default_exclude_instrument
            .clone()
            .unwrap_or_else(default_exclusions);
        let exclude: Vec<Entry> = discovery
            .exclude_instrument
            .iter()
            .chain(&defaults)
            .map(Entry::of)
            .collect();
        let all = || include.iter().chain(&exclude);
        Selector {
            everything: include.is_empty(),
            reads_ports: all().any(Entry::needs_ports),
            reads_kube: all().any(|e| e.pod.is_some()),
            include,
            exclude,
            kube: None,
            by_pid: HashMap::new(),
            order: VecDeque::new(),
            stats: SelectStats::default(),
        }
    }

    /// Judges Kubernetes criteria against `store` from now on.
    pub fn set_kubernetes(&mut self, store: Arc<Store>) {
        self.kube = Some(store);
        self.rejudge_all();
    }

    pub fn stats(&self) -> SelectStats {
        let mut s = self.stats;
        s.selected = 0;
        s.excluded = 0;
        s.not_matching = 0;
        for p in self.by_pid.values() {
            match p.verdict {
                Verdict::Selected => s.selected += 1,
                Verdict::Excluded => s.excluded += 1,
                Verdict::NotSelected => s.not_matching += 1,
            }
        }
        s
    }

    /// A process started (or was found running): judged now.
    pub fn on_started(&mut self, p: &ProcessStarted) {
        let args = p.cmdline.get(1..).unwrap_or_default().join(" ");
        let mut ports = self
            .by_pid
            .remove(&p.pid)
            .map(|o| o.ports)
            .unwrap_or_default();
        // The ports the loader saw it use, when it hands the facts of a process
        // this processor did not see start (a takeover after a restart).
        for port in p.ports.iter().filter_map(|&port| u16::try_from(port).ok()) {
            if !ports.contains(&port) && ports.len() < MAX_PORTS {
                ports.push(port);
            }
        }
        if !self.order.contains(&p.pid) {
            self.order.push_back(p.pid);
        }
        while self.by_pid.len() >= MAX_PROCESSES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.by_pid.remove(&old).is_some() {
                self.stats.forgotten += 1;
            }
        }
        let proc = Proc {
            ppid: p.ppid,
            exe_path: p.exe_path.clone(),
            args,
            language: language_of(&p.exe_path),
            container_id: p.container_id.clone(),
            ports,
            ..Default::default()
        };
        self.by_pid.insert(p.pid, proc);
        self.judge(p.pid);
    }

    /// A process exited: forgotten.
    pub fn on_exited(&mut self, pid: u32) {
        if self.by_pid.remove(&pid).is_some() {
            self.order.retain(|p| *p != pid);
        }
    }

    /// A connection of a known process: its port may select it.
    pub fn on_connection(&mut self, c: &ConnectionOpened) {
        if !self.reads_ports {
            return;
        }
        let Some(p) = self.by_pid.get_mut(&c.pid) else {
            return;
        };
        let port = if c.role == Role::Client as i32 {
            c.peer.as_ref().map(|a| a.port)
        } else {
            c.local.as_ref().map(|a| a.port)
        };
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            return;
        };
        if p.ports.contains(&port) || p.ports.len() >= MAX_PORTS {
            return;
        }
        p.ports.push(port);
        // A port only adds matches: an excluded process stays excluded.
        if p.verdict != Verdict::Excluded {
            self.judge(c.pid);
        }
    }

    /// Whether `pid` is selected now (a process never seen starting is).
    pub fn is_selected(&self, pid: u32) -> bool {
        self.by_pid
            .get(&pid)
            .is_none_or(|p| p.verdict == Verdict::Selected)
    }

    /// Whether events of `pid` are reported (counting those dropped).
    pub fn admits(&mut self, pid: u32) -> bool {
        let version = match (&self.kube, self.reads_kube) {
            (Some(k), true) => k.version(),
            _ => 0,
        };
        let Some(p) = self.by_pid.get(&pid) else {
            self.stats.unjudged_events += 1;
            return true;
        };
        let verdict = if p.kube_version != version {
            self.judge(pid)
        } else {
            p.verdict
        };
        let admitted = verdict == Verdict::Selected;
        if !admitted {
            self.stats.events_dropped += 1;
        }
        admitted
    }

    fn rejudge_all(&mut self) {
        let pids: Vec<u32> = self.by_pid.keys().copied().collect();
        for pid in pids {
            self.judge(pid);
        }
    }

    /// Computes and stores `pid`'s verdict.
    fn judge(&mut self, pid: u32) -> Verdict {
        let kube = self.kube.as_deref();
        let version = match (kube, self.reads_kube) {
            (Some(k), true) => k.version(),
            _ => 0,
        };
        let Some(p) = self.by_pid.get(&pid) else {
            return Verdict::Selected;
        };
        let parent_selected = self
            .by_pid
            .get(&p.ppid)
            .is_some_and(|pp| pp.verdict == Verdict::Selected);
        let verdict = if self.exclude.iter().any(|e| e.matches(pid, p, kube)) {
            Verdict::Excluded
        } else if self.everything
            || self.include.iter().any(|e| e.matches(pid, p, kube))
            || parent_selected
        {
            Verdict::Selected
        } else {
            Verdict::NotSelected
        };
        if let Some(p) = self.by_pid.get_mut(&pid) {
            if p.verdict != verdict {
                debug!(pid, exe = %p.exe_path, ?verdict, "process selection");
            }
            p.verdict = verdict;
            p.kube_version = version;
        }
        verdict
    }
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
