//! OBI's `filter.application`: keep only the transactions whose attributes match.
//!
//! ```yaml
//! filter:
//!   application:
//!     url.path:
//!       not_match: /health
//!     http.response.status_code:
//!       match: "5*"
//! ```
//!
//! Each entry names an attribute and a glob (`*`, `?`, `[...]`, `{a,b}`): `match`
//! keeps a transaction whose attribute matches (one without the attribute is
//! dropped), `not_match` drops one whose attribute matches; every entry must hold
//! (AND). Dropped transactions give neither spans nor metrics, and are counted
//! (`filtered` in the summary's `made` line). The attributes are the spans'
//! (OpenTelemetry names; OBI's Prometheus-style names with `_` are accepted too):
//! see [`ATTRIBUTES`].

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};

use crate::model::{Exchange, Side, Transaction};
use crate::pipeline::grpc::GrpcCall;

/// The attributes a filter may name.
pub const ATTRIBUTES: [&str; 13] = [
    "url.path",
    "http.route",
    "http.request.method",
    "http.response.status_code",
    "server.port",
    "server.address",
    "client.address",
    "rpc.service",
    "rpc.method",
    "db.system.name",
    "db.operation.name",
    "db.collection.name",
    "span.kind",
];

/// One attribute's rule as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub matches: Option<String>,
    pub not_matches: Option<String>,
}

#[derive(Debug, Clone)]
struct Compiled {
    attribute: &'static str,
    matches: Option<GlobMatcher>,
    not_matches: Option<GlobMatcher>,
}

/// The compiled `filter.application`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    rules: Vec<Compiled>,
}

impl Filter {
    /// Compiles `rules` (attribute → rule). Errors name the attribute and say what
    /// is allowed.
    pub fn new(rules: &BTreeMap<String, Rule>) -> Result<Filter, String> {
        let mut out = Vec::new();
        for (name, rule) in rules {
            let dotted = name.replace('_', ".");
            let attribute = ATTRIBUTES
                .iter()
                .copied()
                .find(|a| *a == name || a.replace('_', ".") == dotted)
                .ok_or_else(|| {
                    format!(
                        "`{name}` is not an attribute tandem can filter on; expected one of {}",
                        ATTRIBUTES.join(", ")
                    )
                })?;
            let glob = |g: &Option<String>, what: &str| {
                g.as_ref()
                    .map(|g| {
                        Glob::new(g)
                            .map(|g| g.compile_matcher())
                            .map_err(|e| format!("`{name}.{what}`: {e}"))
                    })
                    .transpose()
            };
            let c = Compiled {
                attribute,
                matches: glob(&rule.matches, "match")?,
                not_matches: glob(&rule.not_matches, "not_match")?,
            };
            if c.matches.is_none() && c.not_matches.is_none() {
                return Err(format!("`{name}`: give `match` or `not_match`"));
            }
            out.push(c);
        }
        Ok(Filter { rules: out })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `tx` (with `route`, an HTTP server request's) is kept.
    pub fn keeps(&self, tx: &Transaction, route: Option<&str>) -> bool {
        self.rules.iter().all(|r| {
            let value = attribute(tx, route, r.attribute);
            let hit = |g: &GlobMatcher| value.as_deref().is_some_and(|v| g.is_match(v));
            r.matches.as_ref().is_none_or(hit) && !r.not_matches.as_ref().is_some_and(hit)
        })
    }
}

/// The value of attribute `name` of `tx`, as its span reports it.
fn attribute(tx: &Transaction, route: Option<&str>, name: &str) -> Option<String> {
    let ip = |a: Option<std::net::SocketAddr>| a.map(|a| crate::model::ip_text(a.ip()));
    let server = match tx.side {
        Side::Server => tx.local,
        Side::Client => tx.peer,
    };
    match (name, &tx.exchange) {
        ("span.kind", _) => Some(
            match tx.side {
                Side::Server => "server",
                Side::Client => "client",
            }
            .into(),
        ),
        ("server.port", _) => server.map(|s| s.port().to_string()),
        ("server.address", _) => ip(server),
        ("client.address", _) => match tx.side {
            Side::Server => ip(tx.peer),
            Side::Client => ip(tx.local),
        },
        ("url.path", Exchange::Http(h)) => Some(h.request.path.clone()),
        ("http.route", Exchange::Http(_)) => route.map(str::to_owned),
        ("http.request.method", Exchange::Http(h)) => Some(h.request.method.to_string()),
        ("http.response.status_code", Exchange::Http(h)) => {
            h.response.as_ref().map(|r| r.status.to_string())
        }
        ("rpc.service", Exchange::Http(h)) => GrpcCall::of(h).map(|c| c.service.clone()),
        ("rpc.method", Exchange::Http(h)) => GrpcCall::of(h).map(|c| c.method.clone()),
        ("db.system.name", Exchange::Db(d)) => Some(d.system.name().to_string()),
        ("db.operation.name", Exchange::Db(d)) => d.operation.clone(),
        ("db.collection.name", Exchange::Db(d)) => d.collection.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::span::tests::tx;

    fn rules(items: &[(&str, Option<&str>, Option<&str>)]) -> BTreeMap<String, Rule> {
        items
            .iter()
            .map(|(n, m, nm)| {
                (
                    n.to_string(),
                    Rule {
                        matches: m.map(String::from),
                        not_matches: nm.map(String::from),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn match_and_not_match_all_hold() {
        let f = Filter::new(&rules(&[("url.path", None, Some("/health*"))])).expect("filter");
        assert!(!f.keeps(&tx(Side::Server, "GET", "/health", Some(200)), None));
        assert!(!f.keeps(&tx(Side::Server, "GET", "/healthz", Some(200)), None));
        assert!(f.keeps(&tx(Side::Server, "GET", "/users/1", Some(200)), None));
        // OBI's Prometheus-style name works too; both rules must hold.
        let f = Filter::new(&rules(&[
            ("http_response_status_code", Some("5*"), None),
            ("url.path", None, Some("/health")),
        ]))
        .expect("filter");
        assert!(f.keeps(&tx(Side::Server, "GET", "/x", Some(503)), None));
        assert!(!f.keeps(&tx(Side::Server, "GET", "/x", Some(200)), None));
        assert!(!f.keeps(&tx(Side::Server, "GET", "/health", Some(503)), None));
        // `match` on an attribute the transaction lacks: dropped.
        assert!(!f.keeps(&tx(Side::Server, "GET", "/x", None), None));
        let f = Filter::new(&rules(&[("http.route", Some("/users/*"), None)])).expect("route");
        let t = tx(Side::Server, "GET", "/users/1", Some(200));
        assert!(f.keeps(&t, Some("/users/{id}")));
        assert!(!f.keeps(&t, None));
    }

    #[test]
    fn bad_filters_are_named() {
        let e = Filter::new(&rules(&[("k8s.pod.name", Some("x"), None)])).expect_err("unknown");
        assert!(
            e.contains("`k8s.pod.name`") && e.contains("url.path"),
            "{e}"
        );
        let e = Filter::new(&rules(&[("url.path", None, None)])).expect_err("empty rule");
        assert!(e.contains("match"), "{e}");
        let e = Filter::new(&rules(&[("url.path", Some("[oops"), None)])).expect_err("glob");
        assert!(e.contains("url.path.match"), "{e}");
    }
}
