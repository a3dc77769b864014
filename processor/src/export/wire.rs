//! Protocol-buffers wire format, just what tandem's OTLP encoding needs: varints,
//! fixed-width numbers, length-delimited fields and the OTLP `KeyValue`/`AnyValue`
//! attributes. The message layouts (field numbers) are those of
//! `opentelemetry-proto`; `export::encode`'s tests decode what is written here with
//! its prost types.

use opentelemetry::{Array, KeyValue, Value};

/// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// Bytes a varint of `v` takes.
pub fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    if v < 0x80 {
        buf.push(v as u8);
        return;
    }
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(buf, u64::from(field << 3 | wire));
}

/// Bytes of a field key (field numbers here are below 16: one byte).
const fn key_len(field: u32) -> usize {
    if field < 16 {
        1
    } else {
        2
    }
}

/// A length-delimited field: `bytes` as they are (a string, bytes, or an encoded
/// message).
pub fn put_len(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Starts a length-delimited field of `len` bytes that the caller writes next.
pub fn put_len_prefix(buf: &mut Vec<u8>, field: u32, len: usize) {
    put_key(buf, field, LEN);
    put_varint(buf, len as u64);
}

/// Bytes a length-delimited field of `len` bytes takes.
pub fn len_field_len(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

/// A string field, left out when empty (proto3 default).
pub fn put_str(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_len(buf, field, s.as_bytes());
    }
}

pub fn put_uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(buf, field, VARINT);
        put_varint(buf, v);
    }
}

pub fn put_int64(buf: &mut Vec<u8>, field: u32, v: i64) {
    put_uint(buf, field, v as u64);
}

pub fn put_fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn put_double(buf: &mut Vec<u8>, field: u32, v: f64) {
    // Written even when 0.0: OTLP's `optional double` (min, max) tell "0" from absent.
    put_key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

pub fn put_fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        put_key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A `repeated fixed64` field, packed.
pub fn put_packed_fixed64(
    buf: &mut Vec<u8>,
    field: u32,
    values: impl ExactSizeIterator<Item = u64>,
) {
    if values.len() == 0 {
        return;
    }
    put_len_prefix(buf, field, values.len() * 8);
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A `repeated double` field, packed.
pub fn put_packed_double(buf: &mut Vec<u8>, field: u32, values: &[f64]) {
    if values.is_empty() {
        return;
    }
    put_len_prefix(buf, field, values.len() * 8);
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// `AnyValue` fields.
const STRING_VALUE: u32 = 1;
const BOOL_VALUE: u32 = 2;
const INT_VALUE: u32 = 3;
const DOUBLE_VALUE: u32 = 4;
const ARRAY_VALUE: u32 = 5;
/// `ArrayValue.values`.
const ARRAY_VALUES: u32 = 1;
/// `KeyValue` fields.
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;

/// Bytes of the `AnyValue` message of `v`.
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::String(s) => len_field_len(STRING_VALUE, s.as_str().len()),
        // Written even when false/0, so the value's kind is known.
        Value::Bool(_) => key_len(BOOL_VALUE) + 1,
        Value::I64(i) => key_len(INT_VALUE) + varint_len(*i as u64),
        Value::F64(_) => key_len(DOUBLE_VALUE) + 8,
        Value::Array(a) => len_field_len(ARRAY_VALUE, array_len(a)),
        _ => len_field_len(STRING_VALUE, v.as_str().len()),
    }
}

fn array_len(a: &Array) -> usize {
    let each = |v: Value| len_field_len(ARRAY_VALUES, any_value_len(&v));
    match a {
        Array::Bool(v) => v.iter().map(|b| each(Value::Bool(*b))).sum(),
        Array::I64(v) => v.iter().map(|i| each(Value::I64(*i))).sum(),
        Array::F64(v) => v.iter().map(|f| each(Value::F64(*f))).sum(),
        Array::String(v) => v.iter().map(|s| each(Value::String(s.clone()))).sum(),
        _ => 0,
    }
}

fn put_any_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => put_len(buf, STRING_VALUE, s.as_str().as_bytes()),
        Value::Bool(b) => {
            put_key(buf, BOOL_VALUE, VARINT);
            buf.push(u8::from(*b));
        }
        Value::I64(i) => {
            put_key(buf, INT_VALUE, VARINT);
            put_varint(buf, *i as u64);
        }
        Value::F64(f) => {
            put_key(buf, DOUBLE_VALUE, FIXED64);
            buf.extend_from_slice(&f.to_le_bytes());
        }
        Value::Array(a) => {
            put_len_prefix(buf, ARRAY_VALUE, array_len(a));
            let mut each = |v: Value| {
                put_len_prefix(buf, ARRAY_VALUES, any_value_len(&v));
                put_any_value(buf, &v);
            };
            match a {
                Array::Bool(v) => v.iter().for_each(|b| each(Value::Bool(*b))),
                Array::I64(v) => v.iter().for_each(|i| each(Value::I64(*i))),
                Array::F64(v) => v.iter().for_each(|f| each(Value::F64(*f))),
                Array::String(v) => v.iter().for_each(|s| each(Value::String(s.clone()))),
                _ => {}
            }
        }
        other => put_len(buf, STRING_VALUE, other.as_str().as_bytes()),
    }
}

/// Bytes of the `KeyValue` message of `kv`.
pub fn key_value_len(kv: &KeyValue) -> usize {
    len_field_len(KV_KEY, kv.key.as_str().len()) + len_field_len(KV_VALUE, any_value_len(&kv.value))
}

/// `kv` as a `KeyValue` message in field `field` (e.g. `Span.attributes`).
pub fn put_key_value(buf: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    let key = kv.key.as_str().as_bytes();
    let value_len = any_value_len(&kv.value);
    put_len_prefix(
        buf,
        field,
        len_field_len(KV_KEY, key.len()) + len_field_len(KV_VALUE, value_len),
    );
    put_len(buf, KV_KEY, key);
    put_len_prefix(buf, KV_VALUE, value_len);
    put_any_value(buf, &kv.value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut b = vec![];
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn key_values_decode_with_prost() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as P;
        use opentelemetry_proto::tonic::common::v1::KeyValue as PKv;
        use prost::Message;
        let kvs = [
            KeyValue::new("s", "text"),
            KeyValue::new("empty", ""),
            KeyValue::new("i", -3i64),
            KeyValue::new("zero", 0i64),
            KeyValue::new("b", false),
            KeyValue::new("f", 1.5),
            KeyValue::new(
                "a",
                Value::Array(Array::String(vec!["x".into(), "y".into()])),
            ),
        ];
        for kv in &kvs {
            let mut b = vec![];
            put_key_value(&mut b, 9, kv);
            // Strip the outer field key and length.
            let body = &b[1 + varint_len(key_value_len(kv) as u64)..];
            assert_eq!(body.len(), key_value_len(kv));
            let p = PKv::decode(body).expect("decodes");
            assert_eq!(p.key, kv.key.as_str());
            let v = p.value.and_then(|v| v.value).expect("value");
            let want = match &kv.value {
                Value::String(s) => P::StringValue(s.to_string()),
                Value::I64(i) => P::IntValue(*i),
                Value::Bool(x) => P::BoolValue(*x),
                Value::F64(f) => P::DoubleValue(*f),
                Value::Array(_) => match &v {
                    P::ArrayValue(a) => {
                        assert_eq!(a.values.len(), 2);
                        continue;
                    }
                    other => panic!("{other:?}"),
                },
                _ => unreachable!(),
            };
            assert_eq!(v, want);
        }
    }
}
