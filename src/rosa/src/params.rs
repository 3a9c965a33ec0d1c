//! Node parameters the ROS 2 way: every parameter declared with its type, description and range;
//! those a node applies at run time can be set, the others are read-only and a set is refused
//! with the reason; a value of the wrong type or out of range is refused too.
//!
//! A node's parameters are one config struct (`serde` for the values, `schemars` for the
//! declarations: doc comments are the descriptions, `#[schemars(range(min, max))]` the ranges);
//! [`NodeParams::DYNAMIC`] names the ones the node applies when they change. No r2r in here: the
//! parameter services (`ros::declare_params`) turn ROS messages into [`Kind`] + JSON values.

use crate::config::{self, ConfigError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A ROS parameter type (`rcl_interfaces/msg/ParameterType`), byte arrays aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Integer,
    Double,
    String,
    BoolArray,
    IntegerArray,
    DoubleArray,
    StringArray,
}

impl Kind {
    /// The `rcl_interfaces/msg/ParameterType` constant.
    pub fn ros_type(self) -> u8 {
        match self {
            Kind::Bool => 1,
            Kind::Integer => 2,
            Kind::Double => 3,
            Kind::String => 4,
            Kind::BoolArray => 6,
            Kind::IntegerArray => 7,
            Kind::DoubleArray => 8,
            Kind::StringArray => 9,
        }
    }

    pub fn from_ros(t: u8) -> Option<Kind> {
        Some(match t {
            1 => Kind::Bool,
            2 => Kind::Integer,
            3 => Kind::Double,
            4 => Kind::String,
            6 => Kind::BoolArray,
            7 => Kind::IntegerArray,
            8 => Kind::DoubleArray,
            9 => Kind::StringArray,
            _ => return None,
        })
    }

    /// The name `ros2 param describe` uses.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Integer => "integer",
            Kind::Double => "double",
            Kind::String => "string",
            Kind::BoolArray => "boolean array",
            Kind::IntegerArray => "integer array",
            Kind::DoubleArray => "double array",
            Kind::StringArray => "string array",
        }
    }

    /// The name with its article: "an integer", "a double".
    pub fn a(self) -> String {
        let n = self.name();
        if n.starts_with(['a', 'e', 'i', 'o', 'u']) { format!("an {n}") } else { format!("a {n}") }
    }

    fn is_array(self) -> bool {
        matches!(self, Kind::BoolArray | Kind::IntegerArray | Kind::DoubleArray | Kind::StringArray)
    }
}

/// The allowed values of a number parameter (ROS allows one range per parameter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    Integer { from: i64, to: i64 },
    Double { from: f64, to: f64 },
}

/// What `ros2 param describe` shows of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    pub read_only: bool,
    pub range: Option<Range>,
    pub additional_constraints: String,
}

/// Said of every read-only parameter (descriptor and refusals).
pub const READ_ONLY_REASON: &str = "read when the node starts; set it in the parameters file (or with -p) and restart the node";

/// A node's parameter struct.
pub trait NodeParams: Serialize + DeserializeOwned + schemars::JsonSchema + Clone + Send + Sync + 'static {
    /// The parameters the node applies when they are set at run time: exact names, or prefixes
    /// ending in `.` (`"llm."`). Every other parameter is read-only.
    const DYNAMIC: &'static [&'static str];

    /// Checks across parameters, beyond each one's type and range (at start and on every set).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("the parameter declarations of {0} cannot be derived: {1}")]
    Schema(String, String),
}

/// A node's declared parameters and their current values.
pub struct Declared<T> {
    node: String,
    descriptors: Vec<Descriptor>,
    index: HashMap<String, usize>,
    values: Vec<Value>,
    config: T,
}

