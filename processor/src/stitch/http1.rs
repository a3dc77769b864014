//! HTTP/1.x sessions: one [`http1::Parser`] per direction, requests paired with
//! responses in arrival order.
//!
//! # Detection
//!
//! A connection of unknown role becomes HTTP/1.x when a payload STARTS with what
//! parses as a request line (`METHOD target HTTP/1.x`, or at least an upper-case
//! method and a space when the line is longer than the capture): that payload's
//! direction is then the request direction (INGRESS: server, EGRESS: client), and the
//! response direction waits for a payload that starts with a status line, so the
//! tail of an earlier response is not taken for one. A connection whose role the
//! loader gave is parsed as HTTP/1.x from its first byte unless another protocol
//! recognised that byte (the fallback); one opened before the loader started
//! (`preexisting`) waits, in both directions, for a message start.
//!
//! # Pairing
//!
//! Requests queue in arrival order (keep-alive and pipelining alike) and each final
//! response (status >= 200, or 101) pairs with the oldest unanswered request.
//! Interim responses (1xx other than 101, e.g. the `100 Continue` of `Expect:
//! 100-continue`) are skipped. A response to `HEAD` has no body, whatever its
//! headers say. After `101 Switching Protocols` or a 2xx answer to `CONNECT` the
//! connection no longer carries HTTP/1.x: its later bytes are ignored (a client
//! preface after an `h2c` upgrade is still detected as HTTP/2).
//!
//! # Timing
//!
//! - start: the `mono_ns` of the `Data` event that carried the request's first byte
//!   (`tid` is that event's thread).
//! - end: the `mono_ns` of the `Data` event that carried the response's last byte.
//!   For a body delimited by the close, that is the last `Data` event of the
//!   response before the close. When no last byte was seen, the `mono_ns` of the
//!   event that ended the transaction: the `ConnectionClosed` (or `ProcessExited`)
//!   for `Completion::ConnectionClosed`, the `Data` event where the capture was cut
//!   or the `Loss` event for `Completion::Truncated`.
//!
//! # Completion
//!
//! - `Complete`: the response was seen to its last byte (its end known from its
//!   framing, or the close for a body delimited by the close).
//! - `ConnectionClosed`: the connection closed (or the process exited) before the
//!   response ended; `response` is `None` if it had not started. Every request still
//!   unanswered at the close is reported so.
//! - `Truncated`: uncaptured bytes (`total_len > payload.len()`) hid part of a
//!   header block or of chunked framing, or bytes did not parse, or events were lost
//!   (`Loss`): what was known is reported. Uncaptured bytes inside a body of known
//!   length do not truncate anything: they are counted into `body_size`.
//!
//! # Bounds
//!
//! `max_pending` unanswered requests per connection (further requests are counted
//! and their responses skipped, keeping the pairing right), `max_head_bytes` of an
//! incomplete header block per direction. Bytes that are not HTTP/1.x are counted
//! and skipped, and the direction resynchronises at the next payload that starts a
//! message ([`http1`] explains).

use std::collections::VecDeque;

use tandem_proto::v1::Direction;

use crate::model::{Completion, Exchange, HttpExchange, HttpRequest, HttpResponse, Side, TraceIds};
use crate::protocols::http1::{self, Chunk, CloseOutcome, Http1Event, MessageKind, Origin, Parser};
use crate::protocols::Segment;

use super::session::{
    side_sending_requests, ConnMeta, Ctx, Detected, Footprint, Probe, Protocol, Session, Timing,
};
use super::Limits;

/// HTTP/1.x detection and fallback (see the module documentation).
#[derive(Debug)]
pub struct Http1Protocol;

impl Protocol for Http1Protocol {
    fn name(&self) -> &'static str {
        "http1"
    }

    fn detect(&self, probe: &Probe<'_>) -> Option<Detected> {
        // A known role gets HTTP/1.x as the fallback; here only unknown roles are
        // decided, by a payload that starts a request.
        if probe.side.is_some()
            || probe.current == Some("http1")
            || probe.direction == Direction::Unspecified
            || !http1::looks_like_start(MessageKind::Request, probe.payload)
        {
            return None;
        }
        let mut session = Http1Session::new(probe.limits);
        // The request parser (never fed so far) starts on this payload; the
        // response direction waits for a status line.
        session.responses.resync();
        Some(Detected {
            session: Box::new(session),
            side: Some(side_sending_requests(probe.direction)),
        })
    }

    fn fallback(&self, meta: &ConnMeta, limits: &Limits) -> Option<Box<dyn Session>> {
        meta.side?;
        let mut session = Http1Session::new(limits);
        if meta.preexisting {
            session.requests.resync();
            session.responses.resync();
        }
        Some(Box::new(session))
    }
}

