//! `attributes.select` (OBI): which attributes each metric family reports.
//!
//! A family's attributes are its default ones (what [`super::families`] reports),
//! plus its optional ones matching an `include` glob, minus those matching an
//! `exclude` glob (default ones too). Metric and attribute names compare with `_`
//! and `.` alike, so OBI's Prometheus spellings (`http_server_request_duration`,
//! `url_path`) and OpenTelemetry ones (`http.server.request.duration`, `url.path`)
//! both work; a metric name also matches in its Prometheus form with its unit suffix
//! (`http_server_request_duration_seconds`).
//!
//! All instruments of a family share one attribute set, so a selector applies to a
//! family when its metric glob matches any of the family's instrument names. When
//! several selectors match a family, they apply from the most generic to the most
//! specific (wildcard globs first, shorter before longer, exact names last): a later
//! one's `include` adds back what an earlier one excluded, and its `exclude` removes
//! what an earlier one included (OBI: exact matches take precedence over wildcard
//! matches).
//!
//! Everything is resolved once, when the registry is configured
//! ([`resolve`]): recording applies a [`FamilySelection`] without any globbing, and
//! a family without a selector costs nothing.

use globset::{Glob, GlobMatcher};
use opentelemetry::KeyValue;

use super::families::{Family, FAMILIES};
use crate::model::{Exchange, Side, Transaction};
use crate::settings::AttributeSelect;

/// OBI names a metric or attribute with `_` or `.`: compare them as `_`.
fn normal(name: &str) -> String {
    name.replace('.', "_")
}

/// Optional attributes: reported only when selected.
pub const URL_PATH: &str = "url.path";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const SERVER_ADDRESS: &str = "server.address";

impl Family {
    /// The attributes the family reports by default (some only when known).
    pub fn default_attributes(self) -> &'static [&'static str] {
        match self {
            Family::HttpServer => &[
                "http.request.method",
                "http.response.status_code",
                "error.type",
                "http.route",
                "server.port",
            ],
            Family::HttpClient => &[
                "http.request.method",
                "http.response.status_code",
                "error.type",
                "server.address",
                "server.port",
            ],
            Family::RpcServer => &[
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "rpc.grpc.status_code",
                "error.type",
                "server.port",
            ],
            Family::RpcClient => &[
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "rpc.grpc.status_code",
                "error.type",
                "server.address",
                "server.port",
            ],
            Family::DbClient => &[
                "db.system.name",
                "db.namespace",
                "db.operation.name",
                "db.collection.name",
                "db.response.status_code",
                "error.type",
            ],
            Family::SpanMetrics => &[
                "service.name",
                "service.namespace",
                "span.name",
                "span.kind",
                "status.code",
                "source",
            ],
            Family::ServiceGraph => &[
                "client",
                "client_service_namespace",
                "server",
                "server_service_namespace",
                "source",
            ],
        }
    }

    /// The attributes the family reports only when `attributes.select` includes
    /// them.
    pub fn optional_attributes(self) -> &'static [&'static str] {
        match self {
            Family::HttpServer => &[URL_PATH, CLIENT_ADDRESS, SERVER_ADDRESS],
            Family::HttpClient => &[URL_PATH],
            _ => &[],
        }
    }
}

/// What `attributes.select` makes of one family, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilySelection {
    /// Default attributes not reported.
    pub excluded: Vec<&'static str>,
    /// Optional attributes reported.
    pub url_path: bool,
    pub client_address: bool,
    pub server_address: bool,
}

impl FamilySelection {
    /// The default attribute set: nothing to do.
    pub fn is_default(&self) -> bool {
        self.excluded.is_empty() && !self.url_path && !self.client_address && !self.server_address
    }