impl<T: NodeParams> Declared<T> {
    /// Declare `T`'s parameters for `node` (its fully qualified name, for messages), with the
    /// values `given` (params files and `-p`; the defaults of `T` for the others). Returns the
    /// names given that are not parameters of this node (ignored, as rclcpp does).
    pub fn load(node: &str, given: Vec<(String, Value)>) -> Result<(Self, Vec<String>), ParamError> {
        let descriptors = descriptors::<T>().map_err(|e| ParamError::Schema(node.into(), e))?;
        let index: HashMap<String, usize> = descriptors.iter().enumerate().map(|(i, d)| (d.name.clone(), i)).collect();
        let mut ignored = Vec::new();
        let mut checked = Vec::new();
        for (name, value) in given {
            let Some(&i) = index.get(&name) else {
                ignored.push(name);
                continue;
            };
            let d = &descriptors[i];
            let kind = kind_of_json(&value, d.kind).ok_or_else(|| {
                ParamError::Invalid(format!("{node}: parameter `{name}` must be {} (got {})", d.kind.a(), describe_json(&value)))
            })?;
            let value = coerce(d, kind, value).map_err(|why| ParamError::Invalid(format!("{node}: {why}")))?;
            checked.push((name, value));
        }
        let config: T = config::from_params(checked)?;
        config.check().map_err(|why| ParamError::Invalid(format!("{node}: {why}")))?;
        let flat: HashMap<String, Value> = config::to_params(&config).into_iter().collect();
        let mut values = Vec::with_capacity(descriptors.len());
        for d in &descriptors {
            let v = flat.get(&d.name).cloned().unwrap_or(Value::Null);
            // The defaults must satisfy the declarations too (a test checks every node's).
            let kind = kind_of_json(&v, d.kind)
                .ok_or_else(|| ParamError::Invalid(format!("{node}: the default of `{}` is not {}", d.name, d.kind.a())))?;
            values.push(coerce(d, kind, v).map_err(|why| ParamError::Invalid(format!("{node}: {why}")))?);
        }
        Ok((Self { node: node.into(), descriptors, index, values, config }, ignored))
    }

    pub fn config(&self) -> &T {
        &self.config
    }

    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    pub fn descriptor(&self, name: &str) -> Option<&Descriptor> {
        self.index.get(name).map(|&i| &self.descriptors[i])
    }

    /// The current value of a declared parameter.
    pub fn get(&self, name: &str) -> Option<(Kind, &Value)> {
        self.index.get(name).map(|&i| (self.descriptors[i].kind, &self.values[i]))
    }

    /// Every parameter with its value, in declaration order.
    pub fn all(&self) -> impl Iterator<Item = (&Descriptor, &Value)> {
        self.descriptors.iter().zip(self.values.iter())
    }

    /// Set parameters all at once, or none: each must be declared, settable at run time, of its
    /// type (an integer is taken for a double) and in its range, and the node's config must
    /// accept the result. Returns the names whose value changed; on refusal, why.
    pub fn set(&mut self, changes: &[(String, Option<Kind>, Value)]) -> Result<Vec<String>, String> {
        let mut values = self.values.clone();
        let mut changed = Vec::new();
        for (name, kind, value) in changes {
            let Some(&i) = self.index.get(name) else {
                return Err(format!("parameter `{name}` is not declared by {}", self.node));
            };
            let d = &self.descriptors[i];
            if d.read_only {
                return Err(format!("parameter `{name}` is read-only: it is {READ_ONLY_REASON}"));
            }
            let Some(kind) = *kind else {
                return Err(format!("parameter `{name}` cannot be unset (it is {})", d.kind.a()));
            };
            let v = coerce(d, kind, value.clone())?;
            if values[i] != v {
                values[i] = v;
                changed.push(name.clone());
            }
        }
        let config: T = config::from_params(self.descriptors.iter().map(|d| d.name.clone()).zip(values.iter().cloned()))
            .map_err(|e| e.to_string())?;
        config.check()?;
        self.values = values;
        self.config = config;
        Ok(changed)
    }
}

/// Whether `name` is one of the dynamic names (exact, or under a `prefix.`).
fn is_dynamic(dynamic: &[&str], name: &str) -> bool {
    dynamic.iter().any(|d| if d.ends_with('.') { name.starts_with(d) } else { name == *d })
}

