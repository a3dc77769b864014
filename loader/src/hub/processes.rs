//! What the hub knows of each process: its facts (executable, container, ports),
//! who selects it, and the `ProcessStarted` handed to subscriptions that did not
//! see it (a late selection, a resumed subscription).

use super::*;

/// Who selects a process: shared, so that routing an event allocates nothing.
pub(super) type Targets = Arc<[Arc<Subscription>]>;

/// How long an exited process stays routable, for its late events (closes).
pub(super) const EXITED_GRACE: Duration = Duration::from_secs(10);

/// Most ports remembered per process for port-based selection.
pub(super) const MAX_PORTS_PER_PROCESS: usize = 64;

pub(super) struct ProcEntry {
    pub(super) facts: ProcessFacts,
    pub(super) selected_by: Targets,
    /// The process's latest `ProcessStarted`, handed to subscriptions that select the
    /// process after it was published (they attached later, or a port matched later).
    pub(super) started: Option<Event>,
    /// When its `ProcessExited` went by; the entry is removed `EXITED_GRACE` later.
    pub(super) exited_at: Option<Instant>,
}

impl ProcEntry {
    /// Sets who selects the process; those new to it get its `ProcessStarted` first.
    pub(super) fn reselect(&mut self, selected_by: Targets) {
        if let Some(started) = self.facts_event() {
            for s in selected_by.iter() {
                if !self.selected_by.iter().any(|old| old.id == s.id) && s.push(started.clone()) {
                    s.notify.notify_one();
                }
            }
        }
        self.selected_by = selected_by;
    }

    /// The process's `ProcessStarted` for a subscriber that did not see it, with the
    /// ports seen since (a selection by port needs them before the next connection).
    pub(super) fn facts_event(&self) -> Option<Event> {
        let mut event = self.started.clone()?;
        if let Some(EventKind::ProcessStarted(p)) = &mut event.kind {
            p.ports = self
                .facts
                .ports
                .iter()
                .map(|&port| u32::from(port))
                .collect();
        }
        Some(event)
    }
}

impl Hub {
    /// Updates what is known of `pid` from `event` and returns who selects it.
    pub(super) fn route(&self, st: &mut State, pid: u32, event: &Event) -> Targets {
        let changed_facts = |facts: &mut ProcessFacts| -> bool {
            match &event.kind {
                Some(EventKind::ProcessStarted(p)) => {
                    facts.exe_path.clone_from(&p.exe_path);
                    facts.container_id.clone_from(&p.container_id);
                    true
                }
                Some(EventKind::ConnectionOpened(c)) => {
                    let addr = if c.role == Role::Client as i32 {
                        &c.peer
                    } else {
                        &c.local
                    };
                    let port = addr.as_ref().map_or(0, |a| a.port);
                    match u16::try_from(port) {
                        Ok(p)
                            if p != 0
                                && !facts.ports.contains(&p)
                                && facts.ports.len() < MAX_PORTS_PER_PROCESS =>
                        {
                            facts.ports.push(p);
                            true
                        }
                        _ => false,
                    }
                }
                _ => false,
            }
        };
        let started = matches!(event.kind, Some(EventKind::ProcessStarted(_)));
        if let Some(entry) = st.processes.get_mut(&pid) {
            if started {
                // A new process with a reused pid, or a new image after exec.
                entry.exited_at = None;
                // Delivered by the caller to everyone who selects it now; remembered
                // for whoever selects it later.
                entry.started = Some(event.clone());
            }
            if changed_facts(&mut entry.facts) {
                let now = selected_by(&st.subscriptions, pid, &entry.facts);
                if started {
                    entry.selected_by = now;
                } else {
                    entry.reselect(now);
                }
            }
            return entry.selected_by.clone();
        }
        let mut facts = ProcessFacts::default();
        changed_facts(&mut facts);
        let targets = selected_by(&st.subscriptions, pid, &facts);
        if st.processes.len() < self.config.max_processes {
            st.processes.insert(
                pid,
                ProcEntry {
                    facts,
                    selected_by: targets.clone(),
                    started: started.then(|| event.clone()),
                    exited_at: None,
                },
            );
        } else if !st.process_table_full_logged {
            st.process_table_full_logged = true;
            warn!(
                max_processes = self.config.max_processes,
                "process table full: new processes are routed by pid only (selection by \
                 executable, container or port does not apply to them)"
            );
        }
        targets
    }
}

/// Queues `event` for each of `targets` (the last one takes it, the others a
/// clone: payloads are shared `Bytes`, never copied).
pub(super) fn deliver(
    targets: &[Arc<Subscription>],
    event: Event,
    touched: &mut Vec<Arc<Subscription>>,
) -> usize {
    let mut queue = |s: &Arc<Subscription>, event: Event| {
        if s.push(event) && !touched.iter().any(|t| t.id == s.id) {
            touched.push(s.clone());
        }
    };
    if let Some((last, others)) = targets.split_last() {
        for s in others {
            queue(s, event.clone());
        }
        queue(last, event);
    }
    targets.len()
}

pub(super) fn selected_by(subs: &[Arc<Subscription>], pid: u32, facts: &ProcessFacts) -> Targets {
    subs.iter()
        .filter(|s| lock(&s.matcher).matches(pid, facts))
        .cloned()
        .collect::<Vec<_>>()
        .into()
}

/// A resumed subscription begins with the `ProcessStarted` of every live process it
/// selects: the processor now reading it may be a new one that never saw them (a
/// restart), and without them its spans would be anonymous. They are given the
/// positions just before what comes next (the first batch sent again, else the
/// next new one), which the previous reader already processed: a processor that
/// reads on skips them as sent again, a new one takes them. A young subscription
/// (fewer positions than facts) sends its early ProcessStarted again anyway.
pub(super) fn resume_with_facts(st: &State, s: &Arc<Subscription>, realtime_offset_ns: i64) {
    let mut facts: Vec<(u32, Event)> = st
        .processes
        .iter()
        .filter(|(_, p)| p.exited_at.is_none() && p.selected_by.iter().any(|x| x.id == s.id))
        .filter_map(|(pid, p)| p.facts_event().map(|e| (*pid, e)))
        .collect();
    if facts.is_empty() {
        return;
    }
    facts.sort_by_key(|(pid, _)| *pid);
    let mut facts: Vec<Event> = facts.into_iter().map(|(_, e)| e).collect();
    let n = facts.len() as u64;
    let mut q = lock(&s.queue);
    match q.resend.front_mut() {
        Some(first) if first.subscription_seq > n => {
            facts.append(&mut first.events);
            first.events = facts;
            first.subscription_seq -= n;
        }
        Some(_) => return,
        None => {
            let next = s.next_subscription_seq.load(Relaxed);
            if next <= n {
                return;
            }
            q.resend.push_back(EventBatch {
                subscription_seq: next - n,
                events: facts,
                realtime_offset_ns,
                subscription_epoch: s.epoch,
                resume_state: bytes::Bytes::new(),
            });
        }
    }
    q.held_events += n as usize;
}
