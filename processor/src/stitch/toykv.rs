//! A toy key-value protocol, as a new protocol is added to tandem: this one file
//! (detector, parser, session) and one entry in a protocol list (`tests_toy.rs`
//! registers it; a real protocol's entry goes in `crate::protocols::REGISTRY`).
//!
//! The protocol: the client sends lines `get KEY` or `set KEY VALUE`; the server
//! answers each with a line, `+VALUE`, `+ok` or `-miss`. Answers pair with requests
//! in order.

use std::collections::VecDeque;

use tandem_proto::v1::Direction;

use crate::model::{Completion, DbError, DbOperation, DbSystem, Exchange, Side};
use crate::protocols::Segment;
use crate::settings::Instrumentation;

use super::session::{Ctx, Detected, Footprint, Probe, Protocol, Session, Timing};

/// Longest line kept; longer ones are cut (and the rest of the line skipped).
const MAX_LINE: usize = 256;
/// Requests waiting for their answer, at most.
const MAX_PENDING: usize = 64;

const SYSTEM: DbSystem = DbSystem::Other {
    name: "toykv",
    instrumentation: Instrumentation::Memcached,
};

/// Detection: a request-direction payload starting with `get ` or `set ` and a line
/// end.
#[derive(Debug)]
pub struct ToyKv;

impl Protocol for ToyKv {
    fn name(&self) -> &'static str {
        "toykv"
    }

    fn detect(&self, probe: &Probe<'_>) -> Option<Detected> {
        let request = probe.is_request().unwrap_or(true);
        let p = probe.payload;
        let starts = p.starts_with(b"get ") || p.starts_with(b"set ");
        if probe.current.is_some() || !request || !starts || !p.contains(&b'\n') {
            return None;
        }
        Some(Detected {
            session: Box::new(ToySession::default()),
            side: probe.side.is_none().then_some(match probe.direction {
                Direction::Egress => Side::Client,
                _ => Side::Server,
            }),
        })
    }
}

/// One connection: a line buffer per direction, requests waiting in order.
#[derive(Debug, Default)]
pub struct ToySession {
    request_line: Vec<u8>,
    answer_line: Vec<u8>,
    /// (the command's first line's origin, command, key).
    pending: VecDeque<(Timing, String, String)>,
}

impl ToySession {
    fn on_request(&mut self, line: &[u8], timing: Timing, ctx: &mut Ctx<'_>) {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_whitespace();
        let (Some(cmd), Some(key)) = (words.next(), words.next()) else {
            ctx.stats.parse_errors += 1;
            return;
        };
        if self.pending.len() >= MAX_PENDING {
            ctx.stats.untracked_requests += 1;
            return;
        }
        ctx.meta.requests_seen += 1;
        self.pending
            .push_back((timing, cmd.to_ascii_uppercase(), key.to_string()));
    }

    fn on_answer(&mut self, line: &[u8], end_ns: u64, ctx: &mut Ctx<'_>) {
        let Some((timing, cmd, key)) = self.pending.pop_front() else {
            ctx.stats.unpaired_responses += 1;
            return;
        };
        let error = line.starts_with(b"-").then(|| DbError {
            code: Some(String::from_utf8_lossy(&line[1..]).trim().to_string()),
            message: String::new(),
        });
        let timing = Timing {
            end_mono_ns: end_ns,
            ..timing
        };
        report(ctx, timing, cmd, key, error, Completion::Complete);
    }
}

fn report(
    ctx: &mut Ctx<'_>,
    timing: Timing,
    cmd: String,
    key: String,
    error: Option<DbError>,
    completion: Completion,
) {
    let op = DbOperation {
        system: SYSTEM,
        query_text: Some(format!("{} {key}", cmd.to_ascii_lowercase())),
        operation: Some(cmd),
        collection: None,
        error,
        namespace: None,
    };
    ctx.emit(timing, completion, Side::Client, Exchange::Db(op));
}

/// Feeds `data` to `line`; calls `each` with every complete line (without `\n`).
fn lines(line: &mut Vec<u8>, data: &[u8], mut each: impl FnMut(&[u8])) {
    for &b in data {
        if b == b'\n' {
            each(line);
            line.clear();
        } else if line.len() < MAX_LINE {
            line.push(b);
        }
    }
}

impl Session for ToySession {
    fn name(&self) -> &'static str {
        "toykv"
    }

    fn feed(&mut self, seg: &Segment<'_>, direction: Direction, ctx: &mut Ctx<'_>) {
        let Some(request) = ctx.is_request(direction) else {
            ctx.stats.skipped_bytes += seg.total();
            return;
        };
        let timing = Timing {
            task: seg.origin.task,
            start_mono_ns: seg.origin.mono_ns,
            end_mono_ns: seg.origin.mono_ns,
            trace: None,
        };
        let mut found = Vec::new();
        let buf = if request {
            &mut self.request_line
        } else {
            &mut self.answer_line
        };
        lines(buf, seg.data, |l| found.push(l.to_vec()));
        for l in found {
            if request {
                self.on_request(&l, timing, ctx);
            } else {
                self.on_answer(&l, seg.origin.mono_ns, ctx);
            }
        }
    }

    fn close(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>) {
        for (timing, cmd, key) in std::mem::take(&mut self.pending) {
            let t = Timing {
                end_mono_ns: mono_ns,
                ..timing
            };
            report(ctx, t, cmd, key, None, Completion::ConnectionClosed);
        }
    }

    fn lose(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>) {
        for (timing, cmd, key) in std::mem::take(&mut self.pending) {
            let t = Timing {
                end_mono_ns: mono_ns,
                ..timing
            };
            report(ctx, t, cmd, key, None, Completion::Truncated);
        }
        self.request_line.clear();
        self.answer_line.clear();
    }

    fn footprint(&self) -> Footprint {
        Footprint {
            buffered: self.request_line.len().max(self.answer_line.len()),
            pending: self.pending.len(),
            entries: 0,
        }
    }
}
