//! Helpers for [`Selection`]: OBI's port syntax and the union of selections.

use crate::v1::PortRange;
use crate::Selection;

/// Parses OBI's `OTEL_EBPF_OPEN_PORT` syntax: comma-separated ports and inclusive
/// ranges, e.g. `80,443,8000-8999`. Whitespace around items is ignored.
pub fn parse_port_ranges(text: &str) -> Result<Vec<PortRange>, String> {
    let mut ranges = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (start, end) = match item.split_once('-') {
            Some((a, b)) => (parse_port(a.trim(), item)?, parse_port(b.trim(), item)?),
            None => {
                let p = parse_port(item, item)?;
                (p, p)
            }
        };
        if start > end {
            return Err(format!(
                "port range {item:?} ends before it starts (expected START-END with START <= END)"
            ));
        }
        ranges.push(PortRange {
            start: u32::from(start),
            end: u32::from(end),
        });
    }
    Ok(ranges)
}

fn parse_port(text: &str, item: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "{item:?} is not a port or port range (expected 1-65535 or START-END, e.g. 80,443,8000-8999)"
        )),
    }
}

/// Formats ranges back in OBI syntax.
pub fn format_port_ranges(ranges: &[PortRange]) -> String {
    ranges
        .iter()
        .map(|r| {
            if r.start == r.end {
                r.start.to_string()
            } else {
                format!("{}-{}", r.start, r.end)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&u32::from(port))
    }
}

/// The union of several selections, or `None` when there are none. An empty
/// selection selects everything, so a union containing one is empty too.
pub fn union<'a>(selections: impl IntoIterator<Item = &'a Selection>) -> Option<Selection> {
    let mut out: Option<Selection> = None;
    for s in selections {
        if s.is_empty() {
            return Some(Selection::default());
        }
        let u = out.get_or_insert_with(Selection::default);
        for r in &s.ports {
            if !u.ports.contains(r) {
                u.ports.push(*r);
            }
        }
        for g in &s.exe_globs {
            if !u.exe_globs.contains(g) {
                u.exe_globs.push(g.clone());
            }
        }
        for p in &s.pids {
            if !u.pids.contains(p) {
                u.pids.push(*p);
            }
        }
        for c in &s.container_ids {
            if !u.container_ids.contains(c) {
                u.container_ids.push(c.clone());
            }
        }
    }
    out
}

/// One line describing a selection, for logs.
pub fn describe(selection: &Selection) -> String {
    if selection.is_empty() {
        return "every process".into();
    }
    let mut parts = Vec::new();
    if !selection.ports.is_empty() {
        parts.push(format!("ports {}", format_port_ranges(&selection.ports)));
    }
    if !selection.exe_globs.is_empty() {
        parts.push(format!("executables {}", selection.exe_globs.join(",")));
    }
    if !selection.pids.is_empty() {
        let pids: Vec<String> = selection.pids.iter().map(u32::to_string).collect();
        parts.push(format!("pids {}", pids.join(",")));
    }
    if !selection.container_ids.is_empty() {
        parts.push(format!("containers {}", selection.container_ids.join(",")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_obi_port_syntax() {
        let r = parse_port_ranges("80, 443,8000-8999").unwrap();
        assert_eq!(format_port_ranges(&r), "80,443,8000-8999");
        assert!(r[2].contains(8500) && !r[2].contains(9000));
    }

    #[test]
    fn rejects_bad_ports_with_the_item_named() {
        for bad in ["0", "70000", "http", "90-80", "1-2-3"] {
            let err = parse_port_ranges(bad).unwrap_err();
            assert!(err.contains(bad.split('-').next().unwrap()), "{bad}: {err}");
        }
    }

    #[test]
    fn union_of_nothing_is_none_and_empty_absorbs() {
        assert_eq!(union([]), None);
        let a = Selection {
            pids: vec![1, 2],
            ..Default::default()
        };
        let b = Selection {
            pids: vec![2, 3],
            exe_globs: vec!["*/nginx".into()],
            ..Default::default()
        };
        let u = union([&a, &b]).unwrap();
        assert_eq!(u.pids, vec![1, 2, 3]);
        assert_eq!(u.exe_globs, vec!["*/nginx".to_string()]);
        assert!(union([&a, &Selection::default()]).unwrap().is_empty());
    }
}