/// A request waiting for (the end of) its response.
#[derive(Debug)]
struct Pending {
    request: HttpRequest,
    origin: Origin,
    /// The request's own bytes ended (or will never be known).
    request_done: bool,
    truncated: bool,
    response: Option<HttpResponse>,
    /// Its span's ids, given when its header block was read.
    trace: Option<TraceIds>,
}

/// One HTTP/1.x connection's state.
#[derive(Debug)]
pub struct Http1Session {
    requests: Parser,
    responses: Parser,
    pending: VecDeque<Pending>,
    max_pending: usize,
    /// Requests beyond `max_pending`, after all of `pending`; their responses are
    /// skipped.
    untracked: u64,
    /// The response in progress is skipped (unpaired or untracked).
    discard_response: bool,
    /// The response in progress switches the connection away from HTTP/1.x.
    upgrade_after_response: bool,
    /// No longer HTTP/1.x.
    opaque: bool,
    /// mono_ns of the last Data event in the response direction.
    last_response_ns: u64,
}

fn is_method(request: &HttpRequest, method: &str) -> bool {
    request.method.eq_ignore_ascii_case(method)
}

impl Http1Session {
    pub fn new(limits: &Limits) -> Self {
        Http1Session {
            requests: Parser::new(MessageKind::Request, limits.max_head_bytes),
            responses: Parser::new(MessageKind::Response, limits.max_head_bytes),
            pending: VecDeque::new(),
            max_pending: limits.max_pending.max(1),
            untracked: 0,
            discard_response: false,
            upgrade_after_response: false,
            opaque: false,
            last_response_ns: 0,
        }
    }

    fn on_request_event(&mut self, event: Http1Event, ctx: &mut Ctx<'_>) {
        match event {
            Http1Event::Request {
                request,
                origin,
                truncated,
            } => {
                ctx.meta.requests_seen += 1;
                if self.untracked > 0 || self.pending.len() >= self.max_pending {
                    self.untracked += 1;
                    ctx.stats.untracked_requests += 1;
                } else {
                    let traceparent = request.header("traceparent");
                    let trace =
                        ctx.begin(Side::Server, origin.task, origin.mono_ns, 0, traceparent);
                    self.pending.push_back(Pending {
                        request,
                        origin,
                        request_done: truncated,
                        truncated,
                        response: None,
                        trace: Some(trace),
                    });
                }
            }
            Http1Event::End { body_size } => {
                if let Some(current) = self.request_in_progress() {
                    current.request.body_size = body_size;
                    current.request_done = true;
                }
            }
            Http1Event::BodyLost { body_size } => {
                if let Some(current) = self.request_in_progress() {
                    current.request.body_size = body_size;
                    current.request_done = true;
                    current.truncated = true;
                }
            }
            Http1Event::Error(error) => {
                count_error(error, ctx);
                let body_size = self.requests.body_size();
                if let Some(current) = self.request_in_progress() {
                    current.request.body_size = body_size;
                    current.request_done = true;
                    current.truncated = true;
                }
            }
            // A request parser reports no responses.
            Http1Event::Response { .. } => {}
        }
    }

    /// The request whose bytes are being received, if it is tracked: requests
    /// arrive one after the other, so it can only be the newest one.
    fn request_in_progress(&mut self) -> Option<&mut Pending> {
        if self.untracked > 0 {
            return None;
        }
        self.pending.back_mut().filter(|p| !p.request_done)
    }

    fn on_response_event(&mut self, event: Http1Event, mono_ns: u64, ctx: &mut Ctx<'_>) {
        match event {
            Http1Event::Response {
                response,
                truncated,
                ..
            } => {
                let status = response.status;
                if (100..200).contains(&status) && status != 101 {
                    // Interim (100 Continue, 103 Early Hints): the final one follows.
                    return;
                }
                self.discard_response = false;
                self.upgrade_after_response = false;
                let Some(front) = self.pending.front_mut() else {
                    if self.untracked > 0 {
                        self.untracked -= 1;
                    } else {
                        ctx.stats.unpaired_responses += 1;
                    }
                    self.discard_response = true;
                    return;
                };
                let connect = is_method(&front.request, "CONNECT") && (200..300).contains(&status);
                if is_method(&front.request, "HEAD") || connect {
                    self.responses.no_body();
                }
                self.upgrade_after_response = status == 101 || connect;
                front.response = Some(response);
                if truncated {
                    self.finish(Completion::Truncated, 0, mono_ns, ctx);
                }
            }
            Http1Event::End { body_size } => {
                self.finish(Completion::Complete, body_size, mono_ns, ctx);
                if self.upgrade_after_response {
                    self.upgrade_after_response = false;
                    self.opaque = true;
                    ctx.stats.upgraded_connections += 1;
                }
            }
            Http1Event::BodyLost { body_size } => {
                self.finish(Completion::Truncated, body_size, mono_ns, ctx);
            }
            Http1Event::Error(error) => {
                count_error(error, ctx);
                let body_size = self.responses.body_size();
                self.finish(Completion::Truncated, body_size, mono_ns, ctx);
            }
            // A response parser reports no requests.
            Http1Event::Request { .. } => {}
        }
    }

