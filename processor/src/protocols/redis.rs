//! Redis serialization protocol (RESP2 and RESP3), both directions of one connection.
//!
//! Requests are arrays of bulk strings (`*3\r\n$3\r\nSET\r\n...`) or inline
//! commands (`PING\r\n`); replies are any RESP value. Replies come in request order
//! (pipelining: N commands, then N replies), so each reply pairs with the oldest
//! unanswered command. RESP3 push values (`>`) and attributes (`|`) are not replies.
//!
//! The reader keeps at most [`MAX_LINE_KEEP`] bytes of a line and [`MAX_ARG_KEEP`]
//! bytes of the command name and key; bulk strings are skipped by their length, so
//! uncaptured bytes inside one cost nothing. When uncaptured bytes hide framing
//! (a pipelined write longer than the capture), the direction waits for an event
//! whose payload starts like a RESP value: in the reply direction every unanswered
//! command is then reported `Truncated` (its reply was in the hidden bytes); in the
//! command direction the next replies' event is read for the commands that were
//! seen, and the rest of it (replies to hidden commands) is skipped.
//!
//! `db.query.text` is the command and its key, the other arguments as `?`
//! (`SET k ?`); `db.operation.name` the command, upper-cased; errors (`-ERR ...`,
//! RESP3 `!`) give `db.response.status_code` (the error's first word) and the
//! message.

use std::collections::VecDeque;

use crate::model::{Completion, DbError};
/// The cursor the framer reads (shared by the database protocols).
pub use crate::protocols::db::Input;
use crate::protocols::db::{
    text, untracked, DbSession, DbStats, Finished, Origin, Segment, MAX_ERROR_MESSAGE,
};

#[cfg(test)]
mod tests;

/// Most bytes of one line kept (longer lines are read on, not kept).
pub const MAX_LINE_KEEP: usize = 512;
/// Longest line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// Most bytes of the command name and of the key kept.
pub const MAX_ARG_KEEP: usize = 256;
/// Deepest nesting of aggregates accepted.
const MAX_DEPTH: usize = 32;

const REPLY_TYPES: &[u8] = b"+-:$*_,#!=(%~|>";

