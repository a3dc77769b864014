//! `attributes.metric_span_names_limit` (OBI's `span_name_limiter`): the distinct
//! `span.name` values of span metrics are counted per service (`service.name` and
//! `service.namespace` of the process's resource); once a service has `limit` of
//! them, further new names are reported as [`AGGREGATED`] (the names already seen
//! keep their own series). Spans themselves are never changed. 0 is no limit.
//!
//! Memory is bounded: at most `limit` names per service, and at most
//! [`MAX_SERVICES`] services (past that the service tracked longest is forgotten,
//! and starts a new budget if it comes back).

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use opentelemetry::{KeyValue, Value};
use tracing::info;

use crate::stitch::{FastMap, KeyHasher};

/// The span name reported past the limit.
pub const AGGREGATED: &str = "AGGREGATED";
/// Most services whose span names are tracked.
pub const MAX_SERVICES: usize = super::MAX_METERED_PROCESSES;

#[derive(Debug)]
struct Service {
    name: String,
    namespace: String,
    names: HashSet<String>,
    /// The limit was reached (logged once).
    full: bool,
}

/// The span names seen per service, bounded.
#[derive(Debug, Default)]
pub struct SpanNameLimiter {
    limit: usize,
    services: FastMap<u64, Vec<Service>>,
    /// Services by age: (hash, name, namespace), oldest first.
    order: VecDeque<(u64, String, String)>,
    aggregated: u64,
}

impl SpanNameLimiter {
    /// A limiter of `limit` names per service (0: none).
    pub fn new(limit: usize) -> Self {
        SpanNameLimiter {
            limit,
            ..SpanNameLimiter::default()
        }
    }

    /// Observations whose span name was reported as [`AGGREGATED`].
    pub fn aggregated(&self) -> u64 {
        self.aggregated
    }

    /// Applies the limit to span metric attributes `attrs` (with `service.name`,
    /// `service.namespace` and `span.name`): replaces a new span name past the
    /// service's limit by [`AGGREGATED`].
    pub fn apply(&mut self, attrs: &mut [KeyValue]) {
        if self.limit == 0 {
            return;
        }
        let Some(pos) = attrs.iter().position(|kv| kv.key.as_str() == "span.name") else {
            return;
        };
        if self.over_limit(attrs, pos) {
            self.aggregated += 1;
            attrs[pos] = KeyValue::new("span.name", Value::from(AGGREGATED));
        }
    }

    /// Whether the span name at `pos` of `attrs` is new to its service and past its
    /// limit (else it is remembered when new).
    fn over_limit(&mut self, attrs: &[KeyValue], pos: usize) -> bool {
        let get = |key: &str| {
            attrs
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map_or(Cow::Borrowed(""), |kv| kv.value.as_str())
        };
        let (name, namespace) = (get("service.name"), get("service.namespace"));
        let mut h = KeyHasher::default();
        name.hash(&mut h);
        namespace.hash(&mut h);
        let hash = h.finish();
        let is = |s: &Service| s.name == name && s.namespace == namespace;
        if !self.services.get(&hash).is_some_and(|v| v.iter().any(is)) {
            while self.order.len() >= MAX_SERVICES {
                let Some((oh, on, ons)) = self.order.pop_front() else {
                    break;
                };
                if let Some(v) = self.services.get_mut(&oh) {
                    v.retain(|s| !(s.name == on && s.namespace == ons));
                    if v.is_empty() {
                        self.services.remove(&oh);
                    }
                }
            }
            self.order
                .push_back((hash, name.to_string(), namespace.to_string()));
            self.services.entry(hash).or_default().push(Service {
                name: name.to_string(),
                namespace: namespace.to_string(),
                names: HashSet::new(),
                full: false,
            });
        }
        let Some(service) = self
            .services
            .get_mut(&hash)
            .and_then(|v| v.iter_mut().find(|s| is(s)))
        else {
            return false;
        };
        let span_name = attrs[pos].value.as_str();
        if service.names.contains(span_name.as_ref()) {
            return false;
        }
        if service.names.len() < self.limit {
            service.names.insert(span_name.into_owned());
            return false;
        }
        if !service.full {
            service.full = true;
            info!(
                service = %name,
                namespace = %namespace,
                limit = self.limit,
                "span metrics: this service reached attributes.metric_span_names_limit; \
                 its new span names are reported as span.name=AGGREGATED"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
        attrs
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    }

    fn attrs(service: &str, namespace: Option<&str>, span: &str) -> Vec<KeyValue> {
        let mut v = vec![KeyValue::new("service.name", service.to_string())];
        if let Some(ns) = namespace {
            v.push(KeyValue::new("service.namespace", ns.to_string()));
        }
        v.push(KeyValue::new("span.name", span.to_string()));
        v.push(KeyValue::new("span.kind", "SPAN_KIND_SERVER"));
        v
    }

    fn name_after(l: &mut SpanNameLimiter, service: &str, ns: Option<&str>, span: &str) -> String {
        let mut a = attrs(service, ns, span);
        l.apply(&mut a);
        text(&a, "span.name").unwrap_or_default()
    }

    #[test]
    fn past_the_limit_new_names_are_aggregated_and_old_ones_kept() {
        let mut l = SpanNameLimiter::new(2);
        assert_eq!(name_after(&mut l, "shop", None, "GET /a"), "GET /a");
        assert_eq!(name_after(&mut l, "shop", None, "GET /b"), "GET /b");
        assert_eq!(name_after(&mut l, "shop", None, "GET /c"), AGGREGATED);
        assert_eq!(name_after(&mut l, "shop", None, "GET /d"), AGGREGATED);
        assert_eq!(name_after(&mut l, "shop", None, "GET /a"), "GET /a");
        assert_eq!(name_after(&mut l, "shop", None, "GET /b"), "GET /b");
        assert_eq!(l.aggregated(), 2);
    }

    #[test]
    fn zero_is_no_limit() {
        let mut l = SpanNameLimiter::new(0);
        for i in 0..500 {
            let n = format!("GET /{i}");
            assert_eq!(name_after(&mut l, "shop", None, &n), n);
        }
        assert_eq!(l.aggregated(), 0);
        assert!(l.services.is_empty());
    }

    #[test]
    fn every_service_has_its_own_budget() {
        let mut l = SpanNameLimiter::new(1);
        assert_eq!(name_after(&mut l, "shop", None, "GET /a"), "GET /a");
        assert_eq!(name_after(&mut l, "shop", None, "GET /b"), AGGREGATED);
        assert_eq!(name_after(&mut l, "cart", None, "GET /b"), "GET /b");
        // The same name in another namespace is another service.
        assert_eq!(name_after(&mut l, "shop", Some("prod"), "GET /b"), "GET /b");
        assert_eq!(
            name_after(&mut l, "shop", Some("prod"), "GET /c"),
            AGGREGATED
        );
        assert_eq!(l.aggregated(), 2);
    }

    #[test]
    fn services_tracked_are_bounded() {
        let mut l = SpanNameLimiter::new(1);
        for i in 0..MAX_SERVICES + 10 {
            name_after(&mut l, &format!("svc-{i}"), None, "GET /a");
        }
        assert_eq!(l.order.len(), MAX_SERVICES);
        assert_eq!(
            l.services.values().map(Vec::len).sum::<usize>(),
            MAX_SERVICES
        );
        // The oldest was forgotten: a new budget.
        assert_eq!(name_after(&mut l, "svc-0", None, "GET /b"), "GET /b");
    }
}
