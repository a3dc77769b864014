//! The YAML side of loading a file: the dotted paths of keys present in the parsed
//! tree (for the ignored keys), and yaml_serde errors turned into [`FileError`]s
//! located at their key's line.

use std::path::Path;

use super::{file, FileError};

/// Dotted paths of `pattern` (`a.b`, `a.list[].c`) present in `tree`.
pub(super) fn present_keys(tree: &yaml_serde::Value, pattern: &str) -> Vec<String> {
    fn walk(node: &yaml_serde::Value, segs: &[&str], prefix: String, out: &mut Vec<String>) {
        let Some((seg, rest)) = segs.split_first() else {
            out.push(prefix);
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
                if let Some(yaml_serde::Value::Sequence(items)) = node.get(list) {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, rest, format!("{}[{i}]", join(list)), out);
                    }
                }
            }
            None => {
                if let Some(child) = node.get(*seg) {
                    walk(child, rest, join(seg), out);
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
