//! Builds tandem's eBPF programs (`ebpf/tandem-ebpf`) for `bpfel-unknown-none` with
//! aya-build and leaves the object in `$OUT_DIR/tandem-ebpf`, which
//! `src/source/ebpf/programs.rs` embeds with `include_bytes_aligned!`.
//!
//! Prerequisites (installed by `bash scripts/setup.sh`): the nightly toolchain with
//! `rust-src`, and `bpf-linker` (built against LLVM 22) on PATH. When one is missing
//! the build fails and says which.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for `cargo check`/`clippy` on machines
//! without the prerequisites): the loader then embeds an empty object and
//! `--source ebpf` fails at start-up saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const SETUP_HINT: &str = "install the eBPF toolchain with `bash scripts/setup.sh` (as root), \
or set AYA_BUILD_SKIP=1 to only check/lint the code (such a loader cannot run --source ebpf)";

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot build tandem's eBPF programs: {e}");
            eprintln!("hint: {SETUP_HINT}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env("OUT_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf/tandem-ebpf");
    let common_dir = manifest_dir.join("../ebpf/tandem-ebpf-common");
    let object = out_dir.join("tandem-ebpf");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());

    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    if skip {
        println!("cargo:warning=AYA_BUILD_SKIP set: the eBPF programs are not built; this tandem-loader cannot run --source ebpf");
        std::fs::write(&object, b"")
            .map_err(|e| format!("cannot write {}: {e}", object.display()))?;
        return Ok(());
    }

    check_prerequisites()?;

    // aya-build runs `cargo build --package tandem-ebpf` in the current directory;
    // the eBPF crate is its own workspace (excluded from the main one), so run there.
    std::env::set_current_dir(&ebpf_dir)
        .map_err(|e| format!("cannot enter {}: {e}", ebpf_dir.display()))?;
    let ebpf_dir_str = ebpf_dir
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tandem-ebpf",
            root_dir: ebpf_dir_str,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .map_err(|e| format!("{e:#}"))?;
    if !object.is_file() {
        return Err(format!(
            "aya-build finished but {} does not exist",
            object.display()
        ));
    }
    Ok(())
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (not run by cargo?)"))
}

fn check_prerequisites() -> Result<(), String> {
    if !on_path("bpf-linker") {
        return Err("`bpf-linker` is not on PATH (it links the eBPF object; \
             `LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
             --no-default-features --features llvm-22`)"
            .into());
    }
    if !on_path("rustup") {
        return Err(
            "`rustup` is not on PATH (the eBPF programs build with the nightly \
             toolchain through `rustup run nightly`)"
                .into(),
        );
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run `rustup run nightly rustc`: {e}"))?;
    if !sysroot.status.success() {
        return Err(format!(
            "the nightly toolchain is not installed (`rustup toolchain install nightly`): {}",
            String::from_utf8_lossy(&sysroot.stderr).trim()
        ));
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let core_src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        return Err(format!(
            "the nightly toolchain lacks the rust-src component ({} is missing; \
             `rustup component add rust-src --toolchain nightly`)",
            core_src.display()
        ));
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
