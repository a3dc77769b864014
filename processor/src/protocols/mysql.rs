//! MySQL / MariaDB client/server protocol, both directions of one connection.
//!
//! Every packet is a 3-byte little-endian payload length and a sequence id. The
//! server speaks first (the handshake, sequence 0); the client's connection-phase
//! packets (handshake response, SSL request, auth data) have a sequence id above 0,
//! every command starts at 0. Commands are not pipelined: the client waits for the
//! whole answer before its next command.
//!
//! # Operations
//!
//! * `COM_QUERY` (text), `COM_STMT_PREPARE` (text; the statement id of its
//!   `STMT_PREPARE_OK` is mapped to the text, at most [`MAX_STATEMENTS`] per
//!   connection), `COM_STMT_EXECUTE` (statement id -> text): one operation each.
//! * Other commands with an answer (ping, init db, ...) are paired, not reported;
//!   `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`, `COM_QUIT` have no answer.
//! * The answer ends with an `OK` or `ERR` first packet (`ERR`: the error code as
//!   `db.response.status_code`, with the message), or a result set's terminating
//!   `EOF`/`OK` (unless more results follow). When uncaptured bytes hide that end,
//!   the operation ends at the last answer event before the client's next command
//!   (or the close).
//! * A client SSL request (capability `CLIENT_SSL` in a 32-byte connection-phase
//!   packet): the connection is encrypted from there, no longer read.

use std::collections::{HashMap, VecDeque};

use crate::model::{Completion, DbError};
use crate::protocols::db::{
    text, untracked, DbSession, DbStats, Finished, Input, Origin, Segment, MAX_ERROR_MESSAGE,
    MAX_KEEP,
};
use crate::protocols::truncate_utf8;

mod packet;
#[cfg(test)]
mod tests;

use packet::{le16, le24, le32, Framer, Packet, Read};
pub use packet::{looks_like_greeting, looks_like_query};

/// Most prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
/// Most bytes of a remembered statement's text.
pub const MAX_STORED_QUERY: usize = 1024;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const CLIENT_CONNECT_WITH_DB: u32 = 0x0008;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x0020_0000;
/// Most bytes of a database name kept.
const MAX_NAME: usize = 128;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const CLIENT_SSL: u32 = 0x0800;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// A payload of this length continues in the next packet.
const MAX_PAYLOAD: u32 = 0xFF_FFFF;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Query(Option<String>),
    Prepare(Option<String>),
    Silent,
}

/// Where the answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// No packet yet.
    None,
    /// A result set: EOF packets seen in it.
    Rows { eofs: u8 },
    /// A prepare's OK: packets still to come (definitions and EOFs), unknown
    /// without the capabilities, so the end is the next command.
    Prepared,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    origin: Origin,
    error: Option<DbError>,
    answer: Answer,
    /// The answer started (a packet was seen), and when the last one came.
    last_ns: Option<u64>,
    lost: bool,
}

/// One MySQL connection: both directions, pairing, prepared statements.
#[derive(Debug)]
pub struct MySqlSession {
    commands: Framer,
    answers: Framer,
    pending: VecDeque<Pending>,
    untracked: u64,
    statements: HashMap<u32, String>,
    encrypted: bool,
    /// The database named by the handshake response or the last `COM_INIT_DB`.
    database: Option<String>,
    /// A command (sequence 0) was seen: the connection phase is over, and client
    /// packets of a higher sequence are continuations of a command longer than
    /// 16 MiB or authentication data (`COM_CHANGE_USER`), never an SSL request.
    commanding: bool,
}

impl MySqlSession {
    /// `fresh`: seen from the connection's start (the handshake).
    pub fn new(fresh: bool) -> Self {
        MySqlSession {
            commands: Framer::new(fresh),
            answers: Framer::new(fresh),
            pending: VecDeque::new(),
            untracked: 0,
            statements: HashMap::new(),
            encrypted: false,
            database: None,
            commanding: false,
        }
    }

