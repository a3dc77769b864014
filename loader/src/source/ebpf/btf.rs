//! Reads member offsets of kernel structs from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`, world-readable): the programs are not relocated
//! (no CO-RE), so the few struct fields they read at a kernel-dependent offset are
//! looked up here and passed in `Config` (`sk_protocol`, `task_struct.exit_code`).
//!
//! Only what that needs is parsed: the header, the type section (walked to find
//! named structs and their members) and the string section. Format:
//! <https://docs.kernel.org/bpf/btf.html>.

use std::collections::HashMap;

/// The kernel's BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

// Kinds (btf_type.info bits 24-28) and the size of the data following each type.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// A struct member: byte offset and, for an integer member, its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    /// The member's type id.
    pub type_id: u32,
    /// Non-zero for a bitfield (its width in bits).
    pub bitfield_bits: u32,
}

/// The structs of a BTF blob, by name: member name -> member.
pub struct Structs {
    structs: HashMap<String, HashMap<String, Member>>,
    /// Size in bytes of each INT type, by id.
    int_sizes: HashMap<u32, u32>,
    /// TYPEDEF, VOLATILE, CONST, RESTRICT and TYPE_TAG ids -> the type they name.
    aliases: HashMap<u32, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn str_at(strings: &[u8], off: u32) -> &str {
    let start = off as usize;
    let Some(rest) = strings.get(start..) else {
        return "";
    };
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

impl Structs {
    /// Parses a little-endian BTF blob (the only byte order of the architectures
    /// tandem builds for).
    pub fn parse(data: &[u8]) -> Result<Structs, String> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or("empty BTF")?;
        if magic != MAGIC {
            return Err(format!("bad BTF magic {magic:#x}"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or("type section out of bounds")?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or("string section out of bounds")?;

        let mut structs = HashMap::new();
        let mut int_sizes = HashMap::new();
        let mut aliases = HashMap::new();
        let mut at = 0usize;
        let mut id = 1u32;
        while at < types.len() {
            let name_off = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let size_or_type = u32_at(types, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            match kind {
                KIND_INT => {
                    int_sizes.insert(id, size_or_type);
                    at += 4;
                }
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    let mut members = HashMap::new();
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let m_name = u32_at(types, m)?;
                        let m_type = u32_at(types, m + 4)?;
                        let m_off = u32_at(types, m + 8)?;
                        // With kind_flag, offset holds bitfield size << 24 | bit offset.
                        let (bit_off, bits) = if kind_flag {
                            (m_off & 0xff_ffff, m_off >> 24)
                        } else {
                            (m_off, 0)
                        };
                        let name = str_at(strings, m_name);
                        if !name.is_empty() && bit_off % 8 == 0 {
                            members.insert(
                                name.to_owned(),
                                Member {
                                    offset: bit_off / 8,
                                    type_id: m_type,
                                    bitfield_bits: bits,
                                },
                            );
                        }
                    }
                    at += vlen * 12;
                    let name = str_at(strings, name_off);
                    if kind == KIND_STRUCT && !name.is_empty() {
                        // The first definition wins (module BTF is not read here).
                        structs.entry(name.to_owned()).or_insert(members);
                    }
                }
                KIND_ENUM => at += vlen * 8,
                KIND_FUNC_PROTO => at += vlen * 8,
                KIND_VAR => at += 4,
                KIND_DATASEC => at += vlen * 12,
                KIND_DECL_TAG => at += 4,
                KIND_ENUM64 => at += vlen * 12,
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: no trailing data.
                8..=11 | 18 => {
                    aliases.insert(id, size_or_type);
                }
                // PTR, FWD, FUNC, FLOAT: no trailing data.
                2 | 7 | 12 | 16 => {}
                other => return Err(format!("unknown BTF kind {other} (type {id})")),
            }
            id += 1;
        }
        Ok(Structs {
            structs,
            int_sizes,
            aliases,
        })
    }

    /// Reads and parses the kernel's BTF.
    pub fn vmlinux() -> Result<Structs, String> {
        let data = std::fs::read(VMLINUX).map_err(|e| format!("cannot read {VMLINUX}: {e}"))?;
        Structs::parse(&data).map_err(|e| format!("{VMLINUX}: {e}"))
    }

    /// The byte offset of `strukt.member` (not a bitfield), of any type (a pointer
    /// the programs follow).
    pub fn member(&self, strukt: &str, member: &str) -> Result<u32, String> {
        Ok(self.lookup(strukt, member)?.offset)
    }

    /// `strukt.member`, refused when it is a bitfield.
    fn lookup(&self, strukt: &str, member: &str) -> Result<&Member, String> {
        let m = self
            .structs
            .get(strukt)
            .ok_or_else(|| format!("struct {strukt} is not in the kernel's BTF"))?
            .get(member)
            .ok_or_else(|| format!("struct {strukt} has no member {member}"))?;
        if m.bitfield_bits != 0 {
            return Err(format!("{strukt}.{member} is a bitfield"));
        }
        Ok(m)
    }

    /// The byte offset of `strukt.member`, checked to be a plain (not bitfield)
    /// integer of `size` bytes (through typedefs and qualifiers).
    pub fn int_member(&self, strukt: &str, member: &str, size: u32) -> Result<u32, String> {
        let m = self.lookup(strukt, member)?;
        let mut ty = m.type_id;
        for _ in 0..16 {
            match self.aliases.get(&ty) {
                Some(&t) => ty = t,
                None => break,
            }
        }
        match self.int_sizes.get(&ty) {
            Some(&s) if s == size => Ok(m.offset),
            Some(&s) => Err(format!(
                "{strukt}.{member} is a {s}-byte integer, expected {size}"
            )),
            None => Err(format!("{strukt}.{member} is not a plain integer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: INT u16 (id 1), INT int (id 2), STRUCT demo (id 3) { u16 a @0;
    /// int b @4; u16 c:3 @8 (bitfield); myint d @12 }, TYPEDEF myint -> int (id 4).
    fn blob() -> Vec<u8> {
        let strings = b"\0u16\0int\0demo\0a\0b\0c\0d\0myint\0";
        let name = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("string") as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // INT u16: size 2, encoding word (bits 16).
        push(name("u16"));
        push(KIND_INT << 24);
        push(2);
        push(16);
        // INT int: size 4, signed.
        push(name("int"));
        push(KIND_INT << 24);
        push(4);
        push((1 << 24) | 32);
        // STRUCT demo, kind_flag set (bitfield encoding), 3 members, size 12.
        push(name("demo"));
        push((1 << 31) | (KIND_STRUCT << 24) | 4);
        push(16);
        push(name("a"));
        push(1);
        push(0);
        push(name("b"));
        push(2);
        push(32);
        push(name("c"));
        push(1);
        push((3 << 24) | 64);
        push(name("d"));
        push(4);
        push(96);
        // TYPEDEF myint -> int.
        push(name("myint"));
        push(8 << 24);
        push(2);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_integer_members_and_refuses_the_rest() {
        let s = Structs::parse(&blob()).expect("parse");
        assert_eq!(s.int_member("demo", "a", 2), Ok(0));
        assert_eq!(s.int_member("demo", "b", 4), Ok(4));
        assert!(s.int_member("demo", "b", 2).unwrap_err().contains("4-byte"));
        assert!(s
            .int_member("demo", "c", 2)
            .unwrap_err()
            .contains("bitfield"));
        assert_eq!(s.int_member("demo", "d", 4), Ok(12));
        assert!(s
            .int_member("demo", "e", 2)
            .unwrap_err()
            .contains("no member e"));
        assert!(s.int_member("nope", "a", 2).unwrap_err().contains("not in"));
        // Any type (a pointer the programs follow), never a bitfield.
        assert_eq!(s.member("demo", "d"), Ok(12));
        assert!(s.member("demo", "c").unwrap_err().contains("bitfield"));
        assert!(s.member("demo", "e").unwrap_err().contains("no member e"));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Structs::parse(&[]).is_err());
        assert!(Structs::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut b = blob();
        b.truncate(b.len() - 30);
        assert!(Structs::parse(&b).is_err());
        for cut in 0..b.len() {
            let _ = Structs::parse(&b[..cut]);
        }
    }

    #[test]
    fn this_kernel_has_the_members_the_programs_read() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("SKIP: {VMLINUX} does not exist (kernel without BTF)");
            return;
        }
        let s = Structs::vmlinux().expect("vmlinux BTF");
        let proto = s.int_member("sock", "sk_protocol", 2).expect("sk_protocol");
        assert!(proto > 16, "{proto}");
        assert_eq!(s.int_member("sock_common", "skc_family", 2), Ok(16));
        let exit = s
            .int_member("task_struct", "exit_code", 4)
            .expect("exit_code");
        assert!(exit > 0, "{exit}");
        // The syscall data path's walk from a descriptor to its socket.
        let fd = super::super::fd_offsets().expect("fd offsets");
        assert!(fd.task_files > 0 && fd.file_private_data > 0, "{fd:?}");
        assert_eq!(s.int_member("fdtable", "max_fds", 4), Ok(fd.fdt_max_fds));
    }
}
