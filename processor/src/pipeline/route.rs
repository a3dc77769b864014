//! `http.route` for a request path, as OBI's routes decorator does it.
//!
//! * `patterns` (`/users/{id}`, `/users/:id`; a trailing `*` segment matches the
//!   prefix, the prefix itself included: `/users/*` matches `/users`, `/users/1/a`)
//!   give the route as written. When several match, the one with the most literal
//!   segments wins, then the one without a trailing `*`, then the first listed.
//! * `ignored_patterns` (same syntax) remove the request from traces, metrics or
//!   both (`ignore_mode`).
//! * A path matching no pattern gets a route by `unmatched`:
//!   - `heuristic`: segments that look like ids become `*` ([`heuristic_route`]);
//!   - `low-cardinality`: the heuristic, then at most
//!     [`MAX_PATH_SEGMENT_CARDINALITY`] distinct values per segment below one prefix
//!     (OBI's `max_path_segment_cardinality`, default 10); further values become `*`;
//!   - `path`: the path itself; `wildcard`: `/**`; `unset`: no route.
//! * Bounded cardinality (tandem's, OBI has none): at most `max_routes` distinct
//!   routes come out of `heuristic`, `low-cardinality` and `path`; a new route past
//!   that bound is reported as `/**` and counted ([`Router::overflowed`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::settings::{IgnoreMode, RoutesSettings, Unmatched};

/// The route reported for everything the cardinality bound folds away, and for
/// `unmatched: wildcard`.
pub const WILDCARD_ROUTE: &str = "/**";

/// Most path segments the heuristic looks at; a longer path's route ends in `/**`.
pub const MAX_SEGMENTS: usize = 10;

/// Segments longer than this are treated as ids by the heuristic (OBI: 25).
pub const MAX_WORD_LEN: usize = 25;

/// `low-cardinality`: most distinct values of one segment under one prefix.
pub const MAX_PATH_SEGMENT_CARDINALITY: usize = 10;

/// `low-cardinality`: most prefixes tracked in all (bounds the memory of the mode).
const MAX_LOW_CARDINALITY_NODES: usize = 10_000;

/// A pattern that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("route pattern {pattern:?} must start with '/'")]
    NotAbsolute { pattern: String },
    #[error(
        "route pattern {pattern:?}: '*' may only be the last segment (it matches the prefix \
         before it); use {{name}} or :name for one segment"
    )]
    InnerWildcard { pattern: String },
    #[error("route pattern {pattern:?}: empty parameter name in segment {segment:?}")]
    EmptyParam { pattern: String, segment: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// `{name}` or `:name`: any one non-empty segment.
    Param,
}

#[derive(Debug, Clone)]
struct Pattern {
    text: Arc<str>,
    segs: Vec<Seg>,
    /// Trailing `*`: the prefix and anything below it.
    prefix: bool,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, RouteError> {
        if !text.starts_with('/') {
            return Err(RouteError::NotAbsolute {
                pattern: text.to_string(),
            });
        }
        let parts: Vec<&str> = split_path(text).collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut prefix = false;
        for (i, part) in parts.iter().enumerate() {
            if *part == "*" || *part == "**" {
                if i + 1 != parts.len() {
                    return Err(RouteError::InnerWildcard {
                        pattern: text.to_string(),
                    });
                }
                prefix = true;
            } else if let Some(name) = part
                .strip_prefix('{')
                .and_then(|p| p.strip_suffix('}'))
                .or_else(|| part.strip_prefix(':'))
            {
                if name.is_empty() {
                    return Err(RouteError::EmptyParam {
                        pattern: text.to_string(),
                        segment: part.to_string(),
                    });
                }
                segs.push(Seg::Param);
            } else {
                segs.push(Seg::Literal(part.to_string()));
            }
        }
        Ok(Pattern {
            text: Arc::from(text),
            segs,
            prefix,
        })
    }

    fn matches(&self, path: &[&str]) -> bool {
        if path.len() < self.segs.len() || (!self.prefix && path.len() != self.segs.len()) {
            return false;
        }
        self.segs.iter().zip(path).all(|(seg, part)| match seg {
            Seg::Literal(l) => l == part,
            Seg::Param => !part.is_empty(),
        })
    }

    /// Higher is more specific.
    fn rank(&self) -> (usize, bool) {
        let literals = self
            .segs
            .iter()
            .filter(|s| matches!(s, Seg::Literal(_)))
            .count();
        (literals, !self.prefix)
    }
}

/// Segments of a path, empty ones (from `//` or a trailing `/`) skipped.
fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn best_match<'a>(patterns: &'a [Pattern], path: &[&str]) -> Option<&'a Pattern> {
    let mut best: Option<&Pattern> = None;
    for p in patterns.iter().filter(|p| p.matches(path)) {
        // Strictly better only: on a tie the first listed stays.
        if best.is_none_or(|b| p.rank() > b.rank()) {
            best = Some(p);
        }
    }
    best
}

