//! The kernel event source (`--source ebpf`): eBPF programs on syscall, sock and
//! sched tracepoints capture the TCP traffic of the selected processes; this module
//! loads them, keeps the kernel's pid map in line with the selection, and turns
//! ring buffer records into API events. Design: `ebpf/README.md`.
//!
//! Flow: [`programs::Kernel`] loads and attaches; [`tracker::Tracker`] scans /proc,
//! programs the pid map and port bitmap, and converts records ([`convert`]); the
//! loop below polls the ring buffer every `--poll-interval-ms` (records are written
//! without wake-ups), follows selection changes and reports kernel-side losses.

pub mod btf;
pub mod convert;
pub mod pidns;
pub mod proc;
pub mod programs;
pub mod specs;
pub mod tls;
pub mod tracker;
pub mod uprobe_multi;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use clap::Args;
use futures::future::BoxFuture;
use futures::FutureExt;
use tandem_ebpf_common::{counter, Config, FdOffsets, DEFAULT_CAPTURE_BYTES, MAX_CAPTURE_BYTES};
use tandem_proto::v1::{AttachedProbe, LossLocation};
use tandem_proto::Selection;
use tandem_security::FeatureId;
use tracing::{debug, info, warn};

use super::{probe, EventSource, SourceContext};
use crate::clock::monotonic_ns;
use crate::selection::Matcher;
use programs::{Kernel, LoadOptions};
use tracker::Tracker;

/// Options of `--source ebpf`.
#[derive(Debug, Args, Clone)]
pub struct EbpfArgs {
    /// Payload bytes copied per read/write for --source ebpf (0-16384; for
    /// readv/writev/recvmsg/sendmsg only the first iovec is copied).
    #[arg(
        long,
        env = "TANDEM_CAPTURE_BYTES",
        default_value_t = DEFAULT_CAPTURE_BYTES,
        value_parser = clap::value_parser!(u32).range(0..=MAX_CAPTURE_BYTES as i64)
    )]
    pub capture_bytes: u32,

    /// Trace processes listening on (or connecting to) these TCP ports, OBI syntax
    /// (80,443,8000-8999); added to the subscribers' selections.
    #[arg(long = "open-port", env = "OTEL_EBPF_OPEN_PORT", value_name = "PORTS")]
    pub open_port: Option<String>,

    /// Trace processes whose executable path matches this glob (e.g. */nginx);
    /// added to the subscribers' selections. Repeatable.
    #[arg(long = "exe", env = "OTEL_EBPF_AUTO_TARGET_EXE", value_name = "GLOB")]
    pub exe: Vec<String>,

    /// Trace these pids (and their forked children); added to the subscribers'
    /// selections. Repeat or comma-separate.
    #[arg(long = "pid", value_delimiter = ',', value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace processes of these containers (64-hex id or a prefix of 12+ digits);
    /// added to the subscribers' selections. Repeat or comma-separate.
    #[arg(long = "container-id", value_delimiter = ',', value_name = "ID")]
    pub container_ids: Vec<String>,

    /// Size of the kernel ring buffer in KiB (a power of two, at least 4). Small
    /// on purpose: the kernel writes each record into the server's CPU cache, and
    /// a ring that fits there costs the server far less than a large one (see
    /// docs/benchmarks.md). The kernel wakes the loader up once it is a quarter
    /// full; raise it if a loader that cannot run for a few milliseconds reports
    /// kernel ring buffer losses.
    #[arg(long, env = "TANDEM_RING_BUFFER_KIB", default_value_t = 512)]
    pub ring_buffer_kib: u32,

    /// How often the ring buffer is drained, in milliseconds, when the kernel did
    /// not ask earlier (it does once the ring buffer is a quarter full).
    #[arg(long, env = "TANDEM_POLL_INTERVAL_MS", default_value_t = 10)]
    pub poll_interval_ms: u64,

    /// Capacity of the kernel's pid map (processes traced at once).
    #[arg(long, env = "TANDEM_MAX_TRACED_PROCESSES", default_value_t = 65_536)]
    pub max_traced_processes: u32,

    /// Capture the plaintext of OpenSSL (libssl) TLS connections with uprobes
    /// (uprobe_multi links: CAP_BPF + CAP_PERFMON, Linux 6.6+).
    #[arg(
        long,
        env = "TANDEM_TLS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub tls: bool,

    /// Which kernel hooks capture socket data: `sock` (the `sock_recv_length` /
    /// `sock_send_length` BTF tracepoints, Linux 6.3+), `syscalls` (the socket
    /// syscalls' tracepoints, any kernel: no sendfile/splice, no Go goroutines or Go
    /// crypto/tls), or `auto` (`sock` where the kernel has them, else `syscalls`).
    #[arg(long, env = "TANDEM_DATA_PATH", value_enum, default_value_t = DataPath::Auto)]
    pub data_path: DataPath,
}