/// Whether a command-direction payload starts like a Redis command: an array of
/// bulk strings (`*<n>\r\n$`).
pub fn looks_like_start(payload: &[u8]) -> bool {
    let Some(rest) = payload.strip_prefix(b"*") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    (1..=9).contains(&digits) && rest.get(digits..digits + 3).is_some_and(|s| s == b"\r\n$")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RState {
    Resync,
    Line,
    Bulk { remaining: u64 },
}

/// A complete top-level value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// Its type byte (`b'I'` for an inline command).
    pub typ: u8,
    /// The first two elements of a command (name, key), bounded.
    pub args: Vec<Vec<u8>>,
    /// Elements of a command.
    pub nargs: u64,
    /// The error text of `-` / `!` replies.
    pub error: Option<Vec<u8>>,
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespError {
    LostSync,
    Invalid,
}

/// Incremental RESP reader of one direction.
#[derive(Debug)]
pub struct Reader {
    commands: bool,
    state: RState,
    line: Vec<u8>,
    line_len: u64,
    /// Elements left in each open aggregate.
    stack: Vec<u64>,
    /// The value being read.
    value: Option<Value>,
    /// The bulk string being read is kept into `value.args` / `value.error`.
    keep_bulk: bool,
}

impl Reader {
    pub fn new(commands: bool, fresh: bool) -> Self {
        Reader {
            commands,
            state: if fresh { RState::Line } else { RState::Resync },
            line: Vec::new(),
            line_len: 0,
            stack: Vec::new(),
            value: None,
            keep_bulk: false,
        }
    }

    pub fn resync(&mut self) {
        self.state = RState::Resync;
        self.line = Vec::new();
        self.line_len = 0;
        self.stack = Vec::new();
        self.value = None;
    }

    pub fn buffered(&self) -> usize {
        self.line.capacity() + self.stack.capacity() * 8
    }

    fn plausible(&self, data: &[u8]) -> bool {
        if self.commands {
            looks_like_start(data) || data.first().is_some_and(u8::is_ascii_alphabetic)
        } else {
            data.first().is_some_and(|b| REPLY_TYPES.contains(b))
        }
    }

    /// The next complete top-level value, `None` when more bytes are needed.
    pub fn next(&mut self, input: &mut Input<'_>) -> Option<Result<Value, RespError>> {
        loop {
            match self.state {
                RState::Resync => {
                    if input.pos == 0 && self.plausible(input.data) {
                        self.state = RState::Line;
                        continue;
                    }
                    input.skip_rest();
                    return None;
                }
                RState::Line => {
                    let rest = input.rest();
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        self.take_line_part(rest);
                        input.pos = input.data.len();
                        if self.line_len > MAX_LINE {
                            return Some(Err(self.fail(input, RespError::Invalid)));
                        }
                        if input.unknown > 0 {
                            return Some(Err(self.fail(input, RespError::LostSync)));
                        }
                        return None;
                    };
                    self.take_line_part(rest.get(..nl).unwrap_or_default());
                    input.pos += nl + 1;
                    if self.line_len > MAX_LINE {
                        return Some(Err(self.fail(input, RespError::Invalid)));
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.line_len = 0;
                    match self.on_line(&line) {
                        Ok(Some(v)) => return Some(Ok(v)),
                        Ok(None) => {}
                        Err(e) => return Some(Err(self.fail(input, e))),
                    }
                }
                RState::Bulk { remaining } => {
                    let rest = input.rest();
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    if self.keep_bulk {
                        // The CRLF at the end is not kept.
                        let data_left = remaining.saturating_sub(2);
                        let m = usize::try_from(data_left).unwrap_or(usize::MAX).min(n);
                        self.keep(rest.get(..m).unwrap_or_default());
                    }
                    let mut remaining = remaining;
                    input.take_body(n, &mut remaining);
                    if remaining > 0 {
                        self.state = RState::Bulk { remaining };
                        return None;
                    }
                    self.state = RState::Line;
                    if let Some(v) = self.leaf() {
                        return Some(Ok(v));
                    }
                }
            }
        }
    }

    fn take_line_part(&mut self, part: &[u8]) {
        let room = MAX_LINE_KEEP.saturating_sub(self.line.len());
        self.line
            .extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
        self.line_len = self
            .line_len
            .saturating_add(u64::try_from(part.len()).unwrap_or(u64::MAX));
    }

    fn fail(&mut self, input: &mut Input<'_>, e: RespError) -> RespError {
        input.skip_rest();
        self.resync();
        e
    }

    /// Keeps bulk bytes into the value (bounded).
    fn keep(&mut self, bytes: &[u8]) {
        let Some(v) = self.value.as_mut() else { return };
        let target = if v.error.is_some() {
            v.error.as_mut()
        } else {
            v.args.last_mut()
        };
        if let Some(t) = target {
            let room = MAX_ARG_KEEP.saturating_sub(t.len());
            t.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        }
    }

    fn on_line(&mut self, line: &[u8]) -> Result<Option<Value>, RespError> {
        let top = self.stack.is_empty();
        let Some(&typ) = line.first() else {
            // An empty line between values (inline protocol allows it).
            return if top {
                Ok(None)
            } else {
                Err(RespError::Invalid)
            };
        };
        if top {
            if self.commands && typ != b'*' {
                return Ok(Some(inline(line)));
            }
            if !self.commands && !REPLY_TYPES.contains(&typ) {
                return Err(RespError::Invalid);
            }
            self.value = Some(Value {
                typ,
                args: Vec::new(),
                nargs: 0,
                error: None,
            });
        }
        // An element directly inside a command's array.
        let command_arg = self.commands && self.stack.len() == 1;
        if command_arg {
            if let Some(v) = self.value.as_mut() {
                v.nargs += 1;
            }
        }
        let arg = line.get(1..).unwrap_or_default();
        match typ {
            b'+' | b':' | b'_' | b',' | b'#' | b'(' => Ok(self.leaf()),
            b'-' => {
                if top {
                    if let Some(v) = self.value.as_mut() {
                        v.error = Some(
                            arg.get(..arg.len().min(MAX_ERROR_MESSAGE))
                                .unwrap_or_default()
                                .to_vec(),
                        );
                    }
                }
                Ok(self.leaf())
            }
            b'$' | b'!' | b'=' => {
                let len = number(arg)?;
                if len < 0 {
                    return Ok(self.leaf());
                }
                self.keep_bulk = false;
                if top && typ == b'!' {
                    if let Some(v) = self.value.as_mut() {
                        v.error = Some(Vec::new());
                    }
                    self.keep_bulk = true;
                } else if command_arg {
                    if let Some(v) = self.value.as_mut() {
                        if v.args.len() < 2 {
                            v.args.push(Vec::new());
                            self.keep_bulk = true;
                        }
                    }
                }
                let len = u64::try_from(len).map_err(|_| RespError::Invalid)?;
                self.state = RState::Bulk {
                    remaining: len.saturating_add(2),
                };
                Ok(None)
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                if self.commands && typ != b'*' {
                    return Err(RespError::Invalid);
                }
                let n = number(arg)?;
                let n = if matches!(typ, b'%' | b'|') {
                    n.saturating_mul(2)
                } else {
                    n
                };
                if n <= 0 {
                    return Ok(self.leaf());
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(RespError::Invalid);
                }
                self.stack
                    .push(u64::try_from(n).map_err(|_| RespError::Invalid)?);
                Ok(None)
            }
            _ => Err(RespError::Invalid),
        }
    }

    /// A value ended: closes the aggregates it completes; returns the top-level value
    /// when it is complete.
    fn leaf(&mut self) -> Option<Value> {
        while let Some(top) = self.stack.last_mut() {
            *top = top.saturating_sub(1);
            if *top > 0 {
                return None;
            }
            self.stack.pop();
        }
        self.value.take()
    }
}

fn number(s: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Invalid)
}