/// A value of kind `kind` for the parameter `d`: the same kind, or an integer (array) for a double
/// (array), or an empty array for any array; in range; strings without NUL.
fn coerce(d: &Descriptor, kind: Kind, value: Value) -> Result<Value, String> {
    let name = &d.name;
    let wrong = || format!("parameter `{name}` is {}; got {}", d.kind.a(), kind.a());
    // JSON has no NaN or infinity: such a double arrives as null.
    let non_finite = match &value {
        Value::Null => true,
        Value::Array(a) => a.iter().any(Value::is_null),
        _ => false,
    };
    if non_finite && matches!(kind, Kind::Double | Kind::DoubleArray) {
        return Err(format!("parameter `{name}` must be a finite number"));
    }
    let value = match (d.kind, kind) {
        (a, b) if a == b => value,
        (Kind::Double, Kind::Integer) => Value::from(value.as_f64().ok_or_else(wrong)?),
        (Kind::DoubleArray, Kind::IntegerArray) => {
            Value::from(value.as_array().ok_or_else(wrong)?.iter().filter_map(Value::as_f64).collect::<Vec<f64>>())
        }
        (a, b) if a.is_array() && b.is_array() && value.as_array().is_some_and(|v| v.is_empty()) => value,
        _ => return Err(wrong()),
    };
    match d.range {
        Some(Range::Integer { from, to }) => {
            let v = value.as_i64().ok_or_else(wrong)?;
            if v < from || v > to {
                return Err(format!("parameter `{name}` = {v} is out of its range [{from}, {to}]"));
            }
        }
        Some(Range::Double { from, to }) => {
            let v = value.as_f64().ok_or_else(wrong)?;
            // NaN is in no range.
            if !(v >= from && v <= to) {
                return Err(format!("parameter `{name}` = {v} is out of its range [{from}, {to}]"));
            }
        }
        None => {}
    }
    let has_nul = |s: &str| s.contains('\0');
    let nul = match &value {
        Value::String(s) => has_nul(s),
        Value::Array(a) => a.iter().any(|x| x.as_str().is_some_and(has_nul)),
        _ => false,
    };
    if nul {
        return Err(format!("parameter `{name}`: strings may not contain NUL characters"));
    }
    Ok(value)
}

/// The kind of a JSON value given for a parameter of kind `want` (params files reach us as JSON:
/// the type of an empty array is the declared one).
fn kind_of_json(v: &Value, want: Kind) -> Option<Kind> {
    Some(match v {
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.is_i64() => Kind::Integer,
        Value::Number(n) if n.is_u64() => return None, // beyond i64: no ROS integer holds it
        Value::Number(_) => Kind::Double,
        Value::String(_) => Kind::String,
        Value::Array(a) if a.is_empty() => want,
        Value::Array(a) if a.iter().all(Value::is_boolean) => Kind::BoolArray,
        Value::Array(a) if a.iter().all(Value::is_i64) => Kind::IntegerArray,
        Value::Array(a) if a.iter().all(Value::is_number) => Kind::DoubleArray,
        Value::Array(a) if a.iter().all(Value::is_string) => Kind::StringArray,
        _ => return None,
    })
}

fn describe_json(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) if n.is_i64() => "an integer".into(),
        Value::Number(_) => "a number".into(),
        Value::String(s) => format!("the string {:?}", crate::llm::truncate(s, 60)),
        Value::Array(_) => "a list of mixed or unsupported values".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The declarations of `T`'s parameters, from its JSON schema: one per leaf field, named by its
/// dotted path, in name order.
pub fn descriptors<T: NodeParams>() -> Result<Vec<Descriptor>, String> {
    let schema = schemars::schema_for!(T);
    let root = schema.as_value();
    let defs = root.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut out = Vec::new();
    walk(root, &defs, "", None, &mut out)?;
    for d in &mut out {
        d.read_only = !is_dynamic(T::DYNAMIC, &d.name);
        d.additional_constraints = if d.read_only {
            format!("read-only: {READ_ONLY_REASON}")
        } else {
            "applied at once when set".into()
        };
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    for d in T::DYNAMIC {
        if !out.iter().any(|p| is_dynamic(&[d], &p.name)) {
            return Err(format!("DYNAMIC names `{d}`, which is no parameter"));
        }
    }
    Ok(out)
}

fn resolve<'a>(mut s: &'a Value, defs: &'a Map<String, Value>) -> Result<&'a Value, String> {
    for _ in 0..16 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap_or_default();
                s = defs.get(name).ok_or_else(|| format!("unresolved {r}"))?;
            }
            None => return Ok(s),
        }
    }
    Err("$ref loop".into())
}

