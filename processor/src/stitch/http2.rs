//! HTTP/2 connections: from both directions' frames to one transaction per stream.
//!
//! A connection becomes HTTP/2 when a `Data` event starts with the client preface
//! (its sender is the client), or, for a connection first seen mid-stream (no
//! `ConnectionOpened`, or a `preexisting` one), when an event's bytes look like
//! HTTP/2 frames ([`http2::looks_like_frames`]); its role then comes from the first
//! request header block (`:method`) seen in either direction, unless the loader
//! gave it. Each direction has its own [`FrameReader`] and HPACK table.
//!
//! # Streams
//!
//! A request's header block opens a stream; DATA frames count its body; the
//! response's header block (`:status`, 1xx skipped) and trailers (merged into the
//! response headers, as gRPC sends `grpc-status` there) follow; the response's
//! END_STREAM ends the transaction (`Complete`). RST_STREAM ends it with what is
//! known (`ConnectionClosed` when no response had started, else `Truncated`); the
//! connection's close reports every open stream as `ConnectionClosed`, a `Loss` as
//! `Truncated`. A header block lost to the capture marks its stream `Truncated`.
//!
//! Timing: `start_mono_ns` is the event that completed the request's header block,
//! `end_mono_ns` the one that carried the response's END_STREAM.
//!
//! # Bounds
//!
//! At most [`MAX_STREAMS`] open streams per connection: a new one beyond evicts the
//! oldest, reported `Truncated` (counted in `evicted_streams`; its END_STREAM was most
//! likely in bytes the capture missed), and its late response is skipped. A stream keeps only the headers
//! spans and metrics read ([`KEPT_HEADERS`]), not all of them. The frame readers are
//! bounded (see [`http2`]).

use std::{borrow::Cow, collections::BTreeMap};

use tandem_proto::v1::Direction;

use crate::model::{
    Completion, Exchange, Header, HttpExchange, HttpRequest, HttpResponse, Side, TraceIds, HTTP_2,
};
use crate::protocols::http2::{self, FrameReader, H2Event};
use crate::protocols::{Segment, Task};

use super::session::{Ctx, Detected, Footprint, Probe, Protocol, Session, Timing};

/// Most open streams tracked per connection.
pub const MAX_STREAMS: usize = 128;

/// Request and response headers a stream keeps (`:authority` is kept as `host`).
pub const KEPT_HEADERS: [&str; 7] = [
    "host",
    "user-agent",
    "traceparent",
    "tracestate",
    "content-type",
    "grpc-status",
    "grpc-message",
];

/// HTTP/2 detection: the client preface (its sender is the client; from 3 bytes on a
/// connection's first read, since `PRI` is no HTTP/1.x method), or frames on a
/// connection of unknown role or opened before the loader, where no request of
/// another protocol was seen.
#[derive(Debug)]
pub struct Http2Protocol;

impl Protocol for Http2Protocol {
    fn name(&self) -> &'static str {
        "http2"
    }

    fn detect(&self, probe: &Probe<'_>) -> Option<Detected> {
        if probe.current.is_some_and(|c| c != "http1") {
            return None;
        }
        let payload = probe.payload;
        let short_start = probe.fresh && payload.len() >= 3 && http2::PREFACE.starts_with(payload);
        let preface = short_start || http2::starts_with_preface(payload);
        let midstream = !preface
            && (probe.side.is_none() || probe.preexisting)
            && probe.requests_seen == 0
            && http2::looks_like_frames(payload, probe.total);
        if !preface && !midstream {
            return None;
        }
        let session = Http2Session::new(probe.limits.max_head_bytes, probe.side, preface);
        Some(Detected {
            session: Box::new(session),
            side: None,
        })
    }
}

#[derive(Debug)]
struct Stream {
    request: HttpRequest,
    start_mono_ns: u64,
    task: Task,
    response: Option<HttpResponse>,
    truncated: bool,
    /// Its span's ids, given when its request HEADERS were read.
    trace: Option<TraceIds>,
}

/// One HTTP/2 connection's state.
#[derive(Debug)]
pub struct Http2Session {
    ingress: FrameReader,
    egress: FrameReader,
    /// The direction requests travel in, once known.
    request_dir: Option<Direction>,
    streams: BTreeMap<u32, Stream>,
    /// Requests not tracked (over `MAX_STREAMS`): their responses are skipped.
    untracked: BTreeMap<u32, ()>,
    /// Detected from the preface (else mid-stream); counted at the first feed.
    from_start: bool,
    counted: bool,
}

fn request_dir_of(side: Side) -> Direction {
    match side {
        Side::Server => Direction::Ingress,
        Side::Client => Direction::Egress,
    }
}

fn side_of(request_dir: Direction) -> Side {
    match request_dir {
        Direction::Egress => Side::Client,
        _ => Side::Server,
    }
}

fn keep(headers: &mut Vec<Header>, name: &str, value: &str) {
    if let Some(kept) = KEPT_HEADERS.iter().find(|k| **k == name) {
        match headers.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => headers.push((Cow::Borrowed(kept), value.to_string())),
        }
    }
}

