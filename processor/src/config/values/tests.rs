//! Tests of the single-value parsers (durations, ratios, endpoints, key-value lists,
//! named values).

use super::*;

#[test]
fn go_durations() {
    let d = |s: &str| GoDuration::parse_value(s).map(|d| d.0);
    assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
    assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
    assert!(d("0s").unwrap_err().contains("zero"));
    for bad in ["", "5", "5x", "s", "1m-3s"] {
        let e = d(bad).unwrap_err();
        assert!(e.contains("not a duration"), "{bad}: {e}");
    }
}

#[test]
fn endpoints_and_their_ports() {
    let ok = |s: &str| Endpoint::parse_value(s).unwrap();
    assert_eq!(ok("http://otelcol:4317").port(), Some("4317"));
    assert_eq!(ok("https://h:4318/otlp/").port(), Some("4318"));
    assert_eq!(ok("http://[::1]:4317").port(), Some("4317"));
    assert_eq!(ok("https://ingest.example.com/otlp").port(), None);
    for bad in [
        "otelcol:4317",
        "ftp://h:1",
        "http://",
        "http://h:99999",
        "http://:4317",
    ] {
        assert!(Endpoint::parse_value(bad).is_err(), "{bad}");
    }
}

#[test]
fn key_values_are_percent_decoded_and_may_contain_equals() {
    let kv = parse_key_values("Authorization=Bearer%20xyz, x-k = a=b= ,,").unwrap();
    assert_eq!(
        kv,
        vec![
            ("Authorization".into(), "Bearer xyz".into()),
            ("x-k".into(), "a=b=".into())
        ]
    );
    // The unencoded form from OBI's Kubernetes guide.
    let kv = parse_key_values("Authorization=Bearer Z2hwX0l4Y29QOWhr....ScQo=").unwrap();
    assert_eq!(kv[0].1, "Bearer Z2hwX0l4Y29QOWhr....ScQo=");
    assert_eq!(percent_decode("100%").unwrap(), "100%");
    assert_eq!(percent_decode("a%zzb%4").unwrap(), "a%zzb%4");
    assert_eq!(percent_decode("caf%C3%A9").unwrap(), "café");
}

#[test]
fn key_value_errors_name_the_item_not_the_secret() {
    let e = parse_key_values("a=1,secretvalue").unwrap_err();
    assert!(e.contains("item 2 has no `=`"), "{e}");
    assert!(!e.contains("secretvalue"), "{e}");
    let e = parse_key_values("=x").unwrap_err();
    assert!(e.contains("empty key"), "{e}");
    let e = parse_key_values("k=%FF").unwrap_err();
    assert!(e.contains("UTF-8"), "{e}");
}

#[test]
fn named_values_list_what_is_allowed() {
    let e = SamplerName::parse_value("sometimes").unwrap_err();
    assert_eq!(
        e,
        "unknown value `sometimes`, expected one of always_on, always_off, traceidratio, \
         parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
    );
    assert_eq!(LogLevel::parse_value("DEBUG"), Ok(LogLevel::Debug));
    assert_eq!(
        OtlpProtocol::parse_value("http/json"),
        Ok(OtlpProtocol::HttpJson)
    );
    assert!(OtlpProtocol::parse_value("debug")
        .unwrap_err()
        .contains("not supported"));
    assert_eq!(Ratio::parse_value("0.01"), Ok(Ratio(0.01)));
    assert!(Ratio::parse_value("1.5").is_err());
    assert!(Ratio::parse_value("abc").is_err());
}
