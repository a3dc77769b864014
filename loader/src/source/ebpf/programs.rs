//! Loading the eBPF object, checking tracepoint formats, attaching, and the maps
//! user space writes (pid map, port bitmap, config) and reads (ring buffer,
//! counters).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tandem_ebpf_common::tp::Field;
use tandem_ebpf_common::{counter, Config};
use tandem_proto::v1::AttachedProbe;
use tracing::{debug, warn};

use crate::source::probe;

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tandem-ebpf"));

/// Where tracefs is expected.
pub const TRACEFS: &str = "/sys/kernel/tracing";

pub use super::specs::{
    fork_child_specs, probe_specs, sock_data_specs, syscall_data_specs, ProbeSpec,
};

/// Parses a tracefs `format` file into (name, offset, size) per field.
pub fn parse_format(text: &str) -> Vec<(String, usize, usize)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            // The name is the last word of the declaration, minus any array suffix.
            let name = decl.split_whitespace().last()?;
            let name = name.split('[').next()?.to_owned();
            let num = |key: &str| -> Option<usize> {
                line.split(';')
                    .map(str::trim)
                    .find_map(|p| p.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
            };
            Some((name, num("offset:")?, num("size:")?))
        })
        .collect()
}

/// Checks that the tracepoint's format has `fields` where the programs read them.
pub fn check_format(text: &str, fields: &[Field]) -> Result<(), String> {
    let actual = parse_format(text);
    for &(name, offset, size) in fields {
        match actual.iter().find(|(n, _, _)| n == name) {
            Some((_, o, s)) if *o == offset && *s == size => {}
            Some((_, o, s)) => {
                return Err(format!(
                    "field {name} is at offset {o} size {s}, the program reads offset {offset} size {size}"
                ))
            }
            None => return Err(format!("field {name} is missing from the format")),
        }
    }
    Ok(())
}

/// The loaded object and the maps user space uses.
pub struct Kernel {
    ebpf: Ebpf,
    pub pids: BpfHashMap<MapData, u32, u32>,
    config: Array<MapData, Config>,
    ports: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    pub ring: RingBuf<MapData>,
    ports_written: Vec<u64>,
    config_written: Config,
    /// The TLS uprobe programs (`ssl_enter`, `ssl_return`), loaded for uprobe_multi
    /// links, or why not; taken by [`Self::take_tls_programs`].
    tls_programs: Option<Result<(OwnedFd, OwnedFd), String>>,
    /// The Go programs (`go_tls`, `go_goroutines`), or why not;
    /// [`Self::take_go_program`].
    go_program: Option<GoPrograms>,
    /// The kernel's BTF, read when the first BTF tracepoint is loaded.
    btf: Option<Result<aya::Btf, String>>,
    /// Edge-triggered epoll on the ring buffer: ready when a record was submitted
    /// with a wake-up (the ring holds `Config::wakeup_bytes`). `None`: plain sleeps.
    ring_epoll: Option<Epoll>,
}