/// What the router decided for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// `http.route`, if any (shared: routes are few, requests many).
    pub route: Option<Arc<str>>,
    /// Matched an ignored pattern whose mode removes it from traces.
    pub ignore_traces: bool,
    /// Matched an ignored pattern whose mode removes it from metrics.
    pub ignore_metrics: bool,
}

/// Routes paths by [`RoutesSettings`]. Holds the state of the cardinality bounds, so
/// one router serves the whole pipeline.
#[derive(Debug)]
pub struct Router {
    patterns: Vec<Pattern>,
    ignored: Vec<Pattern>,
    ignore_mode: IgnoreMode,
    unmatched: Unmatched,
    max_routes: usize,
    /// Routes produced from unmatched paths so far (at most `max_routes`).
    seen: HashSet<Arc<str>>,
    wildcard: Arc<str>,
    overflowed: u64,
    low_card: LowCardinality,
    /// Recent paths and what they were routed to, with whether the route was
    /// folded by `max_routes` (not for `low-cardinality`, whose routes depend on the
    /// paths seen before). Cleared when full.
    cache: HashMap<String, (Routed, bool)>,
}

/// Paths remembered by the route cache.
const CACHE_PATHS: usize = 4096;

impl Router {
    pub fn new(settings: &RoutesSettings) -> Result<Self, RouteError> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Router {
            patterns: parse(&settings.patterns)?,
            ignored: parse(&settings.ignored_patterns)?,
            ignore_mode: settings.ignore_mode,
            unmatched: settings.unmatched,
            max_routes: settings.max_routes,
            seen: HashSet::new(),
            wildcard: Arc::from(WILDCARD_ROUTE),
            overflowed: 0,
            low_card: LowCardinality::default(),
            cache: HashMap::new(),
        })
    }

    /// Requests whose route was folded into `/**` by the `max_routes` bound.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    pub fn route(&mut self, path: &str) -> Routed {
        let cacheable = self.unmatched != Unmatched::LowCardinality;
        if cacheable {
            if let Some((routed, folded)) = self.cache.get(path) {
                if *folded {
                    self.overflowed += 1;
                }
                return routed.clone();
            }
        }
        let before = self.overflowed;
        let routed = self.route_uncached(path);
        if cacheable {
            if self.cache.len() >= CACHE_PATHS {
                self.cache.clear();
            }
            let folded = self.overflowed != before;
            self.cache
                .insert(path.to_string(), (routed.clone(), folded));
        }
        routed
    }

    fn route_uncached(&mut self, path: &str) -> Routed {
        let parts: Vec<&str> = split_path(path).collect();
        let ignored = best_match(&self.ignored, &parts).is_some();
        let (ignore_traces, ignore_metrics) = match (ignored, self.ignore_mode) {
            (false, _) => (false, false),
            (true, IgnoreMode::All) => (true, true),
            (true, IgnoreMode::Traces) => (true, false),
            (true, IgnoreMode::Metrics) => (false, true),
        };
        let route = match best_match(&self.patterns, &parts) {
            Some(p) => Some(p.text.clone()),
            None => self.unmatched_route(path, &parts),
        };
        Routed {
            route,
            ignore_traces,
            ignore_metrics,
        }
    }

    fn unmatched_route(&mut self, path: &str, parts: &[&str]) -> Option<Arc<str>> {
        let candidate = match self.unmatched {
            Unmatched::Unset => return None,
            Unmatched::Wildcard => return Some(self.wildcard.clone()),
            Unmatched::Path => {
                if path.is_empty() {
                    "/".to_string()
                } else {
                    path.to_string()
                }
            }
            Unmatched::Heuristic => heuristic_route(parts),
            Unmatched::LowCardinality => self.low_card.route(parts),
        };
        Some(self.bound(candidate))
    }

    fn bound(&mut self, route: String) -> Arc<str> {
        if let Some(r) = self.seen.get(route.as_str()) {
            return r.clone();
        }
        if self.seen.len() < self.max_routes {
            let r: Arc<str> = Arc::from(route);
            self.seen.insert(r.clone());
            return r;
        }
        self.overflowed += 1;
        self.wildcard.clone()
    }
}

