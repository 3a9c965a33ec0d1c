//! Codec tests without ROS: definitions written to a temporary prefix, expected bytes as an rclpy
//! publisher puts them on the wire on ROS 2 Jazzy (Fast DDS), its uninitialised padding as zeros.

use super::types::Registry;
use super::value::Value;
use super::*;
use serde_json::json;
use std::path::Path;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn prefix() -> Registry {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("rosa-codec-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    write(&dir, "share/builtin_interfaces/msg/Time.msg", "int32 sec\nuint32 nanosec\n");
    write(&dir, "share/std_msgs/msg/Header.msg", "builtin_interfaces/Time stamp\nstring frame_id\n");
    write(&dir, "share/std_msgs/msg/String.msg", "string data\n");
    write(&dir, "share/std_msgs/msg/Empty.msg", "");
    write(&dir, "share/std_msgs/msg/Bool.msg", "bool data\n");
    write(&dir, "share/std_msgs/msg/Float64.msg", "float64 data\n");
    write(
        &dir,
        "share/test_msgs/msg/BasicTypes.msg",
        "bool bool_value\nbyte byte_value\nchar char_value\nfloat32 float32_value\nfloat64 float64_value\nint8 int8_value\nuint8 uint8_value\nint16 int16_value\nuint16 uint16_value\nint32 int32_value\nuint32 uint32_value\nint64 int64_value\nuint64 uint64_value\n",
    );
    write(&dir, "share/test_msgs/msg/WStrings.msg", "wstring wstring_value\nwstring[<=3] some\n");
    write(
        &dir,
        "share/test_msgs/msg/Mixed.msg",
        "std_msgs/Header header\nuint8[] data\nfloat64[3] xyz [1.0, 2.0, 3.0]\nstring<=4 name \"abc\"\nint32[<=2] few\nBasicTypes[] items\nbool flag true\nuint64 big 18446744073709551615\nint8 SMALL=-3\n",
    );
    Registry::with_prefixes(vec![dir])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn cdr_bytes_equal_rclpys() {
    let r = prefix();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("std_msgs/msg/String", json!({"data": "hi"}), "00 01 00 00 03 00 00 00 68 69 00"),
        ("std_msgs/msg/String", json!({"data": "hey"}), "00 01 00 00 04 00 00 00 68 65 79 00"),
        ("std_msgs/msg/Empty", json!({}), "00 01 00 00 00"),
        ("std_msgs/msg/Float64", json!({"data": 1.0}), "00 01 00 00 00 00 00 00 00 00 f0 3f"),
        ("std_msgs/msg/Bool", json!({"data": true}), "00 01 00 00 01"),
        (
            "std_msgs/msg/Header",
            json!({"stamp": {"sec": 1, "nanosec": 0}, "frame_id": "a"}),
            "00 01 00 00 01 00 00 00 00 00 00 00 02 00 00 00 61 00",
        ),
        (
            "test_msgs/msg/BasicTypes",
            json!({"bool_value": true, "float64_value": 2.0}),
            "00 01 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 40 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
        ),
        // wstrings: a count of UTF-16 code units, each as 4 bytes (surrogates separately).
        ("test_msgs/msg/WStrings", json!({"wstring_value": "hé"}), "00 01 00 00 02 00 00 00 68 00 00 00 e9 00 00 00 00 00 00 00"),
        ("test_msgs/msg/WStrings", json!({"wstring_value": "a😀"}), "00 01 00 00 03 00 00 00 61 00 00 00 3d d8 00 00 00 de 00 00 00 00 00 00"),
        // Padding is zero here (Fast DDS leaves it as it finds it).
    ];
    for (ty, j, want) in cases {
        let t = r.message(ty).unwrap();
        let bytes = json_to_cdr(&t, &j).unwrap();
        assert_eq!(hex(&bytes), want, "{ty} {j}");
        // and back
        let back = cdr_to_json(&t, &bytes).unwrap();
        let again = json_to_cdr(&t, &back).unwrap();
        assert_eq!(again, bytes, "{ty} round trip");
    }
}

#[test]
fn json_round_trip_with_defaults_and_base64() {
    let r = prefix();
    let t = r.message("test_msgs/msg/Mixed").unwrap();
    // Everything left out: defaults from the definition, zeros elsewhere.
    let v = json::from_json(&t, &json!({})).unwrap();
    let j = json::message_to_json(&v);
    assert_eq!(j["xyz"], json!([1.0, 2.0, 3.0]));
    assert_eq!(j["name"], json!("abc"));
    assert_eq!(j["flag"], json!(true));
    assert_eq!(j["big"], json!(18446744073709551615u64));
    assert_eq!(j["data"], json!(""));
    assert_eq!(j["header"], json!({"stamp": {"sec": 0, "nanosec": 0}, "frame_id": ""}));
    assert!(j.get("SMALL").is_none(), "constants are not fields");
    // uint8[] as a number list in, base64 out; base64 in too.
    let v = json::from_json(&t, &json!({"data": [1, 2, 255], "items": [{"int64_value": -5}], "few": [7]})).unwrap();
    let j = json::message_to_json(&v);
    assert_eq!(j["data"], json!("AQL/"));
    assert_eq!(j["items"][0]["int64_value"], json!(-5));
    let bytes = cdr::encode(&v).unwrap();
    let back = cdr_to_json(&t, &bytes).unwrap();
    assert_eq!(back, j);
    let from_b64 = json::from_json(&t, &json!({"data": "AQL/"})).unwrap();
    assert_eq!(from_b64.get("data"), Some(&Value::Bytes(vec![1, 2, 255])));
    // "now" for a Time
    let h = r.message("std_msgs/msg/Header").unwrap();
    let now = json::message_to_json(&json::from_json(&h, &json!({"stamp": "now"})).unwrap());
    assert!(now["stamp"]["sec"].as_i64().unwrap() > 1_600_000_000);
}

#[test]
fn json_errors_name_the_field() {
    let r = prefix();
    let t = r.message("test_msgs/msg/Mixed").unwrap();
    let cases = [
        (json!({"nmae": "x"}), "nmae", "has no field 'nmae'"),
        (json!({"header": {"stamp": {"sec": "one"}}}), "header.stamp.sec", "expected an integer"),
        (json!({"header": {"stamp": {"nanosec": -1}}}), "header.stamp.nanosec", "out of range"),
        (json!({"xyz": [1, 2]}), "xyz", "exactly 3"),
        (json!({"name": "toolong"}), "name", "at most 4"),
        (json!({"few": [1, 2, 3]}), "few", "at most 2"),
        (json!({"data": "***"}), "data", "base64"),
        (json!({"data": [1, 256]}), "data[1]", "out of range"),
        (json!({"items": [{}, {"int8_value": 1.5}]}), "items[1].int8_value", "expected an integer"),
        (json!({"flag": "yes"}), "flag", "expected a bool"),
        (json!([1, 2]), "(message)", "expected an object"),
    ];
    for (j, path, text) in cases {
        let e = json::from_json(&t, &j).unwrap_err();
        assert_eq!(e.path, path, "{j}: {e}");
        assert!(e.message.contains(text), "{j}: {e}");
    }
    // Integral floats are fine for integers; integers for floats.
    let v = json::from_json(&t, &json!({"items": [{"int32_value": 3.0, "float32_value": 2}]})).unwrap();
    assert_eq!(v.get("items").unwrap().path("[0].int32_value"), Some(&Value::Int32(3)));
}

#[test]
fn decoding_bad_data_is_an_error_never_a_panic() {
    let r = prefix();
    let t = r.message("test_msgs/msg/Mixed").unwrap();
    let v = json::from_json(&t, &json!({"header": {"frame_id": "map"}, "data": [1, 2, 3], "items": [{}, {}], "few": [1]})).unwrap();
    let good = cdr::encode(&v).unwrap();
    assert!(cdr::decode(&t, &good).is_ok());
    for n in 0..good.len() {
        assert!(cdr::decode(&t, &good[..n]).is_err(), "truncated to {n}");
    }
    // A sequence count far beyond the data: an error, not a 4 GB allocation.
    let mut huge = good.clone();
    let data_count_at = 4 + 8 + 4 + 4; // stamp, frame_id length, "map\0"
    huge[data_count_at..data_count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(cdr::decode(&t, &huge), Err(CdrError::Truncated { .. })));
    // Over a bound.
    let few = r.message("test_msgs/msg/WStrings").unwrap();
    let mut over = cdr::encode(&json::from_json(&few, &json!({"some": ["a"]})).unwrap()).unwrap();
    let at = over.len() - 8; // count of `some`, then one wstring of count 1 and one unit
    over[at - 4..at].copy_from_slice(&5u32.to_le_bytes());
    assert!(cdr::decode(&few, &over).is_err());
    // Garbage: deterministic pseudo-random bytes of every length up to 300.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for len in 0..300 {
        let mut buf = vec![0u8, 1, 0, 0];
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(x as u8);
        }
        let _ = cdr::decode(&t, &buf);
    }
    assert!(matches!(cdr::decode(&t, &[0x00, 0x03, 0, 0, 1]), Err(CdrError::Encapsulation(0, 3))));
}

