//! Matching processes against a subscriber's [`Selection`].

use globset::{Glob, GlobSet, GlobSetBuilder};
use tandem_proto::Selection;

/// Shortest container-id prefix that may stand for a whole id.
pub const MIN_CONTAINER_ID_PREFIX: usize = 12;

/// What the loader knows about a process, as far as selection is concerned.
#[derive(Debug, Default, Clone)]
pub struct ProcessFacts {
    pub exe_path: String,
    pub container_id: String,
    /// Local ports it serves on and peer ports it connects to.
    pub ports: Vec<u16>,
}

/// A selection compiled for fast matching.
#[derive(Debug, Clone)]
pub struct Matcher {
    selection: Selection,
    globs: GlobSet,
}

/// A selection that cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("executable glob {glob:?} is invalid: {source}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("port range {start}-{end} is invalid (ports are 1-65535, start <= end)")]
    Ports { start: u32, end: u32 },
    #[error(
        "container id {0:?} is invalid (hex digits, at least {MIN_CONTAINER_ID_PREFIX} of them)"
    )]
    ContainerId(String),
}

impl Matcher {
    /// Compiles and validates `selection`.
    pub fn new(selection: Selection) -> Result<Self, SelectionError> {
        let mut builder = GlobSetBuilder::new();
        for g in &selection.exe_globs {
            // OBI globs: `*` may cross `/` (so `*/nginx` matches `/usr/sbin/nginx`).
            let glob = Glob::new(g).map_err(|source| SelectionError::Glob {
                glob: g.clone(),
                source,
            })?;
            builder.add(glob);
        }
        let globs = builder.build().map_err(|source| SelectionError::Glob {
            glob: selection.exe_globs.join(","),
            source,
        })?;
        for r in &selection.ports {
            if r.start == 0 || r.end > 65535 || r.start > r.end {
                return Err(SelectionError::Ports {
                    start: r.start,
                    end: r.end,
                });
            }
        }
        for c in &selection.container_ids {
            if c.len() < MIN_CONTAINER_ID_PREFIX || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SelectionError::ContainerId(c.clone()));
            }
        }
        Ok(Matcher { selection, globs })
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// True when the process with `pid` and `facts` is selected.
    pub fn matches(&self, pid: u32, facts: &ProcessFacts) -> bool {
        let s = &self.selection;
        if s.is_empty() || s.pids.contains(&pid) {
            return true;
        }
        if !facts.exe_path.is_empty() && self.globs.is_match(&facts.exe_path) {
            return true;
        }
        if !facts.container_id.is_empty()
            && s.container_ids
                .iter()
                .any(|c| facts.container_id.starts_with(c.as_str()))
        {
            return true;
        }
        facts
            .ports
            .iter()
            .any(|p| s.ports.iter().any(|r| r.contains(*p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::selection::parse_port_ranges;

    fn facts(exe: &str, container: &str, ports: &[u16]) -> ProcessFacts {
        ProcessFacts {
            exe_path: exe.into(),
            container_id: container.into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn empty_selection_selects_everything() {
        let m = Matcher::new(Selection::default()).unwrap();
        assert!(m.matches(1, &ProcessFacts::default()));
    }

    #[test]
    fn each_criterion_selects_on_its_own() {
        let m = Matcher::new(Selection {
            ports: parse_port_ranges("8000-8999").unwrap(),
            exe_globs: vec!["*/nginx".into()],
            pids: vec![77],
            container_ids: vec!["abcdef012345".into()],
        })
        .unwrap();
        assert!(m.matches(77, &ProcessFacts::default()));
        assert!(m.matches(1, &facts("/usr/sbin/nginx", "", &[])));
        assert!(m.matches(1, &facts("", "abcdef0123456789", &[])));
        assert!(m.matches(1, &facts("/bin/x", "", &[8080])));
        assert!(!m.matches(1, &facts("/usr/bin/python3", "ffff00000000", &[80])));
    }

    #[test]
    fn invalid_selections_are_named() {
        let bad_glob = Matcher::new(Selection {
            exe_globs: vec!["[".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(bad_glob.to_string().contains("\"[\""));
        let bad_container = Matcher::new(Selection {
            container_ids: vec!["abc".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(bad_container.to_string().contains("abc"));
    }
}
