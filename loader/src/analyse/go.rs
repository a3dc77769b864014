//! Go binaries, read in the sandboxed child (`super`): the Go version (from
//! `.go.buildinfo`), and for each wanted function its entry and every `RET`
//! instruction in it — uprobes go at the returns, not a uretprobe, because Go moves
//! goroutine stacks (a uretprobe's rewritten return address would be copied away).
//! Functions come from `.symtab`, or from `.gopclntab` when the binary is stripped
//! (`-ldflags=-s -w` keeps it: the runtime needs it).
//!
//! Answer lines: `go <version>`, `func <name> <entry file offset> <size>`, `ret <name>
//! <file offset>` (one per `RET`). amd64 code is decoded with iced-x86 (a `0xC3`
//! byte inside another instruction is not a return); arm64 returns are the aligned
//! word `0xd65f03c0`.

use object::{Object, ObjectSection, ObjectSymbol};

/// The answer for `data` (an ELF image) and the `wanted` function names.
pub fn answer(data: &[u8], wanted: &[String]) -> Result<String, String> {
    let file = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
    let version = build_version(&file).ok_or("not a Go binary (no .go.buildinfo version)")?;
    let mut out = format!("go {version}\n");
    let segments = super::Segments::of(&file);
    let to_offset = |va: u64| segments.offset(va);
    let mut funcs = symtab_functions(&file, wanted);
    if funcs.len() < wanted.len() {
        for f in pclntab_functions(&file, wanted)? {
            if !funcs.iter().any(|(n, _, _)| *n == f.0) {
                funcs.push(f);
            }
        }
    }
    let arm64 = file.architecture() == object::Architecture::Aarch64;
    for (name, va, size) in funcs {
        let (Some(entry), true) = (to_offset(va), size > 0 && size < 1 << 20) else {
            continue;
        };
        let Some(code) = data.get(entry as usize..(entry + size) as usize) else {
            continue;
        };
        out.push_str(&format!("func {name} {entry} {size}\n"));
        for r in returns(code, va, arm64) {
            out.push_str(&format!("ret {name} {}\n", entry + r));
        }
    }
    Ok(out)
}

/// Offsets (from the function's start) of its return instructions.
pub fn returns(code: &[u8], va: u64, arm64: bool) -> Vec<u64> {
    if arm64 {
        return code
            .chunks_exact(4)
            .enumerate()
            .filter(|(_, w)| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == 0xd65f_03c0)
            .map(|(i, _)| i as u64 * 4)
            .collect();
    }
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut d = Decoder::with_ip(64, code, va, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        if i.is_invalid() {
            break;
        }
        if i.mnemonic() == Mnemonic::Ret {
            out.push(i.ip() - va);
        }
    }
    out
}

/// `go1.19.8` from `.go.buildinfo` (Go 1.18+: inline strings after the 32-byte
/// header: varint length, bytes).
fn build_version(file: &object::File) -> Option<String> {
    let s = file.section_by_name(".go.buildinfo")?;
    let b = s.data().ok()?;
    if b.len() < 33 || &b[..14] != b"\xff Go buildinf:" || b[15] & 2 == 0 {
        return None;
    }
    let (len, used) = uvarint(&b[32..])?;
    let v = b.get(32 + used..32 + used + len as usize)?;
    let v = std::str::from_utf8(v).ok()?;
    (v.starts_with("go") && v.len() < 64).then(|| v.to_string())
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        x |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((x, i + 1));
        }
    }
    None
}

/// (name, address, size) of the wanted functions in `.symtab`.
fn symtab_functions(file: &object::File, wanted: &[String]) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = Vec::new();
    for s in file.symbols() {
        let Ok(name) = s.name() else { continue };
        if s.address() != 0
            && wanted.iter().any(|w| w == name)
            && !out.iter().any(|(n, _, _)| n == name)
        {
            out.push((name.to_string(), s.address(), s.size()));
        }
    }
    out
}

/// (name, address, size) of the wanted functions in `.gopclntab` (Go 1.18-1.19
/// magic `0xfffffff0`, 1.20+ `0xfffffff1`; 64-bit): the function table gives each
/// function's entry (offset from `textStart`) and name; its size is the distance
/// to the next entry.
fn pclntab_functions(
    file: &object::File,
    wanted: &[String],
) -> Result<Vec<(String, u64, u64)>, String> {
    let Some(section) = file.section_by_name(".gopclntab") else {
        return Ok(Vec::new());
    };
    let t = section.data().map_err(|e| format!(".gopclntab: {e}"))?;
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(t.get(o..o + 4)?.try_into().ok()?)) };
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(t.get(o..o + 8)?.try_into().ok()?)) };
    let bad = || ".gopclntab is truncated or not a Go 1.18+ 64-bit table".to_string();
    let magic = u32_at(0).ok_or_else(bad)?;
    if !(magic == 0xffff_fff0 || magic == 0xffff_fff1) || t.get(7) != Some(&8) {
        return Err(format!(
            ".gopclntab magic {magic:#x} (or pointer size) is not supported"
        ));
    }
    let nfunc = u64_at(8).ok_or_else(bad)? as usize;
    let text_start = u64_at(24).ok_or_else(bad)?;
    let funcname = u64_at(32).ok_or_else(bad)? as usize;
    let pcln = u64_at(64).ok_or_else(bad)? as usize;
    if nfunc == 0 || nfunc > 1 << 24 || funcname >= t.len() || pcln >= t.len() {
        return Err(bad());
    }
    let mut out: Vec<(String, u64, u64)> = Vec::new();
    for i in 0..nfunc {
        let (Some(entry), Some(funcoff), Some(next)) = (
            u32_at(pcln + 8 * i),
            u32_at(pcln + 8 * i + 4),
            u32_at(pcln + 8 * (i + 1)),
        ) else {
            return Err(bad());
        };
        let Some(name_off) = u32_at(pcln + funcoff as usize + 4) else {
            return Err(bad());
        };
        let start = funcname + name_off as usize;
        let Some(rest) = t.get(start..) else {
            return Err(bad());
        };
        let name = rest.split(|b| *b == 0).next().unwrap_or_default();
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if wanted.iter().any(|w| w == name) && !out.iter().any(|(n, _, _)| n == name) {
            out.push((
                name.to_string(),
                text_start + u64::from(entry),
                u64::from(next.saturating_sub(entry)),
            ));
            if out.len() == wanted.len() {
                break;
            }
        }
    }
    Ok(out)
}