/// An inline command: words separated by spaces.
fn inline(line: &[u8]) -> Value {
    let mut words = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty());
    let mut args = Vec::new();
    let mut nargs = 0u64;
    for w in words.by_ref() {
        nargs += 1;
        if args.len() < 2 {
            args.push(
                w.get(..w.len().min(MAX_ARG_KEEP))
                    .unwrap_or_default()
                    .to_vec(),
            );
        }
    }
    Value {
        typ: b'I',
        args,
        nargs,
        error: None,
    }
}

#[derive(Debug)]
struct Pending {
    origin: Origin,
    operation: Option<String>,
    query_text: Option<String>,
}

/// One Redis connection: both directions and the pairing.
#[derive(Debug)]
pub struct RedisSession {
    commands: Reader,
    replies: Reader,
    pending: VecDeque<Pending>,
    untracked: u64,
    /// Uncaptured bytes hid commands: the next replies' event may answer them too.
    hidden_commands: bool,
    last_reply_ns: u64,
}

impl RedisSession {
    pub fn new(fresh: bool) -> Self {
        RedisSession {
            commands: Reader::new(true, fresh),
            replies: Reader::new(false, fresh),
            pending: VecDeque::new(),
            untracked: 0,
            hidden_commands: false,
            last_reply_ns: 0,
        }
    }
}

impl DbSession for RedisSession {
    fn system(&self) -> crate::model::DbSystem {
        crate::model::DbSystem::Redis
    }

    fn close(&mut self, mono_ns: u64, stats: &mut DbStats, out: &mut Vec<Finished>) {
        while let Some(p) = self.pending.pop_front() {
            finish(p, None, mono_ns, Completion::ConnectionClosed, stats, out);
        }
        self.untracked = 0;
    }

    fn lose(&mut self, mono_ns: u64, stats: &mut DbStats, out: &mut Vec<Finished>) {
        let end = self.last_reply_ns.max(mono_ns);
        while let Some(p) = self.pending.pop_front() {
            finish(p, None, end, Completion::Truncated, stats, out);
        }
        self.untracked = 0;
        self.commands.resync();
        self.replies.resync();
    }

