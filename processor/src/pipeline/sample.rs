//! Head sampling of spans, with the OpenTelemetry SDK samplers' semantics
//! (`OTEL_TRACES_SAMPLER`): `always_on`, `always_off`, `traceidratio`, and the
//! `parentbased_*` forms. The only parent tandem knows is a remote one: the
//! `traceparent` header of the request. A sampled parent gives a sampled span, an
//! unsampled parent an unsampled one, and a span without parent (a root) is decided by
//! the base sampler.
//!
//! `traceidratio` decides from the trace id alone, as the Rust SDK does: the low 8
//! bytes read big-endian, shifted right by one, sampled when below `ratio * 2^63`.
//! Every service (and every SDK doing the same) makes the same decision for one trace.
//!
//! Sampling applies to spans only: metrics count every transaction.

use opentelemetry::trace::TraceId;

use crate::settings::Sampler;

/// The remote parent of a span, as far as sampling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// No parent: a root span.
    None,
    /// A parent whose `sampled` flag was set.
    Sampled,
    /// A parent whose `sampled` flag was clear.
    NotSampled,
}

/// Whether to record and export a span of trace `trace_id` with `parent`.
pub fn should_sample(sampler: Sampler, trace_id: TraceId, parent: Parent) -> bool {
    match sampler {
        Sampler::AlwaysOn => true,
        Sampler::AlwaysOff => false,
        Sampler::TraceIdRatio(r) => ratio_sampled(r, trace_id),
        Sampler::ParentBasedAlwaysOn => parent_based(parent, || true),
        Sampler::ParentBasedAlwaysOff => parent_based(parent, || false),
        Sampler::ParentBasedTraceIdRatio(r) => parent_based(parent, || ratio_sampled(r, trace_id)),
    }
}

fn parent_based(parent: Parent, root: impl FnOnce() -> bool) -> bool {
    match parent {
        Parent::Sampled => true,
        Parent::NotSampled => false,
        Parent::None => root(),
    }
}

/// `traceidratio`: deterministic by trace id. Ratios >= 1 sample everything, ratios
/// <= 0 (and NaN) nothing.
pub fn ratio_sampled(ratio: f64, trace_id: TraceId) -> bool {
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    if ratio >= 1.0 {
        return true;
    }
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..16]);
    let value = u64::from_be_bytes(low) >> 1;
    // ratio < 1, so the bound fits in 63 bits.
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    value < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> TraceId {
        let mut b = [0xffu8; 16];
        b[8..].copy_from_slice(&low.to_be_bytes());
        TraceId::from_bytes(b)
    }

    #[test]
    fn always_on_off_ignore_parent() {
        for p in [Parent::None, Parent::Sampled, Parent::NotSampled] {
            assert!(should_sample(Sampler::AlwaysOn, id(1), p));
            assert!(!should_sample(Sampler::AlwaysOff, id(1), p));
        }
    }

    #[test]
    fn ratio_compares_low_bytes() {
        // Half: values below 2^62 after the shift, i.e. low 8 bytes below 2^63.
        assert!(ratio_sampled(0.5, id(0)));
        assert!(ratio_sampled(0.5, id((1u64 << 63) - 2)));
        assert!(!ratio_sampled(0.5, id(1u64 << 63)));
        assert!(!ratio_sampled(0.5, id(u64::MAX)));
        assert!(ratio_sampled(1.0, id(u64::MAX)));
        assert!(ratio_sampled(2.0, id(u64::MAX)));
        assert!(!ratio_sampled(0.0, id(0)));
        assert!(!ratio_sampled(f64::NAN, id(0)));
        // High bytes do not matter.
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&0u64.to_be_bytes());
        assert!(ratio_sampled(0.01, TraceId::from_bytes(b)));
    }

    #[test]
    fn ratio_is_close_to_its_value_over_many_ids() {
        let n = 20_000u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut hits = 0;
        for _ in 0..n {
            // xorshift: spread-out low bytes.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if ratio_sampled(0.25, id(x)) {
                hits += 1;
            }
        }
        let frac = hits as f64 / n as f64;
        assert!((0.23..0.27).contains(&frac), "{frac}");
    }

    #[test]
    fn parent_based_follows_parent_and_base_for_roots() {
        for s in [
            Sampler::ParentBasedAlwaysOn,
            Sampler::ParentBasedAlwaysOff,
            Sampler::ParentBasedTraceIdRatio(0.5),
        ] {
            assert!(should_sample(s, id(u64::MAX), Parent::Sampled), "{s:?}");
            assert!(!should_sample(s, id(0), Parent::NotSampled), "{s:?}");
        }
        assert!(should_sample(
            Sampler::ParentBasedAlwaysOn,
            id(1),
            Parent::None
        ));
        assert!(!should_sample(
            Sampler::ParentBasedAlwaysOff,
            id(1),
            Parent::None
        ));
        assert!(should_sample(
            Sampler::ParentBasedTraceIdRatio(0.5),
            id(0),
            Parent::None
        ));
        assert!(!should_sample(
            Sampler::ParentBasedTraceIdRatio(0.5),
            id(u64::MAX),
            Parent::None
        ));
    }
}