/// See [`EbpfArgs::data_path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPath {
    Auto,
    Sock,
    Syscalls,
}

/// Attaches the data path `wanted` asks for; returns its name and its probes.
fn attach_data_path(kernel: &mut Kernel, wanted: DataPath) -> (&'static str, Vec<AttachedProbe>) {
    let syscalls = |kernel: &mut Kernel| match fd_offsets() {
        Ok(fd_offsets) => {
            let config = Config {
                fd_offsets,
                ..kernel.config()
            };
            if let Err(e) = kernel.set_config(config) {
                warn!("{e:#}");
            }
            kernel.attach_specs(programs::syscall_data_specs())
        }
        Err(e) => {
            let e = format!("the syscall data path needs these kernel struct offsets: {e}");
            programs::syscall_data_specs()
                .iter()
                .map(|s| {
                    probe(
                        &format!("{}/{}", s.category, s.tracepoint),
                        "tracepoint",
                        Err(e.clone()),
                    )
                })
                .collect()
        }
    };
    match wanted {
        DataPath::Sock => ("sock", kernel.attach_specs(programs::sock_data_specs())),
        DataPath::Syscalls => ("syscalls", syscalls(kernel)),
        DataPath::Auto => {
            let sock = kernel.attach_specs(programs::sock_data_specs());
            if sock.iter().all(|p| p.attached) {
                return ("sock", sock);
            }
            let why = sock
                .iter()
                .find(|p| !p.attached)
                .map(|p| p.error.clone())
                .unwrap_or_default();
            warn!(
                "the sock_recv_length/sock_send_length tracepoints are not usable ({why}): \
                 socket data is captured on the syscall tracepoints instead (Linux before \
                 6.3; no sendfile/splice, no Go goroutines or Go crypto/tls)"
            );
            ("syscalls", syscalls(kernel))
        }
    }
}

impl EbpfArgs {
    /// The selection given by the loader flags, `None` when no flag is set.
    pub fn selection(&self) -> anyhow::Result<Option<Selection>> {
        let ports = match &self.open_port {
            Some(text) => tandem_proto::selection::parse_port_ranges(text)
                .map_err(|e| anyhow::anyhow!("--open-port / OTEL_EBPF_OPEN_PORT: {e}"))?,
            None => Vec::new(),
        };
        let selection = Selection {
            ports,
            exe_globs: self.exe.iter().filter(|g| !g.is_empty()).cloned().collect(),
            pids: self.pids.clone(),
            container_ids: self
                .container_ids
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
        };
        if selection.is_empty() {
            return Ok(None);
        }
        Matcher::new(selection.clone())
            .map_err(|e| anyhow::anyhow!("loader selection flags: {e}"))?;
        Ok(Some(selection))
    }
}

/// The kernel source.
pub struct EbpfSource {
    args: EbpfArgs,
    flags: Option<Selection>,
}