fn walk(field: &Value, defs: &Map<String, Value>, name: &str, doc: Option<&str>, out: &mut Vec<Descriptor>) -> Result<(), String> {
    let doc = field.get("description").and_then(Value::as_str).or(doc);
    let s = resolve(field, defs)?;
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let child = if name.is_empty() { k.clone() } else { format!("{name}.{k}") };
            walk(v, defs, &child, None, out)?;
        }
        return Ok(());
    }
    let ty = s.get("type").and_then(Value::as_str).ok_or_else(|| format!("`{name}` has no simple type"))?;
    let kind = match ty {
        "boolean" => Kind::Bool,
        "integer" => Kind::Integer,
        "number" => Kind::Double,
        "string" => Kind::String,
        "array" => match s.get("items").map(|i| resolve(i, defs)).transpose()?.and_then(|i| i.get("type")).and_then(Value::as_str) {
            Some("boolean") => Kind::BoolArray,
            Some("integer") => Kind::IntegerArray,
            Some("number") => Kind::DoubleArray,
            Some("string") => Kind::StringArray,
            other => return Err(format!("`{name}`: arrays of {other:?} are no ROS parameter")),
        },
        other => return Err(format!("`{name}`: type {other} is no ROS parameter")),
    };
    let min = s.get("minimum").and_then(Value::as_f64);
    let max = s.get("maximum").and_then(Value::as_f64);
    let range = match (kind, min, max) {
        (_, None, None) => None,
        (Kind::Integer, lo, hi) => Some(Range::Integer {
            from: lo.map_or(i64::MIN, |v| v as i64),
            to: hi.map_or(i64::MAX, |v| if v >= i64::MAX as f64 { i64::MAX } else { v as i64 }),
        }),
        (Kind::Double, lo, hi) => Some(Range::Double { from: lo.unwrap_or(f64::MIN), to: hi.unwrap_or(f64::MAX) }),
        _ => None,
    };
    out.push(Descriptor {
        name: name.to_string(),
        kind,
        description: doc.unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" "),
        read_only: true,
        range,
        additional_constraints: String::new(),
    });
    Ok(())
}