/// The file descriptor of a map aya created.
fn map_fd(map: &aya::maps::Map) -> Option<RawFd> {
    use aya::maps::Map as M;
    let data = match map {
        M::Array(d)
        | M::HashMap(d)
        | M::LruHashMap(d)
        | M::PerCpuArray(d)
        | M::PerCpuHashMap(d)
        | M::PerCpuLruHashMap(d)
        | M::RingBuf(d)
        | M::PerfEventArray(d)
        | M::Queue(d)
        | M::Stack(d)
        | M::Unsupported(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// Loads the TLS programs of the object for uprobe_multi links (see
/// `uprobe_multi.rs`), sharing the maps aya created.
/// The third and fourth are the Go programs (`go_tls`, `go_goroutines`), loaded on
/// their own: their failure leaves OpenSSL capture working.
type TlsPrograms = (Result<(OwnedFd, OwnedFd), String>, GoPrograms);

/// The Go programs (`go_tls`, `go_goroutines`), each loaded or why not.
pub type GoPrograms = (Result<OwnedFd, String>, Result<OwnedFd, String>);

fn load_tls_programs(ebpf: &Ebpf) -> TlsPrograms {
    let maps: std::collections::HashMap<String, RawFd> = ebpf
        .maps()
        .filter_map(|(name, map)| map_fd(map).map(|fd| (name.to_owned(), fd)))
        .collect();
    let names = [
        super::tls::ENTRY_PROGRAM,
        super::tls::RETURN_PROGRAM,
        super::tls::GO_PROGRAM,
        super::tls::GOROUTINES_PROGRAM,
    ];
    let relocated = match super::uprobe_multi::relocate(OBJECT, &maps, &names) {
        Ok(r) => r,
        Err(e) => return (Err(e.clone()), (Err(e.clone()), Err(e))),
    };
    let ssl = relocated
        .load(names[0])
        .and_then(|entry| Ok((entry, relocated.load(names[1])?)));
    (ssl, (relocated.load(names[2]), relocated.load(names[3])))
}

/// Sizes fixed at load time.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub ring_buffer_bytes: u32,
    pub max_processes: u32,
    pub config: Config,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> anyhow::Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow::anyhow!("the eBPF object has no map {name}"))?;
    T::try_from(map).map_err(|e| anyhow::anyhow!("map {name}: {}", chain(&e)))
}

impl Kernel {
    /// Loads the object (creating its maps). Programs are loaded by [`Self::attach`].
    pub fn load(opts: LoadOptions) -> anyhow::Result<Kernel> {
        if OBJECT.is_empty() {
            anyhow::bail!(
                "this tandem-loader was built with AYA_BUILD_SKIP=1 and contains no eBPF \
                 programs; rebuild it without AYA_BUILD_SKIP (prerequisites: bash scripts/setup.sh)"
            );
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .map_max_entries("PIDS", opts.max_processes)
            .load(OBJECT)
            .map_err(|e| {
                let hint = if is_eperm(&e) {
                    " (creating BPF maps needs CAP_BPF, or root)"
                } else {
                    ""
                };
                anyhow::anyhow!("cannot load the eBPF object: {}{hint}", chain(&e))
            })?;
        let (ssl_programs, go_program) = load_tls_programs(&ebpf);
        let (tls_programs, go_program) = (Some(ssl_programs), Some(go_program));
        let pids = take(&mut ebpf, "PIDS")?;
        let mut config: Array<MapData, Config> = take(&mut ebpf, "CONFIG")?;
        let ports = take(&mut ebpf, "PORTS")?;
        let counters = take(&mut ebpf, "COUNTERS")?;
        let ring = take(&mut ebpf, "EVENTS")?;
        config
            .set(0, opts.config, 0)
            .map_err(|e| anyhow::anyhow!("cannot write the config map: {}", chain(&e)))?;
        let ring_epoll = ring_epoll(&ring)
            .map_err(|e| {
                warn!(
                    "cannot poll the ring buffer ({e}): it is drained every \
                     --poll-interval-ms only"
                )
            })
            .ok();
        Ok(Kernel {
            ebpf,
            pids,
            config,
            ports,
            counters,
            ring,
            ports_written: vec![0; 1024],
            config_written: opts.config,
            tls_programs,
            go_program,
            btf: None,
            ring_epoll,
        })
    }

    /// The aya object (tests: loading a program the way aya does).
    #[cfg(test)]
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The loaded TLS programs (entry, return), or why they could not be loaded.
    pub fn take_tls_programs(&mut self) -> Result<(OwnedFd, OwnedFd), String> {
        self.tls_programs
            .take()
            .unwrap_or_else(|| Err("the TLS programs were taken already".into()))
    }

    /// The loaded Go programs (crypto/tls, goroutines), or why they could not be
    /// loaded.
    pub fn take_go_program(&mut self) -> GoPrograms {
        self.go_program.take().unwrap_or_else(|| {
            let taken = || Err("the Go programs were taken already".to_string());
            (taken(), taken())
        })
    }

    /// Loads and attaches every probe it can; returns the status of each.
    pub fn attach(&mut self) -> Vec<AttachedProbe> {
        let mut specs = probe_specs();
        if self.config_written.pidns_ino != 0 {
            specs.extend(fork_child_specs());
        }
        self.attach_specs(specs)
    }

    /// Loads and attaches `specs`; returns the status of each.
    pub fn attach_specs(&mut self, specs: Vec<ProbeSpec>) -> Vec<AttachedProbe> {
        let tracefs = Path::new(TRACEFS);
        let mut loaded: BTreeSet<&'static str> = BTreeSet::new();
        let mut failed_load: std::collections::HashMap<&'static str, String> =
            std::collections::HashMap::new();
        let mut statuses = Vec::new();
        for spec in specs {
            let name = format!("{}/{}", spec.category, spec.tracepoint);
            let result = self.attach_one(&spec, tracefs, &mut loaded, &mut failed_load);
            if let Err(e) = &result {
                warn!(probe = %name, feature = spec.feature.name(), "probe not attached: {e}");
            } else {
                debug!(probe = %name, program = spec.program, "probe attached");
            }
            let kind = if spec.btf {
                "btf_tracepoint"
            } else {
                "tracepoint"
            };
            statuses.push(probe(&name, kind, result));
        }
        statuses
    }

    fn attach_one(
        &mut self,
        spec: &ProbeSpec,
        tracefs: &Path,
        loaded: &mut BTreeSet<&'static str>,
        failed_load: &mut std::collections::HashMap<&'static str, String>,
    ) -> Result<(), String> {
        if let Some(e) = failed_load.get(spec.program) {
            return Err(e.clone());
        }
        if spec.btf {
            return self.attach_btf(spec, failed_load);
        }
        let format_path = tracefs
            .join("events")
            .join(spec.category)
            .join(spec.tracepoint)
            .join("format");
        let text = fs::read_to_string(&format_path).map_err(|e| {
            format!(
                "cannot read {}: {e}{}",
                format_path.display(),
                tracefs_hint(&e)
            )
        })?;
        check_format(&text, spec.fields).map_err(|e| {
            format!(
                "tracepoint {}/{} changed on this kernel: {e}",
                spec.category, spec.tracepoint
            )
        })?;
        let program: &mut TracePoint = program_of(&mut self.ebpf, spec.program)?;
        if !loaded.contains(spec.program) {
            if let Err(e) = program.load() {
                let msg = format!("cannot load program {}: {}", spec.program, chain(&e));
                failed_load.insert(spec.program, msg.clone());
                return Err(msg);
            }
            loaded.insert(spec.program);
        }
        program
            .attach(spec.category, spec.tracepoint)
            .map(|_| ())
            .map_err(|e| attach_error(spec, &e))
    }

    /// Loads a BTF tracepoint program against the kernel's BTF and attaches it.
    fn attach_btf(
        &mut self,
        spec: &ProbeSpec,
        failed_load: &mut std::collections::HashMap<&'static str, String>,
    ) -> Result<(), String> {
        let btf = self
            .btf
            .get_or_insert_with(|| {
                aya::Btf::from_sys_fs().map_err(|e| {
                    format!(
                        "cannot read the kernel's BTF ({}): {}",
                        super::btf::VMLINUX,
                        chain(&e)
                    )
                })
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let program: &mut BtfTracePoint = program_of(&mut self.ebpf, spec.program)?;
        if let Err(e) = program.load(spec.tracepoint, btf) {
            let msg = format!(
                "cannot load program {} for BTF tracepoint {}: {}",
                spec.program,
                spec.tracepoint,
                chain(&e)
            );
            failed_load.insert(spec.program, msg.clone());
            return Err(msg);
        }
        program
            .attach()
            .map(|_| ())
            .map_err(|e| attach_error(spec, &e))
    }

    /// Writes the run-time config if it changed.
    pub fn set_config(&mut self, config: Config) -> anyhow::Result<()> {
        if config != self.config_written {
            self.config
                .set(0, config, 0)
                .map_err(|e| anyhow::anyhow!("cannot write the config map: {}", chain(&e)))?;
            self.config_written = config;
        }
        Ok(())
    }

    pub fn config(&self) -> Config {
        self.config_written
    }

    /// Writes the port bitmap (only the words that changed).
    pub fn set_ports(&mut self, bitmap: &[u64]) -> anyhow::Result<()> {
        for (i, (&new, old)) in bitmap.iter().zip(self.ports_written.iter_mut()).enumerate() {
            if new != *old {
                self.ports
                    .set(i as u32, new, 0)
                    .map_err(|e| anyhow::anyhow!("cannot write the port map: {}", chain(&e)))?;
                *old = new;
            }
        }
        Ok(())
    }

    /// Adds a process to the kernel's pid map.
    pub fn trace_pid(&mut self, pid: u32, reason: u32) -> Result<(), String> {
        self.pids.insert(pid, reason, 0).map_err(|e| chain(&e))
    }

    /// Removes a process from the kernel's pid map (absent is fine).
    pub fn untrace_pid(&mut self, pid: u32) {
        let _ = self.pids.remove(&pid);
    }

    /// Sum over CPUs of a counter.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Waits up to `timeout` for the kernel to ask for a drain (a record submitted
    /// while the ring buffer held `Config::wakeup_bytes` or more); returns at once
    /// when it asked since the previous wait.
    pub fn wait_ring(&self, timeout: Duration) {
        match &self.ring_epoll {
            Some(epoll) => {
                let mut events = [EpollEvent::empty()];
                let timeout = EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::MAX);
                if let Err(e) = epoll.wait(&mut events, timeout) {
                    if e != nix::errno::Errno::EINTR {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            None => std::thread::sleep(timeout),
        }
    }

    /// Records the kernel dropped because the ring buffer was full.
    pub fn ring_lost(&self) -> u64 {
        self.counter(counter::RINGBUF_LOST)
    }
}

/// The object's program `name` as the program type `T` (tracepoint, BTF
/// tracepoint).
fn program_of<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| chain(&e))
}

/// An edge-triggered epoll instance watching the ring buffer.
fn ring_epoll(ring: &RingBuf<MapData>) -> nix::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        ring.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
    )?;
    Ok(epoll)
}

fn attach_error(spec: &ProbeSpec, e: &dyn std::error::Error) -> String {
    let s = chain(e);
    let hint = if s.contains("Permission denied") || s.contains("EPERM") {
        " (attaching tracepoints needs CAP_PERFMON and CAP_BPF, or root)"
    } else {
        ""
    };
    format!("cannot attach {}: {s}{hint}", spec.program)
}

fn is_eperm(e: &dyn std::error::Error) -> bool {
    let s = chain(e);
    s.contains("Operation not permitted") || s.contains("EPERM")
}

fn tracefs_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " (tracefs is mode 0700: a non-root loader needs CAP_DAC_READ_SEARCH)"
        }
        io::ErrorKind::NotFound => {
            " (is tracefs mounted? as root: mount -t tracefs tracefs /sys/kernel/tracing)"
        }
        _ => "",
    }
}