    /// (pending commands, reader bytes) for bound checks.
    fn footprint(&self) -> (usize, usize, usize) {
        (
            self.pending.len(),
            0,
            self.commands.buffered().max(self.replies.buffered()),
        )
    }

    fn request(&mut self, seg: &Segment<'_>, stats: &mut DbStats, _out: &mut Vec<Finished>) {
        let mut input = Input::new(seg);
        while let Some(v) = self.commands.next(&mut input) {
            match v {
                Ok(v) => {
                    if v.nargs == 0 {
                        continue;
                    }
                    if untracked(&mut self.untracked, self.pending.len(), stats) {
                        continue;
                    }
                    let (operation, query_text) = describe(&v);
                    self.pending.push_back(Pending {
                        origin: seg.origin,
                        operation,
                        query_text,
                    });
                }
                Err(e) => {
                    count_error(e, stats);
                    self.hidden_commands = true;
                }
            }
        }
        stats.skipped_bytes += input.skipped;
    }

    fn response(&mut self, seg: &Segment<'_>, stats: &mut DbStats, out: &mut Vec<Finished>) {
        let end = seg.origin.mono_ns;
        self.last_reply_ns = end;
        let mut input = Input::new(seg);
        while let Some(v) = self.replies.next(&mut input) {
            match v {
                Ok(v) => {
                    if matches!(v.typ, b'>' | b'|') {
                        continue;
                    }
                    match self.pending.pop_front() {
                        Some(p) => finish(p, Some(&v), end, Completion::Complete, stats, out),
                        None if self.untracked > 0 => self.untracked -= 1,
                        None => stats.unpaired_responses += 1,
                    }
                    if self.pending.is_empty() && self.hidden_commands && self.untracked == 0 {
                        // The rest answers commands that were not seen.
                        input.skip_rest();
                        self.replies.resync();
                        break;
                    }
                }
                Err(e) => {
                    count_error(e, stats);
                    // The hidden bytes held the replies of every command sent so far.
                    while let Some(p) = self.pending.pop_front() {
                        finish(p, None, end, Completion::Truncated, stats, out);
                    }
                    self.untracked = 0;
                }
            }
        }
        self.hidden_commands = false;
        stats.skipped_bytes += input.skipped;
    }
}

fn count_error(e: RespError, stats: &mut DbStats) {
    match e {
        RespError::LostSync => stats.lost_sync += 1,
        RespError::Invalid => stats.parse_errors += 1,
    }
}

/// `db.operation.name` and `db.query.text` of a command.
fn describe(v: &Value) -> (Option<String>, Option<String>) {
    let Some(name) = v.args.first() else {
        return (None, None);
    };
    let op = text(name, MAX_ARG_KEEP).to_ascii_uppercase();
    let mut q = op.clone();
    if let Some(key) = v.args.get(1) {
        q.push(' ');
        q.push_str(&text(key, MAX_ARG_KEEP));
    }
    for _ in 2..v.nargs.min(64) {
        q.push_str(" ?");
    }
    if v.nargs > 64 {
        q.push_str(" ...");
    }
    (Some(op), Some(q))
}

fn finish(
    p: Pending,
    reply: Option<&Value>,
    end: u64,
    completion: Completion,
    stats: &mut DbStats,
    out: &mut Vec<Finished>,
) {
    stats.count(completion);
    let error = reply.and_then(|r| r.error.as_ref()).map(|e| {
        let message = text(e, MAX_ERROR_MESSAGE);
        let code = message
            .split_whitespace()
            .next()
            .filter(|w| w.bytes().all(|b| b.is_ascii_uppercase()))
            .map(str::to_string);
        DbError { code, message }
    });
    out.push(Finished {
        origin: p.origin,
        end_mono_ns: end.max(p.origin.mono_ns),
        operation: p.operation,
        collection: None,
        query_text: p.query_text,
        error,
        completion,
        namespace: None,
    });
}