    /// Ends the response in progress: reports it with its request, unless it is
    /// skipped or none is in progress.
    fn finish(&mut self, completion: Completion, body_size: u64, end_ns: u64, ctx: &mut Ctx<'_>) {
        if std::mem::take(&mut self.discard_response) {
            return;
        }
        if self.pending.front().is_some_and(|p| p.response.is_some()) {
            if let Some(mut pending) = self.pending.pop_front() {
                if let Some(response) = pending.response.as_mut() {
                    response.body_size = body_size;
                }
                self.report(pending, completion, end_ns, ctx);
            }
        }
    }

    fn report(&self, mut pending: Pending, completion: Completion, end_ns: u64, ctx: &mut Ctx<'_>) {
        if !pending.request_done {
            // The response ended before the request (e.g. a 413 or a 417): its body
            // as far as it was received.
            pending.request.body_size = self.requests.body_size();
        }
        let completion = match completion {
            Completion::Complete if pending.truncated => Completion::Truncated,
            other => other,
        };
        let timing = Timing {
            task: pending.origin.task,
            start_mono_ns: pending.origin.mono_ns,
            end_mono_ns: end_ns,
            trace: pending.trace,
        };
        let exchange = Exchange::Http(HttpExchange {
            request: pending.request,
            response: pending.response,
        });
        ctx.emit(timing, completion, Side::Server, exchange);
    }

    /// Reports every unanswered request with `completion`.
    fn flush(&mut self, completion: Completion, mono_ns: u64, ctx: &mut Ctx<'_>) {
        self.discard_response = false;
        self.upgrade_after_response = false;
        self.untracked = 0;
        while let Some(pending) = self.pending.pop_front() {
            self.report(pending, completion, mono_ns, ctx);
        }
    }
}

fn count_error(error: http1::ParseError, ctx: &mut Ctx<'_>) {
    ctx.stats.parse_errors += 1;
    if error == http1::ParseError::HeadTooLong {
        ctx.stats.oversized_heads += 1;
    }
}

impl Session for Http1Session {
    fn name(&self) -> &'static str {
        "http1"
    }

    fn feed(&mut self, seg: &Segment<'_>, direction: Direction, ctx: &mut Ctx<'_>) {
        if self.opaque {
            return;
        }
        let Some(is_request) = ctx.is_request(direction) else {
            ctx.stats.skipped_bytes += seg.total();
            return;
        };
        let mut chunk = Chunk::new(seg.data, seg.total(), seg.origin);
        if is_request {
            while let Some(event) = self.requests.next(&mut chunk) {
                self.on_request_event(event, ctx);
            }
        } else {
            self.last_response_ns = seg.origin.mono_ns;
            while let Some(event) = self.responses.next(&mut chunk) {
                self.on_response_event(event, seg.origin.mono_ns, ctx);
                if self.opaque {
                    break;
                }
            }
        }
        ctx.stats.skipped_bytes += chunk.skipped();
        ctx.stats.lost_sync += chunk.lost_sync();
    }

    fn close(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>) {
        // The request parser keeps its state: a request cut by the close is reported
        // with the body bytes received so far.
        match self.responses.close() {
            CloseOutcome::Ended { body_size } => {
                let end = self.last_response_ns;
                self.finish(Completion::Complete, body_size, end, ctx);
            }
            CloseOutcome::Cut { body_size, .. } => {
                self.finish(Completion::ConnectionClosed, body_size, mono_ns, ctx);
            }
            CloseOutcome::Between => {}
        }
        self.flush(Completion::ConnectionClosed, mono_ns, ctx);
    }

    fn lose(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>) {
        if let Some(front) = self.pending.front_mut() {
            if let Some(response) = front.response.as_mut() {
                response.body_size = self.responses.body_size();
            }
        }
        self.flush(Completion::Truncated, mono_ns, ctx);
        self.requests.resync();
        self.responses.resync();
    }

    fn footprint(&self) -> Footprint {
        Footprint {
            buffered: self.requests.buffered().max(self.responses.buffered()),
            pending: self.pending.len(),
            entries: 0,
        }
    }

    fn redetectable(&self) -> bool {
        self.pending.is_empty()
    }
}
