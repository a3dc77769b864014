//! What the hostile-traffic tests share: events of one connection for the stitcher,
//! and a heap meter, so that a test asserts the memory a hostile stream costs, not
//! only the sessions' own account of it (`Stitcher::footprint`).
//!
//! The meter is a counting global allocator: every allocation and free is counted
//! on the thread that makes it (each test runs on its own thread and allocates and
//! frees on it), so [`Meter`] sees the live heap bytes of the test's thread and
//! their peak.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tandem_processor::model::Transaction;
use tandem_processor::stitch::Stitcher;
use tandem_proto::v1::{ConnectionOpened, Data, Direction, Role, SocketAddress};
use tandem_proto::{Event, EventKind};

pub const PID: u32 = 4242;
pub const OFFSET: i64 = 1_700_000_000_000_000_000;
pub const IN: Direction = Direction::Ingress;
pub const OUT: Direction = Direction::Egress;

/// The system allocator, counting per thread.
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn record(delta: isize) {
    // `try_with`: a thread's locals may be gone while it exits.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn size(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY: every call is forwarded to `System` unchanged; the counting touches only
// thread-local integers (const-initialised, without destructors: no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            record(size(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            record(size(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        record(-size(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            record(size(new_size) - size(layout.size()));
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes of this thread since [`Meter::start`]: now, and at most.
pub struct Meter {
    start: isize,
}

impl Meter {
    pub fn start() -> Meter {
        let start = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(start));
        Meter { start }
    }

    /// Bytes allocated since the start and not freed.
    pub fn live(&self) -> usize {
        usize::try_from(LIVE.with(Cell::get) - self.start).unwrap_or(0)
    }

    /// The most bytes allocated at once since the start.
    pub fn peak(&self) -> usize {
        usize::try_from(PEAK.with(Cell::get) - self.start).unwrap_or(0)
    }
}

pub fn event(mono_ns: u64, kind: EventKind) -> Event {
    Event {
        seq: mono_ns,
        mono_ns,
        kind: Some(kind),
    }
}

fn v4(port: u32) -> Option<SocketAddress> {
    Some(SocketAddress {
        ip: vec![127, 0, 0, 1].into(),
        port,
    })
}

/// Connection `conn_id` of [`PID`] opened; `role` the process's.
pub fn opened(mono_ns: u64, conn_id: u64, role: Role) -> Event {
    event(
        mono_ns,
        EventKind::ConnectionOpened(ConnectionOpened {
            pid: PID,
            tid: PID,
            conn_id,
            local: v4(18080),
            peer: v4(51234),
            role: role.into(),
            ..Default::default()
        }),
    )
}

/// A syscall of `total` bytes on `conn_id`, of which `bytes` were captured.
pub fn data_cut(mono_ns: u64, conn_id: u64, dir: Direction, bytes: &[u8], total: u64) -> Event {
    event(
        mono_ns,
        EventKind::Data(Data {
            pid: PID,
            tid: PID + 1,
            conn_id,
            direction: dir.into(),
            total_len: total,
            payload: bytes.to_vec().into(),
            truncated: (bytes.len() as u64) < total,
            ..Default::default()
        }),
    )
}

pub fn data(mono_ns: u64, conn_id: u64, dir: Direction, bytes: &[u8]) -> Event {
    data_cut(mono_ns, conn_id, dir, bytes, bytes.len() as u64)
}

/// Feeds `events`, keeping no transaction (so that the meter sees the stitcher).
pub fn push_all(st: &mut Stitcher, events: impl IntoIterator<Item = Event>) -> usize {
    let mut out: Vec<Transaction> = Vec::new();
    let mut n = 0;
    for e in events {
        st.push(&e, OFFSET, &mut out);
        n += out.len();
        out.clear();
    }
    n
}