/// The port bitmap the kernel checks (`PORTS`): bit `p & 63` of word `p >> 6`.
pub fn port_bitmap(ranges: &[tandem_proto::v1::PortRange]) -> Vec<u64> {
    let mut words = vec![0u64; 1024];
    for r in ranges {
        let start = r.start.clamp(1, 65535);
        let end = r.end.clamp(1, 65535);
        for p in start..=end {
            words[(p >> 6) as usize] |= 1u64 << (p & 63);
        }
    }
    words
}

/// Makes sure tracefs is mounted at [`TRACEFS`]: mounts it when running as root,
/// otherwise says what to do.
pub fn ensure_tracefs() -> Result<(), String> {
    let path = Path::new(TRACEFS);
    if path.join("events").is_dir() {
        return Ok(());
    }
    // As a non-root user without CAP_DAC_READ_SEARCH the 0700 directory looks empty.
    match fs::read_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(format!(
                "cannot open {TRACEFS}: {e} (tracefs is mode 0700: a non-root loader needs \
                 CAP_DAC_READ_SEARCH)"
            ))
        }
        Ok(mut d) => {
            if d.next().is_some() {
                return Ok(());
            }
        }
        Err(_) => {}
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "tracefs is not mounted at {TRACEFS}; ask root to mount it: \
             mount -t tracefs tracefs {TRACEFS}"
        ));
    }
    nix::mount::mount(
        Some("tracefs"),
        path,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("tracefs is not mounted at {TRACEFS} and mounting it failed: {e}"))?;
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::selection::parse_port_ranges;

    const FORMAT: &str = "name: inet_sock_set_state
