//! Test support shared by the database protocol tests (`mysql`, `postgres`, `redis`).

use std::fmt::Debug;

use crate::protocols::db::{DbSession, DbStats, Finished, Origin, Segment};
use crate::protocols::Task;

/// One segment to feed: whether the client sent it, and its bytes.
pub type Step = (bool, Vec<u8>);

/// Feeds `steps` in order, each whole as one segment at time index+1.
pub fn run(session: &mut impl DbSession, steps: &[Step]) -> (Vec<Finished>, DbStats) {
    let mut stats = DbStats::default();
    let mut out = vec![];
    for (i, (req, bytes)) in steps.iter().enumerate() {
        let origin = Origin {
            mono_ns: i as u64 + 1,
            task: Task::thread(1),
        };
        let seg = Segment::new(bytes, bytes.len() as u64, origin);
        session.feed(*req, &seg, &mut stats, &mut out);
    }
    (out, stats)
}

/// Asserts that cutting any one step in two, at every byte, finds what the whole
/// steps find (compared by `key`, which leaves out the times).
pub fn assert_split_anywhere_same<S: DbSession, K: PartialEq + Debug>(
    steps: &[Step],
    new: impl Fn() -> S,
    key: impl Fn(&Finished) -> K,
) {
    let keys = |found: Vec<Finished>| found.iter().map(&key).collect::<Vec<_>>();
    let want = keys(run(&mut new(), steps).0);
    for (i, (_, bytes)) in steps.iter().enumerate() {
        for cut in 1..bytes.len() {
            let mut split = steps.to_vec();
            let (req, b) = split.remove(i);
            split.insert(i, (req, b[cut..].to_vec()));
            split.insert(i, (req, b[..cut].to_vec()));
            let got = keys(run(&mut new(), &split).0);
            assert_eq!(got, want, "step {i} cut at {cut}");
        }
    }
}

/// What the SQL tests compare of a report: operation, collection, text, error code,
/// start and end.
pub type Row = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    u64,
    u64,
);

/// What the SQL tests compare of a report when times differ: operation, collection,
/// text and error code.
pub fn sql_key(
    f: &Finished,
) -> (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
) {
    (
        f.operation.clone(),
        f.collection.clone(),
        f.query_text.clone(),
        error_code(f),
    )
}

pub fn summary(f: &[Finished]) -> Vec<Row> {
    f.iter()
        .map(|f| {
            let (operation, collection, text, code) = sql_key(f);
            (
                operation,
                collection,
                text,
                code,
                f.origin.mono_ns,
                f.end_mono_ns,
            )
        })
        .collect()
}

pub fn error_code(f: &Finished) -> Option<String> {
    f.error.as_ref().and_then(|e| e.code.clone())
}

pub fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// A session fed by hand, with its counters and what it reported.
pub struct Feed<S> {
    pub session: S,
    pub stats: DbStats,
    pub out: Vec<Finished>,
}

impl<S: DbSession> Feed<S> {
    pub fn new(session: S) -> Self {
        Feed {
            session,
            stats: DbStats::default(),
            out: vec![],
        }
    }

    /// The client wrote `total` bytes at `mono_ns`, of which `captured` were captured.
    pub fn request(&mut self, captured: &[u8], total: u64, mono_ns: u64) {
        self.send(true, captured, total, mono_ns);
    }

    /// The server wrote `total` bytes at `mono_ns`, of which `captured` were captured.
    pub fn response(&mut self, captured: &[u8], total: u64, mono_ns: u64) {
        self.send(false, captured, total, mono_ns);
    }

    /// `captured` of `total` bytes the client (`request`) or the server wrote at `mono_ns`.
    pub fn send(&mut self, request: bool, captured: &[u8], total: u64, mono_ns: u64) {
        let seg = Segment::new(
            captured,
            total,
            Origin {
                mono_ns,
                task: Task::thread(1),
            },
        );
        self.session
            .feed(request, &seg, &mut self.stats, &mut self.out);
    }
}
