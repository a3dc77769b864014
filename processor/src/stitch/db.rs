//! Database sessions: PostgreSQL, MySQL and Redis connections, detected and fed
//! through the one [`Session`] trait.
//!
//! A connection's protocol is decided by the first request-direction payload that
//! starts like one (a PostgreSQL startup packet or `Q`/`P` message, a Redis array of
//! bulk strings, a MySQL `COM_QUERY`; [`postgres::looks_like_start`],
//! [`redis::looks_like_start`], [`mysql::looks_like_query`]) or, MySQL servers
//! speaking first, by an answer-direction payload that is a MySQL handshake
//! ([`mysql::looks_like_greeting`]). After [`super::MAX_UNDECIDED`]
//! request-direction payloads that started no database conversation, the database
//! detectors leave the connection alone.
//!
//! The request direction is the client's sending direction: EGRESS when the
//! instrumented process is the client (CLIENT spans, e.g. `psql`, `redis-cli`),
//! INGRESS when it is the server (SERVER spans, e.g. `postgres` itself). A
//! connection without a known role takes the direction of that first payload as
//! the request direction, like HTTP.
//!
//! Memory: each session's own bounds (pending operations, prepared statements, kept
//! bytes); the connection bound is the stitcher's.

use tandem_proto::v1::Direction;

use crate::model::{DbOperation, Exchange, Side};
use crate::protocols::db::{DbSession, Finished};
use crate::protocols::mysql::{self, MySqlSession};
use crate::protocols::postgres::{self, PgSession};
use crate::protocols::redis::{self, RedisSession};
use crate::protocols::Segment;

use super::session::{
    side_sending_requests, Ctx, Detected, Footprint, Probe, Protocol, Session, Timing,
};
use super::MAX_UNDECIDED;

/// A database protocol session as a stitching [`Session`].
#[derive(Debug)]
pub struct DbConn<S> {
    inner: S,
    scratch: Vec<Finished>,
}

impl<S: DbSession> DbConn<S> {
    pub fn new(inner: S) -> Self {
        DbConn {
            inner,
            scratch: Vec::new(),
        }
    }

    /// Turns what the session finished into transactions of the connection.
    fn emit(&mut self, ctx: &mut Ctx<'_>) {
        let system = self.inner.system();
        for f in self.scratch.drain(..) {
            let timing = Timing {
                task: f.origin.task,
                start_mono_ns: f.origin.mono_ns,
                end_mono_ns: f.end_mono_ns,
                // Given when reported (see `stitch/link.rs`).
                trace: None,
            };
            let op = DbOperation {
                system,
                operation: f.operation,
                collection: f.collection,
                query_text: f.query_text,
                error: f.error,
                namespace: f.namespace,
            };
            // The database sessions count what they finish themselves.
            ctx.emit_counted(timing, f.completion, Side::Client, Exchange::Db(op));
        }
    }
}

impl<S: DbSession + 'static> Session for DbConn<S> {
    fn name(&self) -> &'static str {
        self.inner.system().name()
    }

    fn feed(&mut self, seg: &Segment<'_>, direction: Direction, ctx: &mut Ctx<'_>) {
        let Some(request) = ctx.is_request(direction) else {
            ctx.stats.skipped_bytes += seg.total();
            return;
        };
        self.inner.feed(request, seg, ctx.stats, &mut self.scratch);
        self.emit(ctx);
    }

    fn close(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>) {
        self.inner.close(mono_ns, ctx.stats, &mut self.scratch);
        self.emit(ctx);
    }

    fn lose(&mut self, mono_ns: u64, ctx: &mut Ctx<'_>) {
        self.inner.lose(mono_ns, ctx.stats, &mut self.scratch);
        self.emit(ctx);
    }

    fn footprint(&self) -> Footprint {
        let (pending, entries, buffered) = self.inner.footprint();
        Footprint {
            buffered,
            pending,
            entries,
        }
    }

    fn finished(&self) -> bool {
        self.inner.encrypted()
    }
}

/// Whether the database detectors may look at `probe`: they give up after
/// [`MAX_UNDECIDED`] undecided payloads, and take over no session but HTTP/1's.
fn may_detect(probe: &Probe<'_>) -> bool {
    probe.attempts < MAX_UNDECIDED && probe.current.is_none_or(|c| c == "http1")
}

fn could_be_request(probe: &Probe<'_>) -> bool {
    probe.is_request().unwrap_or(true)
}

fn client_session<S: DbSession + 'static>(probe: &Probe<'_>, session: S) -> Option<Detected> {
    Some(Detected {
        session: Box::new(DbConn::new(session)),
        side: probe
            .side
            .is_none()
            .then(|| side_sending_requests(probe.direction)),
    })
}

/// PostgreSQL: a startup packet (the connection seen from its start), an
/// SSLRequest, or a `Q`/`P` message.
#[derive(Debug)]
pub struct PostgresProtocol;

impl Protocol for PostgresProtocol {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn detect(&self, probe: &Probe<'_>) -> Option<Detected> {
        if !may_detect(probe)
            || !could_be_request(probe)
            || !postgres::looks_like_start(probe.payload, probe.total)
        {
            return None;
        }
        let data = probe.payload;
        // A startup packet says the connection is seen from its start.
        let from_start =
            data.get(4..8).is_some_and(|c| c != [0, 0, 0, 0]) && data.first() == Some(&0);
        client_session(probe, PgSession::new(from_start))
    }
}

/// MySQL / MariaDB: the server's handshake (servers speak first), or a `COM_QUERY`.
#[derive(Debug)]
pub struct MySqlProtocol;

impl Protocol for MySqlProtocol {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn detect(&self, probe: &Probe<'_>) -> Option<Detected> {
        if !may_detect(probe) {
            return None;
        }
        let could_be_answer = probe.is_request().is_none_or(|r| !r);
        if could_be_answer && mysql::looks_like_greeting(probe.payload, probe.total) {
            // The process that receives the greeting is the client.
            let receiver = match probe.direction {
                Direction::Ingress => Side::Client,
                _ => Side::Server,
            };
            let side = probe.side.is_none().then_some(receiver);
            return Some(Detected {
                session: Box::new(DbConn::new(MySqlSession::new(true))),
                side,
            });
        }
        if could_be_request(probe) && mysql::looks_like_query(probe.payload, probe.total) {
            return client_session(probe, MySqlSession::new(false));
        }
        None
    }
}

/// Redis: an array of bulk strings (a command).
#[derive(Debug)]
pub struct RedisProtocol;

impl Protocol for RedisProtocol {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn detect(&self, probe: &Probe<'_>) -> Option<Detected> {
        if !may_detect(probe) || !could_be_request(probe) || !redis::looks_like_start(probe.payload)
        {
            return None;
        }
        client_session(probe, RedisSession::new(true))
    }
}