fn request_of(fields: &[(String, String)]) -> Option<HttpRequest> {
    let mut request = HttpRequest {
        version: HTTP_2,
        ..HttpRequest::default()
    };
    let mut has_method = false;
    for (name, value) in fields {
        match name.as_str() {
            ":method" => {
                request.method = crate::model::method_from_bytes(value.as_bytes());
                has_method = true;
            }
            ":path" => match value.split_once('?') {
                Some((path, query)) => {
                    request.path = path.to_string();
                    request.query = Some(query.to_string());
                }
                None => request.path = value.clone(),
            },
            ":authority" => keep(&mut request.headers, "host", value),
            "host" if request.header("host").is_some() => {}
            other => keep(&mut request.headers, other, value),
        }
    }
    has_method.then_some(request)
}

fn status_of(fields: &[(String, String)]) -> Option<u16> {
    fields
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| v.parse().ok())
}

impl Http2Session {
    /// A connection whose first bytes were the preface (`from_start`) or frames seen
    /// mid-stream; `side`: the role, when the loader gave it.
    pub fn new(max_block: usize, side: Option<Side>, from_start: bool) -> Self {
        Http2Session {
            ingress: FrameReader::new(max_block, from_start),
            egress: FrameReader::new(max_block, from_start),
            request_dir: side.map(request_dir_of),
            streams: BTreeMap::new(),
            untracked: BTreeMap::new(),
            from_start,
            counted: false,
        }
    }

    /// The role, once known.
    pub fn side(&self) -> Option<Side> {
        self.request_dir.map(side_of)
    }

    fn data(&mut self, seg: &Segment<'_>, direction: Direction, ctx: &mut Ctx<'_>) {
        let payload = seg.data;
        let total = seg.total();
        let mono_ns = seg.origin.mono_ns;
        let preface_start = payload.first() == Some(&http2::PREFACE[0])
            && http2::PREFACE.starts_with(payload.get(..24).unwrap_or(payload));
        if self.request_dir.is_none() && preface_start {
            // The client sends the preface.
            self.request_dir = match direction {
                Direction::Unspecified => None,
                d => Some(d),
            };
        }
        let reader = match direction {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
            Direction::Unspecified => {
                ctx.stats.skipped_bytes += total;
                return;
            }
        };
        let mut events = Vec::new();
        ctx.stats.skipped_bytes += reader.feed(payload, total, &mut events);
        for event in events {
            self.on_event(direction, event, mono_ns, seg.origin.task, ctx);
        }
    }