/// OBI's heuristic: each segment stays as it is when it looks like a word, and becomes
/// `*` when it looks like an id. A word is made of ASCII letters, `-`, `_` and `.`
/// (one other character allowed in second place, so `v1`, `v2beta` stay), is at most
/// [`MAX_WORD_LEN`] long, and does not look like a random token ([`looks_random`]).
/// Numbers, UUIDs, hex strings, base64 and other tokens therefore become `*`. At most
/// [`MAX_SEGMENTS`] segments are kept; a longer path ends in `/**`.
///
/// OBI decides "random" with a trained character-pair classifier; tandem uses the
/// simpler rules of [`looks_random`], so a few long made-up words may differ.
pub fn heuristic_route(parts: &[&str]) -> String {
    if parts.is_empty() {
        return "/".to_string();
    }
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str(WILDCARD_ROUTE);
            return out;
        }
        out.push('/');
        if is_word(part) {
            out.push_str(part);
        } else {
            out.push('*');
        }
    }
    out
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'-' | b'_' | b'.')
}

fn is_word(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() || b.len() > MAX_WORD_LEN || !b[0].is_ascii_alphabetic() {
        return false;
    }
    let odd = b
        .iter()
        .enumerate()
        .filter(|(_, c)| !is_word_char(**c))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    match odd.as_slice() {
        [] => {}
        // `v1`, `v2beta`: one non-letter right after the first letter.
        [1] if b[1].is_ascii_alphanumeric() => {}
        _ => return false,
    }
    !segment
        .split(['-', '_', '.'])
        .any(|w| looks_random(w.as_bytes()))
}

/// A run of letters (no separators) that does not look like a word: hex-only of 8
/// letters or more (`deadbeef`), no vowel in 6 letters or more, or 6 consonants in a
/// row (`y` counts as a vowel). Mixed case alone is no sign: `getUserById` stays.
pub fn looks_random(word: &[u8]) -> bool {
    if word.len() < 5 {
        return false;
    }
    let lower: Vec<u8> = word.iter().map(|c| c.to_ascii_lowercase()).collect();
    if lower.len() >= 8 && lower.iter().all(|c| matches!(c, b'a'..=b'f')) {
        return true;
    }
    let is_vowel = |c: &u8| matches!(c, b'a' | b'e' | b'i' | b'o' | b'u' | b'y');
    if lower.len() >= 6 && !lower.iter().any(is_vowel) {
        return true;
    }
    let mut run = 0;
    for c in &lower {
        run = if is_vowel(c) { 0 } else { run + 1 };
        if run >= 6 {
            return true;
        }
    }
    false
}

/// State of `unmatched: low-cardinality`: per prefix, the segment values seen.
#[derive(Debug, Default)]
struct LowCardinality {
    children: HashMap<String, HashSet<String>>,
}

impl LowCardinality {
    fn route(&mut self, parts: &[&str]) -> String {
        let heuristic = heuristic_route(parts);
        if heuristic == "/" {
            return heuristic;
        }
        let mut out = String::new();
        for seg in split_path(&heuristic) {
            let kept = seg == "*" || seg == "**" || self.admit(&out, seg);
            out.push('/');
            out.push_str(if kept { seg } else { "*" });
        }
        out
    }