    fn on_command(
        &mut self,
        p: Packet,
        origin: Origin,
        stats: &mut DbStats,
        out: &mut Vec<Finished>,
    ) {
        if p.seq != 0 {
            if self.commanding {
                return;
            }
            // Connection phase: handshake response, SSL request, auth data.
            let caps = le32(&p.body, 0).unwrap_or(0);
            if p.seq == 1 && p.len == 32 && caps & CLIENT_SSL != 0 {
                self.encrypted = true;
                stats.encrypted_connections += 1;
            } else if p.seq == 1 {
                self.database = handshake_database(&p.body);
            }
            return;
        }
        self.commanding = true;
        // The client waits for whole answers: an earlier answered command is over.
        while self.pending.front().is_some_and(|f| f.last_ns.is_some()) {
            if let Some(f) = self.pending.pop_front() {
                let end = f.last_ns.unwrap_or(origin.mono_ns);
                let completion = if f.lost {
                    Completion::Truncated
                } else {
                    Completion::Complete
                };
                self.finish(f, end, completion, stats, out);
            }
        }
        let Some(&command) = p.body.first() else {
            return;
        };
        let kind = match command {
            COM_QUERY => Kind::Query(Some(query_text(&p.body))),
            COM_STMT_PREPARE => {
                Kind::Prepare(Some(text(p.body.get(1..).unwrap_or_default(), MAX_KEEP)))
            }
            COM_STMT_EXECUTE => {
                let id = le32(&p.body, 1).unwrap_or(u32::MAX);
                Kind::Query(self.statements.get(&id).cloned())
            }
            COM_STMT_CLOSE => {
                if let Some(id) = le32(&p.body, 1) {
                    self.statements.remove(&id);
                }
                return;
            }
            COM_STMT_SEND_LONG_DATA | COM_QUIT => return,
            COM_INIT_DB => {
                let db = text(p.body.get(1..).unwrap_or_default(), MAX_NAME);
                self.database = Some(db).filter(|d| !d.is_empty());
                Kind::Silent
            }
            _ => Kind::Silent,
        };
        if untracked(&mut self.untracked, self.pending.len(), stats) {
            return;
        }
        self.pending.push_back(Pending {
            kind,
            origin,
            error: None,
            answer: Answer::None,
            last_ns: None,
            lost: false,
        });
    }

    fn on_answer(&mut self, p: Packet, now: u64, stats: &mut DbStats, out: &mut Vec<Finished>) {
        let Some(front) = self.pending.front_mut() else {
            if p.seq == 1 && self.untracked > 0 {
                self.untracked -= 1;
            } else if p.seq == 1 {
                stats.unpaired_responses += 1;
            }
            // The handshake (sequence 0) and later packets of an unpaired answer.
            return;
        };
        front.last_ns = Some(now);
        let first = p.body.first().copied();
        let small = p.len < MAX_PAYLOAD;
        let done = match (front.answer, first) {
            (Answer::None, Some(0xFF)) => {
                front.error = Some(error(&p.body));
                true
            }
            (Answer::None, Some(0x00)) if small => {
                if let Kind::Prepare(Some(q)) = &front.kind {
                    if let Some(id) = le32(&p.body, 1) {
                        let mut q = q.clone();
                        truncate_utf8(&mut q, MAX_STORED_QUERY);
                        if self.statements.len() >= MAX_STATEMENTS
                            && !self.statements.contains_key(&id)
                        {
                            // Forget one to stay bounded.
                            if let Some(old) = self.statements.keys().next().copied() {
                                self.statements.remove(&old);
                                stats.evicted_statements += 1;
                            }
                        }
                        self.statements.insert(id, q);
                    }
                    front.answer = Answer::Prepared;
                    false
                } else {
                    true
                }
            }
            (Answer::None, _) => {
                front.answer = Answer::Rows { eofs: 0 };
                false
            }
            (Answer::Rows { .. }, Some(0xFF)) => {
                front.error = Some(error(&p.body));
                true
            }
            // EOF (5 bytes), or the OK that ends rows with CLIENT_DEPRECATE_EOF.
            (Answer::Rows { eofs }, Some(0xFE)) if small && (p.len == 5 || p.len >= 7) => {
                if p.len == 5 && eofs == 0 {
                    // The EOF after the column definitions.
                    front.answer = Answer::Rows { eofs: 1 };
                    false
                } else {
                    let status = if p.len == 5 {
                        le16(&p.body, 3).unwrap_or(0)
                    } else {
                        ok_status(&p.body).unwrap_or(0)
                    };
                    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                        front.answer = Answer::None;
                        false
                    } else {
                        true
                    }
                }
            }
            _ => false,
        };
        if done {
            if let Some(f) = self.pending.pop_front() {
                self.finish(f, now, Completion::Complete, stats, out);
            }
        }
    }

    fn finish(
        &self,
        p: Pending,
        end: u64,
        completion: Completion,
        stats: &mut DbStats,
        out: &mut Vec<Finished>,
    ) {
        let query = match p.kind {
            Kind::Query(q) | Kind::Prepare(q) => q,
            Kind::Silent => return,
        };
        stats.count(completion);
        out.push(Finished::sql(
            p.origin,
            end,
            query.as_deref(),
            p.error,
            completion,
            self.database.clone(),
        ));
    }
}

impl DbSession for MySqlSession {
    fn system(&self) -> crate::model::DbSystem {
        crate::model::DbSystem::Mysql
    }