    fn on_event(
        &mut self,
        direction: Direction,
        event: H2Event,
        mono_ns: u64,
        task: Task,
        ctx: &mut Ctx<'_>,
    ) {
        match event {
            H2Event::Headers {
                stream,
                headers,
                end_stream,
                hpack,
                error,
            } => {
                ctx.stats.hpack_unknown_indices += u64::from(hpack.unknown_indices);
                if error.is_some() {
                    ctx.stats.hpack_errors += 1;
                }
                if self.request_dir.is_none() {
                    if headers.iter().any(|(n, _)| n == ":method") {
                        self.request_dir = Some(direction);
                    } else if headers.iter().any(|(n, _)| n == ":status") {
                        self.request_dir = Some(match direction {
                            Direction::Ingress => Direction::Egress,
                            _ => Direction::Ingress,
                        });
                    } else {
                        return;
                    }
                }
                if Some(direction) == self.request_dir {
                    self.on_request_headers(stream, &headers, end_stream, mono_ns, task, ctx);
                } else {
                    self.on_response_headers(stream, &headers, end_stream, mono_ns, ctx);
                }
            }
            H2Event::Data {
                stream,
                len,
                end_stream,
            } => {
                if self.request_dir.is_none() {
                    return;
                }
                if Some(direction) == self.request_dir {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        s.request.body_size += len;
                    }
                } else {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        if let Some(r) = s.response.as_mut() {
                            r.body_size += len;
                        }
                    }
                    if end_stream {
                        self.end_stream(stream, Completion::Complete, mono_ns, ctx);
                    }
                }
            }
            H2Event::Reset { stream, .. } => {
                ctx.stats.http2_reset_streams += 1;
                let completion = match self.streams.get(&stream) {
                    Some(s) if s.response.is_some() => Completion::Truncated,
                    _ => Completion::ConnectionClosed,
                };
                self.end_stream(stream, completion, mono_ns, ctx);
            }
            H2Event::LostSync { stream } => {
                ctx.stats.lost_sync += 1;
                if let Some(s) = stream.and_then(|id| self.streams.get_mut(&id)) {
                    s.truncated = true;
                }
            }
            H2Event::Invalid => ctx.stats.parse_errors += 1,
            H2Event::Oversized { stream } => {
                ctx.stats.parse_errors += 1;
                ctx.stats.oversized_heads += 1;
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.truncated = true;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_request_headers(
        &mut self,
        stream: u32,
        headers: &[(String, String)],
        end_stream: bool,
        mono_ns: u64,
        task: Task,
        ctx: &mut Ctx<'_>,
    ) {
        let _ = end_stream;
        if let Some(existing) = self.streams.get_mut(&stream) {
            // Request trailers: kept headers only.
            for (n, v) in headers {
                keep(&mut existing.request.headers, n, v);
            }
            return;
        }
        let Some(request) = request_of(headers) else {
            // Trailers of an untracked stream, or a block whose pseudo-headers were
            // lost (counted in hpack_*).
            return;
        };
        if self.streams.len() >= MAX_STREAMS {
            // The oldest open stream most likely ended unseen (its END_STREAM was in
            // uncaptured bytes): reported as truncated to make room, so a long-lived
            // connection keeps being traced.
            if let Some((old_id, old)) = self.streams.pop_first() {
                ctx.stats.evicted_streams += 1;
                self.untracked.insert(old_id, ());
                if self.untracked.len() > MAX_STREAMS {
                    self.untracked.pop_first();
                }
                self.report(old, Completion::Truncated, mono_ns, ctx);
            }
        }
        let side = self.side().unwrap_or(Side::Server);
        let traceparent = request.header("traceparent");
        let trace = ctx.begin(side, task, mono_ns, stream, traceparent);
        self.streams.insert(
            stream,
            Stream {
                request,
                start_mono_ns: mono_ns,
                task,
                response: None,
                truncated: false,
                trace: Some(trace),
            },
        );
    }

    fn on_response_headers(
        &mut self,
        stream: u32,
        headers: &[(String, String)],
        end_stream: bool,
        mono_ns: u64,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(s) = self.streams.get_mut(&stream) else {
            if self.untracked.remove(&stream).is_none() && status_of(headers).is_some() {
                ctx.stats.unpaired_responses += 1;
            }
            return;
        };
        match (s.response.as_mut(), status_of(headers)) {
            (_, Some(status)) if (100..200).contains(&status) => return,
            (None, Some(status)) => {
                let mut response = HttpResponse {
                    status,
                    version: HTTP_2,
                    ..HttpResponse::default()
                };
                for (n, v) in headers {
                    keep(&mut response.headers, n, v);
                }
                s.response = Some(response);
            }
            (Some(response), _) => {
                // Trailers.
                for (n, v) in headers {
                    keep(&mut response.headers, n, v);
                }
            }
            (None, None) => {
                // A response block whose :status was lost.
                s.truncated = true;
            }
        }
        if end_stream {
            self.end_stream(stream, Completion::Complete, mono_ns, ctx);
        }
    }

    fn end_stream(&mut self, stream: u32, completion: Completion, end_ns: u64, ctx: &mut Ctx<'_>) {
        self.untracked.remove(&stream);
        if let Some(s) = self.streams.remove(&stream) {
            self.report(s, completion, end_ns, ctx);
        }
    }

    fn report(&self, s: Stream, completion: Completion, end_ns: u64, ctx: &mut Ctx<'_>) {
        let completion = match completion {
            Completion::Complete if s.truncated || s.response.is_none() => Completion::Truncated,
            other => other,
        };
        let timing = Timing {
            task: s.task,
            start_mono_ns: s.start_mono_ns,
            end_mono_ns: end_ns,
            trace: s.trace,
        };
        let fallback = self.side().unwrap_or(Side::Server);
        let exchange = Exchange::Http(HttpExchange {
            request: s.request,
            response: s.response,
        });
        ctx.emit(timing, completion, fallback, exchange);
    }

    /// Reports every open stream with `completion` (close, loss).
    fn flush(&mut self, completion: Completion, mono_ns: u64, ctx: &mut Ctx<'_>) {
        self.untracked.clear();
        let streams = std::mem::take(&mut self.streams);
        for (_, s) in streams {
            self.report(s, completion, mono_ns, ctx);
        }
    }
}

impl Session for Http2Session {
    fn name(&self) -> &'static str {
        "http2"
    }

    fn feed(&mut self, seg: &Segment<'_>, direction: Direction, ctx: &mut Ctx<'_>) {
        if !self.counted {
            self.counted = true;
            ctx.stats.http2_connections += 1;
            if !self.from_start {
                ctx.stats.http2_midstream_connections += 1;
            }
        }
        self.data(seg, direction, ctx);
    }

    fn close(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>) {
        self.flush(Completion::ConnectionClosed, mono_ns, ctx);
    }

    /// Events were lost: open streams are reported, both readers resynchronise.
    fn lose(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>) {
        self.flush(Completion::Truncated, mono_ns, ctx);
        self.ingress.resync();
        self.egress.resync();
    }

    /// Buffered bytes, open streams, HPACK table bytes.
    fn footprint(&self) -> Footprint {
        Footprint {
            buffered: self.ingress.buffered() + self.egress.buffered(),
            pending: self.streams.len(),
            entries: self.ingress.table_size() + self.egress.table_size(),
        }
    }

    fn resumable(&self) -> bool {
        false
    }
}
