//! The processor's summary, as a person reads it: a few aligned lines saying what
//! came in, what was made of it, what went out, and what was lost and where. Logged
//! periodically (`--summary-interval`) and at exit; the same counts are tandem's
//! internal metrics (`internal`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::pipeline::PipelineStats;
use crate::select::SelectStats;
use crate::stats::Stats;
use crate::stitch::link::{LinkStats, Unlinked};
use crate::stitch::StitchStats;

/// Every count, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub uptime: Duration,
    pub input: Stats,
    pub stitch: StitchStats,
    /// How spans were linked into traces.
    pub links: LinkStats,
    /// Connections tracked now.
    pub connections: usize,
    /// Transactions by protocol (`http1`, `http2`, `grpc`, `postgresql`, ...).
    pub transactions: BTreeMap<&'static str, u64>,
    pub pipeline: PipelineStats,
    /// The exact process selection (`crate::select`).
    pub selection: SelectStats,
    /// Live instrumented processes by executable name.
    pub processes: BTreeMap<String, u64>,
}

/// A count as printed (plain digits: scripts read the summary too).
fn thousands(n: u64) -> String {
    n.to_string()
}

/// `name N, name N` of a map, or `none`.
fn list<K: fmt::Display>(items: impl IntoIterator<Item = (K, u64)>) -> String {
    let parts: Vec<String> = items
        .into_iter()
        .map(|(k, v)| format!("{k} {}", thousands(v)))
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

impl Summary {
    pub fn transactions_total(&self) -> u64 {
        self.transactions.values().sum()
    }

    pub fn processes_total(&self) -> u64 {
        self.processes.values().sum()
    }
}

impl fmt::Display for Summary {
    /// Seven lines, each starting with its subject, values aligned after it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.input;
        let p = &self.pipeline;
        let s = &self.stitch;
        let e = &p.span_export;
        writeln!(
            f,
            "  in      {} events ({}); {} processes instrumented; subscription restarts {}",
            thousands(i.events),
            list(i.by_kind.iter().map(|(k, v)| (*k, *v))),
            thousands(self.processes_total()),
            thousands(i.restarts),
        )?;
        writeln!(
            f,
            "  made    {} transactions ({}); spans {} sampled, {} not sampled, {} not built (no span sink), {} ignored by route, {} off by instrumentation, {} of {} OpenTelemetry-instrumented processes left alone, {} filtered out{}",
            thousands(self.transactions_total()),
            list(self.transactions.iter().map(|(k, v)| (*k, *v))),
            thousands(p.spans_sampled),
            thousands(p.spans_not_sampled),
            thousands(p.spans_not_built),
            thousands(p.ignored_traces),
            thousands(p.disabled_traces),
            thousands(p.excluded_otel_instrumented),
            thousands(p.otel_instrumented_processes),
            thousands(p.filtered),
            // Only when it happened: the line stays as it was otherwise.
            if p.span_names_aggregated > 0 {
                format!(
                    "; span metrics: {} span names reported as AGGREGATED (metric_span_names_limit)",
                    thousands(p.span_names_aggregated)
                )
            } else {
                String::new()
            },
        )?;

        writeln!(
            f,
            "  out     spans queued {}, exported {}, dropped {} (queue full), failed {}, abandoned {}; server spans dropped {}, failed {}; metric exports {} ok, {} failed; printed {}",
            thousands(e.queued),
            thousands(e.exported),
            thousands(e.dropped_queue_full),
            thousands(e.failed),
            thousands(e.abandoned),
            thousands(e.server_dropped),
            thousands(e.server_failed),
            thousands(p.metric_exports.0),
            thousands(p.metric_exports.1),
            thousands(p.printed),
        )?;
        writeln!(
            f,
            "  lost    {} events before the processor ({}); {} spans in export",
            thousands(i.total_lost()),
            list(i.lost.iter().map(|(k, v)| (*k, *v))),
            thousands(e.lost()),
        )?;
        let sel = &self.selection;
        writeln!(
            f,
            "  select  processes {} selected, {} excluded, {} not matching; {} events of unselected processes dropped, {} of unknown processes passed",
            thousands(sel.selected),
            thousands(sel.excluded),
            thousands(sel.not_matching),
            thousands(sel.events_dropped),
            thousands(sel.unjudged_events),
        )?;
        let l = &self.links;
        writeln!(
            f,
            "  links   server spans {} by connection, {} by traceparent, {} roots; client spans {} by thread, {} by goroutine, {} by traceparent, {} unlinked ({})",
            thousands(l.server_by_connection),
            thousands(l.server_by_traceparent),
            thousands(l.server_roots),
            thousands(l.client_by_thread),
            thousands(l.client_by_goroutine),
            thousands(l.client_by_traceparent),
            thousands(l.unlinked_total()),
            list(
                Unlinked::ALL
                    .iter()
                    .map(|r| (r.name(), l.unlinked(*r)))
                    .filter(|(_, n)| *n > 0)
            ),
        )?;
        write!(
            f,
            "  stitch  {} connections open, {} evicted; {} transactions truncated, {} closed early; {} bytes skipped, {} parse errors, {} times out of sync, {} unpaired answers, {} untracked requests",
            thousands(self.connections as u64),
            thousands(s.evicted_connections),
            thousands(s.truncated),
            thousands(s.connection_closed),
            thousands(s.skipped_bytes),
            thousands(s.parse_errors),
            thousands(s.lost_sync),
            thousands(s.unpaired_responses),
            thousands(s.untracked_requests),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_what_came_in_went_out_and_was_lost() {
        let mut s = Summary::default();
        s.input.events = 800_001;
        s.input.by_kind.insert("data", 400_000);
        s.input.lost.insert("kernel_ring_buffer", 49);
        s.transactions.insert("http1", 200_000);
        s.pipeline.span_export.queued = 200_000;
        s.pipeline.span_export.exported = 199_990;
        s.pipeline.span_export.failed = 10;
        s.processes.insert("nginx".into(), 3);
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(
            lines[0].starts_with("  in      800001 events (data 400000); 3 processes"),
            "{text}"
        );
        assert!(
            lines[1].contains("200000 transactions (http1 200000)"),
            "{text}"
        );
        assert!(
            lines[2].contains("spans queued 200000, exported 199990, dropped 0 (queue full), failed 10, abandoned 0"),
            "{text}"
        );
        assert!(
            lines[3].contains(
                "49 events before the processor (kernel_ring_buffer 49); 10 spans in export"
            ),
            "{text}"
        );
        assert_eq!(
            lines[4],
            "  select  processes 0 selected, 0 excluded, 0 not matching; 0 events of unselected processes dropped, 0 of unknown processes passed",
        );
        assert_eq!(
            lines[5],
            "  links   server spans 0 by connection, 0 by traceparent, 0 roots; client spans 0 by thread, 0 by goroutine, 0 by traceparent, 0 unlinked (none)",
        );
        assert!(
            lines[6].starts_with("  stitch  0 connections open"),
            "{text}"
        );
    }

    #[test]
    fn aggregated_span_names_show_in_the_made_line_only_when_there_are_some() {
        let mut s = Summary::default();
        assert!(!s.to_string().contains("AGGREGATED"));
        s.pipeline.span_names_aggregated = 12;
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(
            lines[1].ends_with(
                "; span metrics: 12 span names reported as AGGREGATED (metric_span_names_limit)"
            ),
            "{text}"
        );
    }
}