impl EbpfSource {
    /// Validates the options; nothing touches the kernel before [`EventSource::run`].
    pub fn new(args: &EbpfArgs) -> anyhow::Result<Self> {
        let kib = args.ring_buffer_kib;
        if kib < 4 || !kib.is_power_of_two() || kib > 1024 * 1024 {
            anyhow::bail!(
                "--ring-buffer-kib must be a power of two between 4 and 1048576, got {kib}"
            );
        }
        if args.poll_interval_ms == 0 || args.poll_interval_ms > 1000 {
            anyhow::bail!(
                "--poll-interval-ms must be 1-1000, got {}",
                args.poll_interval_ms
            );
        }
        if args.max_traced_processes == 0 {
            anyhow::bail!("--max-traced-processes must be at least 1");
        }
        Ok(EbpfSource {
            flags: args.selection()?,
            args: args.clone(),
        })
    }
}

impl EventSource for EbpfSource {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, anyhow::Result<()>> {
        async move {
            tokio::task::spawn_blocking(move || self.run_blocking(ctx))
                .await
                .map_err(|e| anyhow::anyhow!("the ebpf source thread failed: {e}"))?
        }
        .boxed()
    }
}

/// The kernel wakes the loader up early once the ring buffer is this fraction
/// full, or holds [`WAKEUP_MAX_BYTES`] (`Config::wakeup_bytes`); otherwise it is
/// drained every poll interval.
const WAKEUP_FRACTION: u32 = 4;

/// Drained by then, records are still in the traced CPU's cache when the kernel
/// writes the next ones (see docs/benchmarks.md); the rest of a larger ring is
/// slack for a loader that cannot run at once.
const WAKEUP_MAX_BYTES: u32 = 128 * 1024;

/// Most records handled between two publishes.
const MAX_RECORDS_PER_BATCH: usize = 8192;

impl EbpfSource {
    fn run_blocking(self, mut ctx: SourceContext) -> anyhow::Result<()> {
        report_capabilities();
        if let Err(e) = programs::ensure_tracefs() {
            warn!(
                "{e}; the classic tracepoints (process lifecycle, TCP state) cannot be \
                 attached, the data path's BTF tracepoints can"
            );
        }
        let hub = ctx.sink.clone();
        let (mut tracker, mut probes) = start(&self.args, self.flags.clone())?;
        let total = probes.len();
        let attached = probes.iter().filter(|p| p.attached).count();
        hub.set_probes(probes.clone());
        let subscribers = ctx.selection.borrow_and_update().clone();
        let events = tracker.apply_selection(subscribers);
        if !wait_for_room(&ctx, events.len()) {
            return Ok(());
        }
        hub.publish(events);
        probes.extend(tracker.tls().take_probes());
        hub.set_probes(probes.clone());
        // Everything is attached: from now on only what the used features keep at run
        // time remains (/proc reads, map updates through fds already held, and with
        // TLS the uprobe_multi links for libraries found later; see
        // tandem_security::FEATURES).
        ctx.posture.drop_after_attach();
        info!(
            probes_attached = attached,
            probes_total = total,
            traced_processes = tracker.traced(),
            tls_libraries = tracker.tls().attached(),
            tls_analysis_errors = tracker.tls().analysis_errors(),
            capture_bytes = self.args.capture_bytes,
            "ebpf source ready"
        );

        let poll = Duration::from_millis(self.args.poll_interval_ms);
        let mut lost_reported = tracker.kernel().ring_lost();
        let mut pids_full_reported = tracker.kernel().counter(counter::PIDS_FULL);
        let mut uncaptured_reported = tracker.kernel().counter(counter::UNCAPTURED_SYSCALL);
        let mut last_check = Instant::now();
        let mut events = Vec::new();
        loop {
            if ctx.shutdown.is_cancelled() {
                break;
            }
            if ctx.selection.has_changed().unwrap_or(false) {
                let subscribers = ctx.selection.borrow_and_update().clone();
                events.extend(tracker.apply_selection(subscribers));
            }
            let n = tracker.drain(&mut events, MAX_RECORDS_PER_BATCH);
            if !events.is_empty() {
                if !wait_for_room(&ctx, events.len()) {
                    break;
                }
                // Drained, not replaced: the batch's buffer is reused.
                hub.publish(events.drain(..));
            }
            let tls_probes = tracker.tls().take_probes();
            if !tls_probes.is_empty() {
                probes.extend(tls_probes);
                hub.set_probes(probes.clone());
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                let lost = tracker.kernel().ring_lost();
                if lost > lost_reported {
                    hub.report_source_loss(
                        monotonic_ns(),
                        lost - lost_reported,
                        LossLocation::KernelRingBuffer,
                        "the kernel ring buffer was full: the loader did not drain it fast \
                         enough (raise --ring-buffer-kib or lower --capture-bytes)",
                    );
                    lost_reported = lost;
                }
                let full = tracker.kernel().counter(counter::PIDS_FULL);
                if full > pids_full_reported {
                    warn!(
                        children = full - pids_full_reported,
                        "the kernel pid map is full: forked children of traced processes are \
                         not traced (raise --max-traced-processes)"
                    );
                    pids_full_reported = full;
                }
                let uncaptured = tracker.kernel().counter(counter::UNCAPTURED_SYSCALL);
                if uncaptured > uncaptured_reported {
                    info!(
                        operations = uncaptured - uncaptured_reported,
                        total = uncaptured,
                        "TCP socket reads/writes of traced processes went through syscalls \
                         whose bytes tandem does not capture (io_uring, \
                         sendmmsg/recvmmsg)"
                    );
                    uncaptured_reported = uncaptured;
                }
            }
            if n < MAX_RECORDS_PER_BATCH {
                tracker.kernel().wait_ring(poll);
            }
        }
        info!(
            records = tracker.stats.records,
            bad_records = tracker.stats.bad_records,
            unresolved_connections = tracker.stats.unresolved_connections,
            "ebpf source stopped"
        );
        Ok(())
    }
}