    fn close(&mut self, mono_ns: u64, stats: &mut DbStats, out: &mut Vec<Finished>) {
        while let Some(p) = self.pending.pop_front() {
            match (p.last_ns, p.lost) {
                (Some(end), true) => self.finish(p, end, Completion::Truncated, stats, out),
                (Some(end), false) => self.finish(p, end, Completion::Complete, stats, out),
                (None, _) => self.finish(p, mono_ns, Completion::ConnectionClosed, stats, out),
            }
        }
        self.untracked = 0;
    }

    fn lose(&mut self, mono_ns: u64, stats: &mut DbStats, out: &mut Vec<Finished>) {
        while let Some(p) = self.pending.pop_front() {
            let end = p.last_ns.unwrap_or(mono_ns);
            self.finish(p, end, Completion::Truncated, stats, out);
        }
        self.untracked = 0;
        self.commands.resync();
        self.answers.resync();
    }

    /// (pending, statements, buffered bytes) for bound checks.
    fn footprint(&self) -> (usize, usize, usize) {
        (
            self.pending.len(),
            self.statements.len(),
            self.commands.buffered().max(self.answers.buffered()),
        )
    }

    fn encrypted(&self) -> bool {
        self.encrypted
    }

    fn request(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>) {
        if self.encrypted {
            return;
        }
        let mut input = Input::new(seg);
        while let Some(read) = self.commands.next(&mut input) {
            match read {
                Read::Packet(p) => self.on_command(p, seg.origin, stats, out),
                Read::LostSync => stats.lost_sync += 1,
            }
            if self.encrypted {
                break;
            }
        }
        stats.skipped_bytes += input.skipped;
    }

    fn response(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>) {
        if self.encrypted {
            return;
        }
        let now = seg.origin.mono_ns;
        let mut input = Input::new(seg);
        while let Some(read) = self.answers.next(&mut input) {
            match read {
                Read::Packet(p) => self.on_answer(p, now, stats, out),
                Read::LostSync => {
                    stats.lost_sync += 1;
                    if let Some(f) = self.pending.front_mut() {
                        f.lost = true;
                        f.last_ns = Some(now);
                    }
                }
            }
        }
        stats.skipped_bytes += input.skipped;
    }
}

/// The text of a COM_QUERY, skipping MySQL 8's empty query-attributes prefix.
fn query_text(body: &[u8]) -> String {
    let rest = body.get(1..).unwrap_or_default();
    let rest = match rest {
        [0, 1, tail @ ..] => tail,
        _ => rest,
    };
    text(rest, MAX_KEEP)
}

/// The database a HandshakeResponse41 names (`CLIENT_CONNECT_WITH_DB`): after the
/// capabilities, max packet size, charset, 23 reserved bytes, the user and the auth
/// data.
fn handshake_database(body: &[u8]) -> Option<String> {
    let caps = le32(body, 0)?;
    if caps & CLIENT_CONNECT_WITH_DB == 0 {
        return None;
    }
    let user_at = 32;
    let user_len = body.get(user_at..)?.iter().position(|&b| b == 0)?;
    let auth_at = user_at + user_len + 1;
    let db_at = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        let (n, at) = lenenc(body, auth_at)?;
        at.checked_add(usize::try_from(n).ok()?)?
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        auth_at + 1 + usize::from(*body.get(auth_at)?)
    } else {
        auth_at + body.get(auth_at..)?.iter().position(|&b| b == 0)? + 1
    };
    let rest = body.get(db_at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(text(rest.get(..end)?, MAX_NAME)).filter(|d| !d.is_empty())
}

/// A length-encoded integer at `at` and the index after it.
fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    match first {
        0..=0xFA => Some((u64::from(first), at + 1)),
        0xFC => Some((u64::from(le16(b, at + 1)?), at + 3)),
        0xFD => Some((u64::from(le24(b, at + 1)?), at + 4)),
        0xFE => {
            let x: [u8; 8] = b.get(at + 1..at + 9)?.try_into().ok()?;
            Some((u64::from_le_bytes(x), at + 9))
        }
        _ => None,
    }
}

/// Status flags of an OK packet (header byte, affected rows, last insert id).
fn ok_status(body: &[u8]) -> Option<u16> {
    let (_, at) = lenenc(body, 1)?;
    let (_, at) = lenenc(body, at)?;
    le16(body, at)
}

/// An ERR packet: code, `#` and SQLSTATE, message.
fn error(body: &[u8]) -> DbError {
    let code = le16(body, 1).map(|c| c.to_string());
    let rest = body.get(3..).unwrap_or_default();
    let message = match rest.first() {
        Some(b'#') => rest.get(6..).unwrap_or_default(),
        _ => rest,
    };
    DbError {
        code,
        message: text(message, MAX_ERROR_MESSAGE),
    }
}