    /// Whether `seg` may stay literal below `prefix`, recording it if new.
    fn admit(&mut self, prefix: &str, seg: &str) -> bool {
        if let Some(values) = self.children.get_mut(prefix) {
            if values.contains(seg) {
                return true;
            }
            if values.len() < MAX_PATH_SEGMENT_CARDINALITY {
                values.insert(seg.to_string());
                return true;
            }
            return false;
        }
        if self.children.len() >= MAX_LOW_CARDINALITY_NODES {
            return false;
        }
        self.children
            .insert(prefix.to_string(), HashSet::from([seg.to_string()]));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(f: impl FnOnce(&mut RoutesSettings)) -> Router {
        let mut s = RoutesSettings::default();
        f(&mut s);
        Router::new(&s).expect("valid settings")
    }

    fn h(path: &str) -> String {
        heuristic_route(&split_path(path).collect::<Vec<_>>())
    }

    #[test]
    fn patterns_both_syntaxes() {
        let mut r = router(|s| {
            s.patterns = vec![
                "/users/{id}".into(),
                "/users/:id/basket/:product".into(),
                "/users/me".into(),
            ]
        });
        assert_eq!(r.route("/users/42").route.as_deref(), Some("/users/{id}"));
        assert_eq!(
            r.route("/users/42/basket/7").route.as_deref(),
            Some("/users/:id/basket/:product")
        );
        // Literal beats parameter whatever the order.
        assert_eq!(r.route("/users/me").route.as_deref(), Some("/users/me"));
        // No match: heuristic.
        assert_eq!(r.route("/users").route.as_deref(), Some("/users"));
    }

    #[test]
    fn trailing_star_matches_prefix_and_itself() {
        let mut r = router(|s| s.patterns = vec!["/user/*".into(), "/user/{id}".into()]);
        assert_eq!(r.route("/user").route.as_deref(), Some("/user/*"));
        assert_eq!(
            r.route("/user/1/basket/2").route.as_deref(),
            Some("/user/*")
        );
        assert_eq!(r.route("/user/1").route.as_deref(), Some("/user/{id}"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        let bad = |p: &str| {
            let s = RoutesSettings {
                patterns: vec![p.into()],
                ..RoutesSettings::default()
            };
            Router::new(&s).expect_err(p)
        };
        assert!(matches!(bad("users"), RouteError::NotAbsolute { .. }));
        assert!(matches!(bad("/a/*/b"), RouteError::InnerWildcard { .. }));
        assert!(matches!(bad("/a/{}"), RouteError::EmptyParam { .. }));
    }

    #[test]
    fn ignored_patterns_by_mode() {
        for (mode, traces, metrics) in [
            (IgnoreMode::All, true, true),
            (IgnoreMode::Traces, true, false),
            (IgnoreMode::Metrics, false, true),
        ] {
            let mut r = router(|s| {
                s.ignored_patterns = vec!["/health".into(), "/v1/*".into()];
                s.ignore_mode = mode;
            });
            for p in ["/health", "/v1", "/v1/metrics/x"] {
                let routed = r.route(p);
                assert_eq!(
                    (routed.ignore_traces, routed.ignore_metrics),
                    (traces, metrics),
                    "{p} {mode:?}"
                );
            }
            let routed = r.route("/healthz");
            assert!(!routed.ignore_traces && !routed.ignore_metrics);
        }
    }

    #[test]
    fn heuristic_replaces_ids() {
        assert_eq!(h("/users/123"), "/users/*");
        assert_eq!(
            h("/orders/550e8400-e29b-41d4-a716-446655440000/items"),
            "/orders/*/items"
        );
        assert_eq!(h("/blob/deadbeefcafe"), "/blob/*");
        assert_eq!(h("/t/aGVsbG8gd29ybGQ"), "/t/*");
        assert_eq!(h("/s/xkcdqwrtzp"), "/s/*");
        assert_eq!(
            h("/api/getUserById/strengths"),
            "/api/getUserById/strengths"
        );
        assert_eq!(h("/api/v1/users"), "/api/v1/users");
        assert_eq!(
            h("/api/v2beta/user-profile/settings.json"),
            "/api/v2beta/user-profile/settings.json"
        );
        assert_eq!(h("/a/verylongsegmentnamethatisover25"), "/a/*");
        assert_eq!(h("/"), "/");
        assert_eq!(h(""), "/");
        assert_eq!(h("/static//style.css"), "/static/style.css");
        assert_eq!(h("/1/2/3/4/5/6/7/8/9/10/11/12"), "/*/*/*/*/*/*/*/*/*/*/**");
    }

    #[test]
    fn unmatched_modes() {
        let mut r = router(|s| s.unmatched = Unmatched::Path);
        assert_eq!(r.route("/users/123").route.as_deref(), Some("/users/123"));
        let mut r = router(|s| s.unmatched = Unmatched::Wildcard);
        assert_eq!(r.route("/users/123").route.as_deref(), Some("/**"));
        let mut r = router(|s| s.unmatched = Unmatched::Unset);
        assert_eq!(r.route("/users/123").route, None);
        let mut r = router(|s| s.unmatched = Unmatched::Heuristic);
        assert_eq!(r.route("/users/123").route.as_deref(), Some("/users/*"));
    }

    #[test]
    fn low_cardinality_bounds_each_segment() {
        let mut r = router(|s| s.unmatched = Unmatched::LowCardinality);
        let names = [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
            "juliet",
        ];
        assert_eq!(names.len(), MAX_PATH_SEGMENT_CARDINALITY);
        for name in names {
            let path = format!("/shop/{name}/list");
            assert_eq!(r.route(&path).route.as_deref(), Some(path.as_str()));
        }
        assert_eq!(
            r.route("/shop/another/list").route.as_deref(),
            Some("/shop/*/list")
        );
        // Known values stay; ids are still `*`.
        assert_eq!(
            r.route("/shop/alpha/list").route.as_deref(),
            Some("/shop/alpha/list")
        );
        assert_eq!(r.route("/shop/42").route.as_deref(), Some("/shop/*"));
    }

    #[test]
    fn max_routes_folds_into_wildcard_and_counts() {
        let mut r = router(|s| {
            s.unmatched = Unmatched::Path;
            s.max_routes = 2;
        });
        assert_eq!(r.route("/a").route.as_deref(), Some("/a"));
        assert_eq!(r.route("/b").route.as_deref(), Some("/b"));
        assert_eq!(r.route("/c").route.as_deref(), Some("/**"));
        assert_eq!(r.route("/a").route.as_deref(), Some("/a"));
        assert_eq!(r.overflowed(), 1);
    }
}