#[test]
fn big_endian_cdr_decodes() {
    let r = prefix();
    let t = r.message("std_msgs/msg/Header").unwrap();
    let be = [0x00, 0x00, 0x00, 0x00, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 2, b'a', 0];
    let j = cdr_to_json(&t, &be).unwrap();
    assert_eq!(j, json!({"stamp": {"sec": 7, "nanosec": 9}, "frame_id": "a"}));
}

#[test]
fn encoder_checks_hand_made_values() {
    let r = prefix();
    let t = r.message("test_msgs/msg/Mixed").unwrap();
    let mut v = t.default_value();
    *v.path_mut("big").unwrap() = Value::Int32(1);
    let Value::Message(m) = &v else { panic!() };
    let e = cdr::encode(m).unwrap_err().to_string();
    assert!(e.contains("big") && e.contains("expected uint64"), "{e}");
}

#[test]
fn paths_and_numeric_limits() {
    let r = prefix();
    let t = r.message("test_msgs/msg/Mixed").unwrap();
    let mut v = Value::Message(json::from_json(&t, &json!({"items": [{"float64_value": 0.9, "uint8_value": 3}]})).unwrap());
    assert_eq!(v.path("items[0].float64_value").and_then(Value::as_f64), Some(0.9));
    assert!(v.path_mut("items[0].float64_value").unwrap().set_f64(0.5));
    assert_eq!(v.path("items[0].float64_value"), Some(&Value::Float64(0.5)));
    let u = v.path_mut("items[0].uint8_value").unwrap();
    assert!(u.set_f64(300.0));
    assert_eq!(*u, Value::Uint8(255));
    assert!(v.path("items[1]").is_none());
    assert!(v.path("header.nope").is_none());
}

#[test]
fn non_finite_floats_are_null_in_json() {
    let r = prefix();
    let t = r.message("std_msgs/msg/Float64").unwrap();
    let v = json::from_json(&t, &json!({"data": "nan"})).unwrap();
    assert!(matches!(v.get("data"), Some(Value::Float64(x)) if x.is_nan()));
    assert_eq!(json::message_to_json(&v), json!({"data": null}));
}