/// Waits, when recording (hub backpressure), until the subscribers' queues have room
/// for `n` events; returns at once when serving. Meanwhile the ring buffer is not
/// drained: traffic faster than the file writer makes the kernel drop records, which
/// are counted and reported as a kernel ring buffer loss. False when shutdown fired.
fn wait_for_room(ctx: &SourceContext, n: usize) -> bool {
    if !ctx.sink.backpressure() {
        return true;
    }
    tokio::runtime::Handle::current().block_on(async {
        tokio::select! {
            _ = ctx.sink.wait_for_room(n) => true,
            _ = ctx.shutdown.cancelled() => false,
        }
    })
}

/// Loads and attaches; fails when nothing could be attached.
pub fn start(
    args: &EbpfArgs,
    flags: Option<Selection>,
) -> anyhow::Result<(Tracker, Vec<AttachedProbe>)> {
    let (pidns_dev, pidns_ino) = match pidns::current() {
        Ok(ns) if ns.is_initial() => {
            info!("pid namespace: initial");
            (0, 0)
        }
        Ok(ns) => {
            info!(
                pidns_ino = ns.ino,
                "pid namespace {}: pids as seen in it (processes outside it are not traced)",
                ns.ino
            );
            (ns.dev, ns.ino)
        }
        Err(e) => {
            warn!("cannot read /proc/self/ns/pid ({e}): assuming the initial pid namespace");
            (0, 0)
        }
    };
    let (sk_protocol_offset, task_exit_code_offset) = kernel_offsets();
    let config = Config {
        capture_bytes: args.capture_bytes,
        flags: 0,
        conn_id_base: monotonic_ns(),
        loader_pid: std::process::id(),
        _pad: 0,
        pidns_dev,
        pidns_ino,
        sk_protocol_offset,
        task_exit_code_offset,
        wakeup_bytes: (args.ring_buffer_kib * 1024 / WAKEUP_FRACTION).min(WAKEUP_MAX_BYTES),
        _pad2: 0,
        fd_offsets: FdOffsets::default(),
    };
    let mut kernel = Kernel::load(LoadOptions {
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
        max_processes: args.max_traced_processes,
        config,
    })?;
    let mut probes = kernel.attach();
    let (data_path, data_probes) = attach_data_path(&mut kernel, args.data_path);
    info!(data_path, "socket data path: {data_path} tracepoints");
    probes.extend(data_probes);
    let total = probes.len();
    let attached = probes.iter().filter(|p| p.attached).count();
    if attached == 0 {
        let first = probes.first().map(|p| p.error.clone()).unwrap_or_default();
        anyhow::bail!("no eBPF probe could be attached (first error: {first})");
    }
    if attached < total {
        warn!(
            attached,
            total, "some eBPF probes are not attached: capture is partial (see Info.probes)"
        );
    }
    let mut tracker = Tracker::new(kernel, proc::ProcFs::default(), flags);
    if args.tls {
        tracker.tls().attach_host();
    } else {
        tracker.tls().disable("disabled by --tls=false");
    }
    probes.extend(tracker.tls().take_probes());
    Ok((tracker, probes))
}

