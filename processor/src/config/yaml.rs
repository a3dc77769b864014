//! The YAML side of loading a file: the dotted paths of keys present in the parsed
//! tree (for the ignored keys), and yaml_serde errors turned into [`FileError`]s
//! located at their key's line.

use std::path::Path;

use super::{file, FileError};

/// The keys of a parsed file, for [`present_keys`]: mappings keep every entry in
/// order, duplicates included (OBI's decoder does not look inside the sections it
/// ignores, so a repeated key there, as in an example of its service discovery page,
/// loads). Keys that are not scalars are left out.
#[derive(Debug, Default)]
pub(super) enum KeyTree {
    Map(Vec<(String, KeyTree)>),
    Seq(Vec<KeyTree>),
    #[default]
    Leaf,
}

impl<'de> serde::Deserialize<'de> for KeyTree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{EnumAccess, IgnoredAny, MapAccess, SeqAccess, VariantAccess, Visitor};

        /// A mapping key: a scalar as text, anything else `None`.
        struct Key(Option<String>);
        impl<'de> serde::Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Key;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a mapping key")
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                        Ok(Key(Some(v.to_string())))
                    }
                    fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                        Ok(Key(Some(v.to_string())))
                    }
                    fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                        Ok(Key(Some(v.to_string())))
                    }
                    fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                        Ok(Key(Some(v.to_string())))
                    }
                    fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
                        Ok(Key(Some(v.to_string())))
                    }
                    fn visit_unit<E>(self) -> Result<Key, E> {
                        Ok(Key(None))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Key, A::Error> {
                        while a.next_element::<IgnoredAny>()?.is_some() {}
                        Ok(Key(None))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Key, A::Error> {
                        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok(Key(None))
                    }
                    fn visit_enum<A: EnumAccess<'de>>(self, a: A) -> Result<Key, A::Error> {
                        a.variant::<IgnoredAny>()?
                            .1
                            .newtype_variant::<IgnoredAny>()?;
                        Ok(Key(None))
                    }
                }
                d.deserialize_any(V)
            }
        }

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyTree;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_unit<E>(self) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_none<E>(self) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<KeyTree, D::Error> {
                <KeyTree as serde::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<KeyTree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(KeyTree::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<KeyTree, A::Error> {
                let mut entries = Vec::new();
                while let Some((Key(key), value)) = a.next_entry::<Key, KeyTree>()? {
                    if let Some(key) = key {
                        entries.push((key, value));
                    }
                }
                Ok(KeyTree::Map(entries))
            }
            // A tagged value (`!tag value`).
            fn visit_enum<A: EnumAccess<'de>>(self, a: A) -> Result<KeyTree, A::Error> {
                a.variant::<IgnoredAny>()?.1.newtype_variant()
            }
        }
        d.deserialize_any(V)
    }
}