ID: 1500
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"
";

    #[test]
    fn format_files_are_parsed_and_checked() {
        let fields = parse_format(FORMAT);
        assert!(fields.contains(&("skaddr".into(), 8, 8)));
        assert!(fields.contains(&("saddr_v6".into(), 40, 16)));
        assert_eq!(
            check_format(FORMAT, &[("skaddr", 8, 8), ("saddr_v6", 40, 16)]),
            Ok(())
        );
        let moved = check_format(FORMAT, &[("oldstate", 20, 4)]).unwrap_err();
        assert!(moved.contains("offset 16"), "{moved}");
        let missing = check_format(FORMAT, &[("newstate", 20, 4)]).unwrap_err();
        assert!(missing.contains("missing"), "{missing}");
    }

    #[test]
    fn this_kernel_has_the_formats_the_programs_read() {
        // Skips (with a reason) only where tracefs is not readable.
        let events = Path::new(TRACEFS).join("events");
        if !events.is_dir() {
            eprintln!(
                "SKIP: {} not readable (tracefs not mounted or not root)",
                events.display()
            );
            return;
        }
        for spec in probe_specs().into_iter().chain(fork_child_specs()) {
            if spec.btf {
                continue;
            }
            if !cfg!(target_arch = "x86_64") && spec.tracepoint.ends_with("fork") {
                continue;
            }
            let path = events
                .join(spec.category)
                .join(spec.tracepoint)
                .join("format");
            let text = fs::read_to_string(&path).expect("read format");
            check_format(&text, spec.fields)
                .unwrap_or_else(|e| panic!("{}/{}: {e}", spec.category, spec.tracepoint));
        }
    }

    #[test]
    fn port_bitmap_sets_exactly_the_ports() {
        let bm = port_bitmap(&parse_port_ranges("80,8000-8002,65535").expect("ports"));
        let set: Vec<u32> = (0..65536u32)
            .filter(|p| bm[(p >> 6) as usize] & (1 << (p & 63)) != 0)
            .collect();
        assert_eq!(set, [80, 8000, 8001, 8002, 65535]);
    }
}