    /// Adds the selected optional attributes of `tx` to `attrs` (its family's
    /// defaults) and removes the excluded ones.
    pub fn apply(&self, tx: &Transaction, attrs: &mut Vec<KeyValue>) {
        if !self.excluded.is_empty() {
            attrs.retain(|kv| !self.excluded.contains(&kv.key.as_str()));
        }
        let Exchange::Http(h) = &tx.exchange else {
            return;
        };
        if self.url_path {
            attrs.push(KeyValue::new(URL_PATH, h.request.path.clone()));
        }
        if tx.side == Side::Server {
            if self.client_address {
                if let Some(p) = tx.peer {
                    attrs.push(KeyValue::new(CLIENT_ADDRESS, crate::model::ip_text(p.ip())));
                }
            }
            if self.server_address {
                if let Some(a) = crate::pipeline::span::server_address(h, tx.local) {
                    attrs.push(KeyValue::new(SERVER_ADDRESS, a));
                }
            }
        }
    }
}

/// One compiled selector.
struct Rule {
    /// Its metric glob has no wildcard (an exact name).
    exact: bool,
    /// Length of the metric glob (longer is more specific).
    len: usize,
    metric: GlobMatcher,
    include: Vec<GlobMatcher>,
    exclude: Vec<GlobMatcher>,
}

/// A glob over normalised names; the error names what was wrong.
fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    Glob::new(&normal(pattern))
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("`{pattern}` is not a valid glob: {}", e.kind()))
}

/// Why an entry of `attributes.select` is invalid: the entry's metric name and the
/// key (`include`, `exclude` or the name itself), and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectError {
    pub metric: String,
    pub key: Option<&'static str>,
    pub message: String,
}

/// Resolves `attributes.select` for every family (indexed by [`Family::index`]).
pub fn resolve(select: &AttributeSelect) -> Result<[FamilySelection; FAMILIES], SelectError> {
    let mut rules = Vec::with_capacity(select.rules.len());
    for r in &select.rules {
        let err = |key, message| SelectError {
            metric: r.metric.clone(),
            key,
            message,
        };
        let globs = |key: &'static str, list: &[String]| {
            list.iter()
                .map(|g| glob(g).map_err(|m| err(Some(key), m)))
                .collect::<Result<Vec<_>, _>>()
        };
        rules.push(Rule {
            exact: !r.metric.contains(['*', '?', '[', '{']),
            len: r.metric.len(),
            metric: glob(&r.metric).map_err(|m| err(None, m))?,
            include: globs("include", &r.include)?,
            exclude: globs("exclude", &r.exclude)?,
        });
    }
    // Most generic first, so more specific selectors override.
    rules.sort_by_key(|r| (r.exact, r.len));
    let mut out: [FamilySelection; FAMILIES] = Default::default();
    for family in Family::ALL {
        let names: Vec<String> = family
            .instruments()
            .iter()
            .flat_map(|i| {
                [
                    normal(i.descriptor.name),
                    crate::export::prometheus::render::metric_name(
                        i.descriptor.name,
                        i.descriptor.unit,
                    ),
                ]
            })
            .collect();
        let attrs: Vec<(&'static str, bool, String)> = family
            .default_attributes()
            .iter()
            .map(|a| (*a, true, normal(a)))
            .chain(
                family
                    .optional_attributes()
                    .iter()
                    .map(|a| (*a, false, normal(a))),
            )
            .collect();
        let mut on: Vec<bool> = attrs.iter().map(|(_, default, _)| *default).collect();
        for rule in rules
            .iter()
            .filter(|r| names.iter().any(|n| r.metric.is_match(n)))
        {
            for (i, (_, _, n)) in attrs.iter().enumerate() {
                if rule.include.iter().any(|g| g.is_match(n)) {
                    on[i] = true;
                }
                if rule.exclude.iter().any(|g| g.is_match(n)) {
                    on[i] = false;
                }
            }
        }
        let sel = &mut out[family.index()];
        for ((name, default, _), on) in attrs.iter().zip(on) {
            match (*default, on) {
                (true, false) => sel.excluded.push(name),
                (false, true) => match *name {
                    URL_PATH => sel.url_path = true,
                    CLIENT_ADDRESS => sel.client_address = true,
                    SERVER_ADDRESS => sel.server_address = true,
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(out)
}