impl KeyTree {
    /// The values of the entries named `key` (every one, if repeated).
    fn entries<'a>(&'a self, key: &'a str) -> impl Iterator<Item = (&'a str, &'a KeyTree)> {
        let all = match self {
            KeyTree::Map(entries) => entries.as_slice(),
            _ => &[],
        };
        all.iter()
            .filter(move |(k, _)| k == key || (key.starts_with('<') && key.ends_with('>')))
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// Dotted paths of `pattern` (`a.b`, `a.list[].c`, `a.<name>.c` for any key of `a`)
/// present in `tree`, each once.
pub(super) fn present_keys(tree: &KeyTree, pattern: &str) -> Vec<String> {
    fn walk(node: &KeyTree, segs: &[&str], prefix: String, out: &mut Vec<String>) {
        let Some((seg, rest)) = segs.split_first() else {
            if !out.contains(&prefix) {
                out.push(prefix);
            }
            return;
        };
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match seg.strip_suffix("[]") {
            Some(list) => {
                for (key, child) in node.entries(list) {
                    if let KeyTree::Seq(items) = child {
                        for (i, item) in items.iter().enumerate() {
                            walk(item, rest, format!("{}[{i}]", join(key)), out);
                        }
                    }
                }
            }
            None => {
                for (key, child) in node.entries(seg) {
                    walk(child, rest, join(key), out);
                }
            }
        }
    }
    let segs: Vec<&str> = pattern.split('.').collect();
    let mut out = Vec::new();
    walk(tree, &segs, String::new(), &mut out);
    out
}

/// A yaml_serde error as a [`FileError`]: its path becomes the key (with the unknown
/// field appended), its location the line and column.
pub(super) fn yaml_error(file: &Path, text: &str, e: &yaml_serde::Error) -> FileError {
    let location = e.location();
    let mut message = e.to_string();
    if let Some(l) = &location {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(m) = message.strip_suffix(&suffix) {
            message = m.to_string();
        }
    }
    // "a.b[0].c: message": a path has no spaces; serde's own messages ("invalid type:
    // …") do.
    let (path, message) = match message.split_once(": ") {
        Some((head, tail)) if !head.is_empty() && !head.contains(' ') => {
            (Some(head.to_string()), tail.to_string())
        }
        _ => (None, message),
    };
    // A whole-field error names its field itself (see `file::FIELD_MARK`).
    let (path, message) = match message
        .strip_prefix(file::FIELD_MARK)
        .and_then(|r| r.split_once(file::FIELD_MARK))
    {
        Some((field, rest)) => (
            Some(match path {
                Some(p) => format!("{p}.{field}"),
                None => field.to_string(),
            }),
            rest.to_string(),
        ),
        None => (path, message),
    };
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
        .map(|(f, _)| f.to_string());
    let (key, line, column) = match (path, unknown) {
        (Some(p), Some(f)) => (
            Some(format!("{p}.{f}")),
            location.as_ref().map(|l| l.line()),
            location.as_ref().map(|l| l.column()),
        ),
        // At the top level yaml_serde locates the document, not the key: find it.
        (None, Some(f)) => {
            let line = top_level_line(text, &f);
            (Some(f), line, line.map(|_| 1))
        }
        (p, None) => (
            p,
            location.as_ref().map(|l| l.line()),
            location.as_ref().map(|l| l.column()),
        ),
    };
    // At the top level yaml_serde may locate the document rather than the key.
    let line = match &key {
        Some(k) if !k.contains(['.', '[']) => top_level_line(text, k).or(line),
        _ => line,
    };
    // A whole-list error is located at the list's key: move to the item.
    let line = match (&key, line) {
        (Some(k), Some(l)) => match k
            .strip_suffix(']')
            .and_then(|k| k.rsplit_once('['))
            .and_then(|(_, i)| i.parse::<usize>().ok())
        {
            Some(i) => Some(list_item_line(text, l, i).unwrap_or(l)),
            None => Some(l),
        },
        (_, l) => l,
    };
    let message = match message.strip_prefix("unknown field") {
        Some(rest) => format!(
            "unknown key{rest} (tandem accepts OBI's keys; check the spelling and the section)"
        ),
        None => message,
    };
    FileError {
        file: file.to_path_buf(),
        key,
        line,
        column,
        message,
    }
}

/// The 1-based line of a top-level (unindented) `key:`.
fn top_level_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_end();
            [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
                .iter()
                .any(|k| {
                    l.strip_prefix(k.as_str())
                        .is_some_and(|r| r.trim_start().starts_with(':'))
                })
        })
        .map(|i| i + 1)
}

/// The 1-based line of item `index` of the block list whose key is on `key_line`.
fn list_item_line(text: &str, key_line: usize, index: usize) -> Option<usize> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut dash_indent = None;
    let mut seen = 0;
    for (i, l) in text.lines().enumerate().skip(key_line) {
        let content = l.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let is_item = content == "-" || content.starts_with("- ");
        match dash_indent {
            None if is_item => dash_indent = Some(indent(l)),
            None => return None,
            Some(d) if indent(l) < d || (indent(l) == d && !is_item) => return None,
            Some(_) => {}
        }
        if is_item && Some(indent(l)) == dash_indent {
            if seen == index {
                return Some(i + 1);
            }
            seen += 1;
        }
    }
    None
}