/// The offsets the syscall data path follows from a descriptor to its socket
/// (`Config::fd_offsets`), from the kernel's BTF; all 0 (that path unavailable)
/// when one is missing.
pub fn fd_offsets() -> Result<FdOffsets, String> {
    let s = btf::Structs::vmlinux()?;
    let o = FdOffsets {
        task_files: s.member("task_struct", "files")?,
        files_fdt: s.member("files_struct", "fdt")?,
        fdt_fd: s.member("fdtable", "fd")?,
        file_inode: s.member("file", "f_inode")?,
        file_private_data: s.member("file", "private_data")?,
        inode_mode: s.int_member("inode", "i_mode", 2)?,
        socket_sk: s.member("socket", "sk")?,
        fdt_max_fds: s.int_member("fdtable", "max_fds", 4)?,
    };
    // A zero task_files means "unknown" to the programs; it never is one.
    if o.task_files == 0 {
        return Err("task_struct.files at offset 0".into());
    }
    Ok(o)
}

/// Offsets of `struct sock`'s `sk_protocol` and `struct task_struct`'s
/// `exit_code` in this kernel, from its BTF (0 for one that cannot be found, with
/// a warning saying what that costs).
fn kernel_offsets() -> (u32, u32) {
    let structs = match btf::Structs::vmlinux() {
        Ok(s) => s,
        Err(e) => {
            warn!(
                "{e}: sockets established before the loader started are not recognised as \
                 TCP, and exit codes are reported as -1"
            );
            return (0, 0);
        }
    };
    let protocol = structs
        .int_member("sock_common", "skc_family", 2)
        .and_then(|family| {
            if family == 16 {
                structs.int_member("sock", "sk_protocol", 2)
            } else {
                Err(format!(
                    "sock_common.skc_family is at offset {family}, the programs read 16"
                ))
            }
        })
        .unwrap_or_else(|e| {
            warn!(
                "kernel BTF: {e}: sockets established before the loader started are not \
                 recognised as TCP"
            );
            0
        });
    let exit = structs
        .int_member("task_struct", "exit_code", 4)
        .unwrap_or_else(|e| {
            warn!("kernel BTF: {e}: exit codes are reported as -1");
            0
        });
    debug!(
        sk_protocol = protocol,
        task_exit_code = exit,
        "struct offsets from the kernel's BTF"
    );
    (protocol, exit)
}

/// The features of the capability model this source uses with these options (every
/// one; `tls_uprobes` only with `--tls=true`).
pub fn used_features(args: &EbpfArgs) -> Vec<FeatureId> {
    FeatureId::ALL
        .into_iter()
        .filter(|f| args.tls || *f != FeatureId::TlsUprobes)
        .collect()
}

/// Logs, for a non-root loader, each feature whose capabilities are missing.
fn report_capabilities() {
    let held = match tandem_security::effective_capabilities() {
        Ok(h) => h,
        Err(e) => {
            warn!("cannot read this process's capabilities: {e}");
            return;
        }
    };
    for feature in tandem_security::FEATURES {
        let used = FeatureId::ALL.iter().any(|f| f.name() == feature.id);
        let effect = if used {
            "will not work fully"
        } else {
            "is unavailable (this loader does not use it yet)"
        };
        for cap in tandem_security::missing(feature, &held) {
            warn!(
                feature = feature.id,
                capability = %cap,
                "missing {cap} (used to {}): {} {effect}",
                cap.purpose(),
                feature.description
            );
        }
    }
}