/// `rcl_interfaces/srv/ListParameters`: the names under `prefixes` (all when empty) at most
/// `depth` levels down (0 = recursive), and the prefixes of those names.
pub fn list<'a>(names: impl Iterator<Item = &'a str>, prefixes: &[String], depth: u64) -> (Vec<String>, Vec<String>) {
    let levels = |s: &str| s.matches('.').count() as u64;
    let mut out = (Vec::new(), Vec::new());
    for name in names {
        let ok = if prefixes.is_empty() {
            depth == 0 || levels(name) < depth
        } else {
            prefixes.iter().any(|p| {
                name == p
                    || name.strip_prefix(p.as_str()).and_then(|r| r.strip_prefix('.')).is_some_and(|rest| depth == 0 || levels(rest) < depth)
            })
        };
        if ok {
            out.0.push(name.to_string());
            if let Some((prefix, _)) = name.rsplit_once('.') {
                if !out.1.iter().any(|p| p == prefix) {
                    out.1.push(prefix.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
    #[serde(default)]
    struct Inner {
        /// Inner URLs.
        urls: Vec<String>,
        /// A timeout, seconds.
        #[schemars(range(min = 0.1, max = 600.0))]
        timeout_sec: f64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
    #[serde(default)]
    struct P {
        /// Concurrent things.
        #[schemars(range(min = 1, max = 64))]
        max: u64,
        /// A file read at start.
        file: String,
        inner: Inner,
        flag: bool,
    }

    impl Default for P {
        fn default() -> Self {
            Self { max: 4, file: "f".into(), inner: Inner { urls: vec!["a".into()], timeout_sec: 5.0 }, flag: false }
        }
    }

    impl NodeParams for P {
        const DYNAMIC: &'static [&'static str] = &["max", "inner.", "flag"];
        fn check(&self) -> Result<(), String> {
            if self.flag && self.max > 10 {
                return Err("flag needs max <= 10".into());
            }
            Ok(())
        }
    }

    fn load(given: Vec<(&str, Value)>) -> Result<Declared<P>, ParamError> {
        Declared::<P>::load("/t/node", given.into_iter().map(|(k, v)| (k.to_string(), v)).collect()).map(|(d, _)| d)
    }

    #[test]
    fn declarations_come_from_the_struct() {
        let d = descriptors::<P>().unwrap();
        let names: Vec<_> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["file", "flag", "inner.timeout_sec", "inner.urls", "max"]);
        let max = &d[4];
        assert_eq!((max.kind, max.description.as_str(), max.read_only), (Kind::Integer, "Concurrent things.", false));
        assert_eq!(max.range, Some(Range::Integer { from: 1, to: 64 }));
        assert_eq!(d[2].range, Some(Range::Double { from: 0.1, to: 600.0 }));
        assert_eq!(d[3].kind, Kind::StringArray);
        assert!(d[0].read_only && d[0].additional_constraints.contains("restart"));
    }

    #[test]
    fn load_takes_given_values_checks_them_and_names_the_others() {
        let (p, ignored) = Declared::<P>::load("/t/node", vec![
            ("max".into(), json!(8)),
            ("inner.timeout_sec".into(), json!(3)), // an integer for a double
            ("llm.urls".into(), json!(["x"])),
        ])
        .unwrap();
        assert_eq!(p.config().max, 8);
        assert_eq!(p.config().inner.timeout_sec, 3.0);
        assert_eq!(p.get("inner.timeout_sec").unwrap().1, &json!(3.0));
        assert_eq!(ignored, ["llm.urls"]);
        let e = load(vec![("max", json!(0))]).err().unwrap().to_string();
        assert!(e.contains("out of its range [1, 64]"), "{e}");
        let e = load(vec![("max", json!("four"))]).err().unwrap().to_string();
        assert!(e.contains("is an integer; got a string"), "{e}");
        let e = load(vec![("flag", json!(true)), ("max", json!(20))]).err().unwrap().to_string();
        assert!(e.contains("flag needs"), "{e}");
    }

    #[test]
    fn set_applies_or_refuses_with_the_reason() {
        let mut p = load(vec![]).unwrap();
        assert_eq!(p.set(&[("max".into(), Some(Kind::Integer), json!(1))]).unwrap(), ["max"]);
        assert_eq!(p.config().max, 1);
        // Same value: nothing changed.
        assert!(p.set(&[("max".into(), Some(Kind::Integer), json!(1))]).unwrap().is_empty());
        let refusals = [
            (("max", Some(Kind::String), json!("four")), "is an integer; got a string"),
            (("max", Some(Kind::Double), json!(2.0)), "got a double"),
            (("max", Some(Kind::Integer), json!(65)), "out of its range"),
            (("file", Some(Kind::String), json!("g")), "read-only"),
            (("nope", Some(Kind::Bool), json!(true)), "not declared by /t/node"),
            (("max", None, Value::Null), "cannot be unset"),
            (("inner.timeout_sec", Some(Kind::Double), json!(f64::NAN)), "finite"),
            (("inner.timeout_sec", Some(Kind::Double), json!(0.0)), "out of its range"),
            (("inner.urls", Some(Kind::StringArray), json!(["a\0b"])), "NUL"),
        ];
        for ((name, kind, value), why) in refusals {
            let e = p.set(&[(name.into(), kind, value)]).unwrap_err();
            assert!(e.contains(why), "{name}: {e}");
        }
        assert_eq!(p.config().max, 1, "refusals change nothing");
        // An integer for a double, an empty list for a string list.
        p.set(&[("inner.timeout_sec".into(), Some(Kind::Integer), json!(7))]).unwrap();
        p.set(&[("inner.urls".into(), Some(Kind::BoolArray), json!([]))]).unwrap();
        assert_eq!(p.config().inner, Inner { urls: vec![], timeout_sec: 7.0 });
        // All or nothing, and the cross-parameter check.
        let e = p.set(&[("max".into(), Some(Kind::Integer), json!(20)), ("flag".into(), Some(Kind::Bool), json!(true))]).unwrap_err();
        assert!(e.contains("flag needs"), "{e}");
        assert_eq!((p.config().max, p.config().flag), (1, false));
    }

    /// Every node: each parameter described, each number with both bounds, and the shipped
    /// config/rosa.yaml (its `/**` section and the node's) accepted.
    fn check_node<T: NodeParams>(section: &str) -> Vec<String> {
        for p in descriptors::<T>().unwrap() {
            assert!(!p.description.is_empty(), "{section}: `{}` has no description", p.name);
            match (p.kind, p.range) {
                (Kind::Integer, Some(Range::Integer { from, to })) => assert!(from > i64::MIN && to < i64::MAX, "{section}: {}", p.name),
                (Kind::Double, Some(Range::Double { from, to })) => assert!(from > f64::MIN && to < f64::MAX, "{section}: {}", p.name),
                (Kind::Integer | Kind::Double, r) => panic!("{section}: `{}` has no range ({r:?})", p.name),
                _ => {}
            }
        }
        fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                    }
                }
                v => out.push((prefix.to_string(), v.clone())),
            }
        }
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/rosa.yaml")).unwrap();
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        let mut given = Vec::new();
        for s in ["/**", section] {
            flatten("", &doc[s]["ros__parameters"], &mut given);
        }
        let (_, ignored) = Declared::<T>::load(section, given).unwrap_or_else(|e| panic!("{section}: {e}"));
        ignored
    }

    #[test]
    fn every_node_declares_described_bounded_parameters_and_takes_the_shipped_file() {
        use crate::nodes::{kernel::KernelParams, process_manager::ProcessManagerParams, reachy_driver::ReachyParams};
        assert!(check_node::<KernelParams>("/rosa/kernel").is_empty());
        assert!(check_node::<ProcessManagerParams>("/rosa/process_manager").is_empty());
        let ignored = check_node::<crate::nodes::bag::RecorderParams>("/rosa/bag_recorder");
        assert!(ignored.iter().all(|n| n.starts_with("llm.") || n == "robots_file"), "{ignored:?}");
        // These two take none of the /** section's llm.* and robots_file.
        let ignored = check_node::<ReachyParams>("/rosa/reachy_driver");
        assert!(ignored.iter().all(|n| n.starts_with("llm.") || n == "robots_file"), "{ignored:?}");
        let ignored = check_node::<crate::nodes::llm_server::LlmServerParams>("/rosa/llm_server");
        assert!(ignored.iter().all(|n| n.starts_with("llm.") || n == "robots_file"), "{ignored:?}");
        let ignored = check_node::<crate::nodes::rosa_web::WebParams>("/rosa/rosa_web");
        assert!(ignored.iter().all(|n| n.starts_with("llm.") || n == "robots_file"), "{ignored:?}");
        let ignored = check_node::<crate::stt::params::SttParams>("/rosa/stt");
        assert!(ignored.contains(&"robots_file".to_string()) && ignored.iter().any(|n| n == "llm.urls"), "{ignored:?}");
        let stt = descriptors::<crate::stt::params::SttParams>().unwrap();
        assert!(stt.iter().all(|d| !d.name.starts_with("llm.") && d.name != "robots_file"));
        let dynamic: Vec<_> = stt.iter().filter(|d| !d.read_only).map(|d| d.name.as_str()).collect();
        assert!(dynamic.contains(&"vad.end_silence_sec") && dynamic.contains(&"wake_word") && !dynamic.contains(&"model"), "{dynamic:?}");
    }

    #[test]
    fn listing_follows_prefixes_and_depth() {
        let names = ["a", "llm.urls", "llm.models", "vad.x.y"];
        let (n, p) = list(names.iter().copied(), &[], 0);
        assert_eq!(n.len(), 4);
        assert_eq!(p, ["llm", "vad.x"]);
        let (n, _) = list(names.iter().copied(), &[], 1);
        assert_eq!(n, ["a"]);
        let (n, _) = list(names.iter().copied(), &["llm".into()], 1);
        assert_eq!(n, ["llm.urls", "llm.models"]);
        let (n, _) = list(names.iter().copied(), &["vad".into()], 1);
        assert!(n.is_empty());
    }
}
