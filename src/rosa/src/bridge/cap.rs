//! Replies that never blow a model's context: a message as JSON with long arrays elided (the
//! first items kept, the count said), long strings (base64 data included) cut, and the whole
//! brought under a byte budget by tightening those bounds until it fits. No r2r here.

use serde_json::{json, Value as Json};

/// Bounds of one reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Caps {
    /// Items kept of an array (the rest elided, counted).
    pub max_items: usize,
    /// Characters kept of a string.
    pub max_chars: usize,
    /// Bytes of the JSON text at most.
    pub max_bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self { max_items: 32, max_chars: 2000, max_bytes: 20_000 }
    }
}

/// What capping did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capped {
    pub json: Json,
    /// One note per kind of elision, e.g. "3 arrays cut to 32 items (largest: 1000000)".
    pub notes: Vec<String>,
}

#[derive(Default)]
struct Stats {
    arrays: usize,
    largest: usize,
    strings: usize,
    longest: usize,
}

fn walk(v: &Json, items: usize, chars: usize, st: &mut Stats) -> Json {
    match v {
        Json::Array(a) if a.len() > items => {
            st.arrays += 1;
            st.largest = st.largest.max(a.len());
            let mut out: Vec<Json> = a[..items].iter().map(|x| walk(x, items, chars, st)).collect();
            out.push(json!(format!("… {} more items elided ({} in all)", a.len() - items, a.len())));
            Json::Array(out)
        }
        Json::Array(a) => Json::Array(a.iter().map(|x| walk(x, items, chars, st)).collect()),
        Json::Object(m) => Json::Object(m.iter().map(|(k, x)| (k.clone(), walk(x, items, chars, st))).collect()),
        Json::String(s) if s.chars().count() > chars => {
            st.strings += 1;
            let n = s.chars().count();
            st.longest = st.longest.max(n);
            let head: String = s.chars().take(chars).collect();
            Json::String(format!("{head}… ({} more characters elided, {n} in all)", n - chars))
        }
        other => other.clone(),
    }
}

/// `v` within `caps`. Arrays and strings are cut first to the caps' bounds, then, while the text
/// is still over `max_bytes`, the bounds are halved (down to 1 item and 16 characters); if even
/// that does not fit, a summary of the top-level structure replaces it.
pub fn cap(v: &Json, caps: Caps) -> Capped {
    let (mut items, mut chars) = (caps.max_items.max(1), caps.max_chars.max(16));
    loop {
        let mut st = Stats::default();
        let out = walk(v, items, chars, &mut st);
        let size = serde_json::to_string(&out).map_or(usize::MAX, |s| s.len());
        if size <= caps.max_bytes || (items == 1 && chars == 16) {
            let mut notes = Vec::new();
            if st.arrays > 0 {
                notes.push(format!("{} array(s) cut to {items} items (largest had {})", st.arrays, st.largest));
            }
            if st.strings > 0 {
                notes.push(format!("{} string(s) cut to {chars} characters (longest had {})", st.strings, st.longest));
            }
            if size > caps.max_bytes {
                let keys: Vec<String> = match v {
                    Json::Object(m) => m.keys().cloned().collect(),
                    _ => vec![],
                };
                notes.push(format!("the message is still {size} bytes capped, over the reply budget of {} bytes: only its fields are listed", caps.max_bytes));
                return Capped { json: json!({ "fields": keys }), notes };
            }
            return Capped { json: out, notes };
        }
        items = (items / 2).max(1);
        chars = (chars / 2).max(16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_messages_are_untouched() {
        let v = json!({"linear": {"x": 0.1}, "data": [1, 2, 3], "s": "hi"});
        let c = cap(&v, Caps::default());
        assert_eq!(c.json, v);
        assert!(c.notes.is_empty());
    }

    #[test]
    fn long_arrays_and_strings_are_elided_with_counts() {
        let v = json!({"ranges": (0..1000).collect::<Vec<_>>(), "data": "A".repeat(5000)});
        let c = cap(&v, Caps { max_items: 10, max_chars: 100, max_bytes: 100_000 });
        let r = c.json["ranges"].as_array().unwrap();
        assert_eq!(r.len(), 11);
        assert_eq!(r[9], json!(9));
        assert!(r[10].as_str().unwrap().contains("990 more items elided (1000 in all)"));
        assert!(c.json["data"].as_str().unwrap().contains("4900 more characters elided, 5000 in all"));
        assert_eq!(c.notes.len(), 2);
    }

    #[test]
    fn the_byte_budget_holds() {
        // 2 MB of base64 and a large nested array.
        let v = json!({"data": "QUJD".repeat(500_000), "points": (0..10_000).map(|i| json!({"x": i, "y": i, "z": i})).collect::<Vec<_>>()});
        for budget in [500, 2000, 20_000] {
            let c = cap(&v, Caps { max_bytes: budget, ..Caps::default() });
            let n = serde_json::to_string(&c.json).unwrap().len();
            assert!(n <= budget, "{n} > {budget}");
            assert!(!c.notes.is_empty());
        }
        let tiny = cap(&v, Caps { max_bytes: 30, ..Caps::default() });
        assert_eq!(tiny.json, json!({"fields": ["data", "points"]}));
    }
}
