//! Interface types found at run time: names, the `.msg`/`.srv`/`.action` parser and the registry
//! that finds definitions on every prefix of `AMENT_PREFIX_PATH` and resolves them recursively into
//! [`MessageType`]s (fields with their types, defaults and constants), the layout the CDR and JSON
//! codecs walk. No r2r in here.
//!
//! Parsing follows `rosidl_adapter` (the reference parser of ROS 2): a `#` starts a comment, a line
//! is `TYPE NAME [DEFAULT]` or `TYPE NAME=VALUE` (a constant), `---` separates the parts of a
//! service or an action. A type named without a package is in the same package (`Foo` in
//! `pkg/srv/Bar.srv` is `pkg/msg/Foo`).

use super::value::{MessageValue, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TypeError {
    #[error("invalid type name '{0}' (expected pkg/msg/Type, pkg/srv/Type or pkg/action/Type)")]
    InvalidName(String),
    #[error("type {name} is not installed (looked for {looked_for} on AMENT_PREFIX_PATH: {prefixes})")]
    NotFound { name: String, looked_for: String, prefixes: String },
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{file}:{line}: {message}")]
    Parse { file: String, line: usize, message: String },
    #[error("type {0} refers to itself (directly or through its fields)")]
    Recursive(String),
}

/// `pkg/ns/Name`: `ns` is `msg`, `srv` or `action`; service and action parts are named as rosidl
/// names them (`pkg/srv/Foo_Request`, `pkg/action/Bar_Goal`, `pkg/action/Bar_SendGoal_Request`…).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeName {
    pub package: String,
    pub namespace: String,
    pub name: String,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 255
}

impl TypeName {
    /// `pkg/msg/Type`, `pkg/srv/Type`, `pkg/action/Type`, or `pkg/Type` (a message).
    pub fn parse(s: &str) -> Result<Self, TypeError> {
        let bad = || TypeError::InvalidName(s.to_string());
        let parts: Vec<&str> = s.split('/').collect();
        let (package, namespace, name) = match parts.as_slice() {
            [p, n] => (*p, "msg", *n),
            [p, ns, n] => (*p, *ns, *n),
            _ => return Err(bad()),
        };
        if !is_identifier(package) || !is_identifier(name) || !matches!(namespace, "msg" | "srv" | "action") {
            return Err(bad());
        }
        Ok(Self { package: package.into(), namespace: namespace.into(), name: name.into() })
    }

    pub fn new(package: &str, namespace: &str, name: &str) -> Self {
        Self { package: package.into(), namespace: namespace.into(), name: name.into() }
    }

    /// The C symbol infix rosidl uses: `pkg__msg__Type`.
    pub fn symbol(&self) -> String {
        format!("{}__{}__{}", self.package, self.namespace, self.name)
    }
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.package, self.namespace, self.name)
    }
}

/// The primitive types of ROS 2 interfaces (`byte` is an octet, `char` an unsigned 8-bit integer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Primitive {
    Bool,
    Byte,
    Char,
    Float32,
    Float64,
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
}

impl Primitive {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bool" => Self::Bool,
            "byte" => Self::Byte,
            "char" => Self::Char,
            "float32" => Self::Float32,
            "float64" => Self::Float64,
            "int8" => Self::Int8,
            "uint8" => Self::Uint8,
            "int16" => Self::Int16,
            "uint16" => Self::Uint16,
            "int32" => Self::Int32,
            "uint32" => Self::Uint32,
            "int64" => Self::Int64,
            "uint64" => Self::Uint64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Byte => "byte",
            Self::Char => "char",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
            Self::Int16 => "int16",
            Self::Uint16 => "uint16",
            Self::Int32 => "int32",
            Self::Uint32 => "uint32",
            Self::Int64 => "int64",
            Self::Uint64 => "uint64",
        }
    }

    /// Size in CDR (and in C), which is also its CDR alignment.
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::Byte | Self::Char | Self::Int8 | Self::Uint8 => 1,
            Self::Int16 | Self::Uint16 => 2,
            Self::Float32 | Self::Int32 | Self::Uint32 => 4,
            Self::Float64 | Self::Int64 | Self::Uint64 => 8,
        }
    }

    /// The zero value (`false`, `0`, `0.0`).
    pub fn zero(self) -> Value {
        match self {
            Self::Bool => Value::Bool(false),
            Self::Byte | Self::Char | Self::Uint8 => Value::Uint8(0),
            Self::Int8 => Value::Int8(0),
            Self::Int16 => Value::Int16(0),
            Self::Uint16 => Value::Uint16(0),
            Self::Int32 => Value::Int32(0),
            Self::Uint32 => Value::Uint32(0),
            Self::Int64 => Value::Int64(0),
            Self::Uint64 => Value::Uint64(0),
            Self::Float32 => Value::Float32(0.0),
            Self::Float64 => Value::Float64(0.0),
        }
    }

    /// Arrays of these are binary data (`Value::Bytes`, base64 in JSON), as rosbridge has them.
    pub fn is_binary(self) -> bool {
        matches!(self, Self::Uint8 | Self::Char)
    }
}

#[derive(Clone, Debug)]
pub enum BaseType {
    Primitive(Primitive),
    /// `string` / `string<=N` (N bytes).
    String { bound: Option<usize> },
    /// `wstring` / `wstring<=N` (N UTF-16 code units).
    WString { bound: Option<usize> },
    Message(Arc<MessageType>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrayKind {
    /// A single value.
    Single,
    /// `T[N]`: exactly N.
    Fixed(usize),
    /// `T[<=N]`: at most N.
    Bounded(usize),
    /// `T[]`.
    Unbounded,
}

#[derive(Clone, Debug)]
pub struct FieldType {
    pub base: BaseType,
    pub array: ArrayKind,
}

impl FieldType {
    pub fn is_array(&self) -> bool {
        self.array != ArrayKind::Single
    }

    /// `uint8`/`char` arrays: binary data.
    pub fn is_binary(&self) -> bool {
        self.is_array() && matches!(self.base, BaseType::Primitive(p) if p.is_binary())
    }

    /// The type as rosidl writes it in full (`geometry_msgs/msg/Point[<=3]`, `string<=10`).
    pub fn display(&self) -> String {
        let base = match &self.base {
            BaseType::Primitive(p) => p.name().to_string(),
            BaseType::String { bound: None } => "string".into(),
            BaseType::String { bound: Some(n) } => format!("string<={n}"),
            BaseType::WString { bound: None } => "wstring".into(),
            BaseType::WString { bound: Some(n) } => format!("wstring<={n}"),
            BaseType::Message(m) => m.name.to_string(),
        };
        match self.array {
            ArrayKind::Single => base,
            ArrayKind::Fixed(n) => format!("{base}[{n}]"),
            ArrayKind::Bounded(n) => format!("{base}[<={n}]"),
            ArrayKind::Unbounded => format!("{base}[]"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    /// The default the definition gives (`float32 x 1.5`); fields without one default to zero.
    pub default: Option<Value>,
}

#[derive(Clone, Debug)]
pub struct Constant {
    pub name: String,
    pub ty: FieldType,
    pub value: Value,
}

/// A message type with its fields resolved (nested types included): what the codecs walk.
#[derive(Debug)]
pub struct MessageType {
    pub name: TypeName,
    pub fields: Vec<Field>,
    pub constants: Vec<Constant>,
    /// The definition text (the `.msg` file, or this part of the `.srv`/`.action` file).
    pub text: String,
    /// The message types the text names, as written (package added where it was left out),
    /// sorted: what rosbag2 appends after the text in its `ros2msg` form.
    pub dependencies: Vec<String>,
}

impl MessageType {
    pub fn field(&self, name: &str) -> Option<(usize, &Field)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name)
    }

    /// The message with every field at its default.
    pub fn default_value(self: &Arc<Self>) -> Value {
        let fields = self.fields.iter().map(field_default).collect();
        Value::Message(MessageValue { ty: self.clone(), fields })
    }

    /// Every message type this one uses, transitively, each once, depth first.
    pub fn nested_types(self: &Arc<Self>) -> Vec<Arc<MessageType>> {
        fn walk(t: &Arc<MessageType>, out: &mut Vec<Arc<MessageType>>) {
            for f in &t.fields {
                if let BaseType::Message(m) = &f.ty.base {
                    if !out.iter().any(|o| o.name == m.name) {
                        out.push(m.clone());
                        walk(m, out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

/// The default of one field: its declared default, else zero / empty / a message of defaults.
pub fn field_default(f: &Field) -> Value {
    if let Some(d) = &f.default {
        return d.clone();
    }
    type_default(&f.ty)
}

pub(crate) fn type_default(ty: &FieldType) -> Value {
    let single = || match &ty.base {
        BaseType::Primitive(p) => p.zero(),
        BaseType::String { .. } | BaseType::WString { .. } => Value::String(String::new()),
        BaseType::Message(m) => m.default_value(),
    };
    match ty.array {
        ArrayKind::Single => single(),
        ArrayKind::Fixed(n) if ty.is_binary() => Value::Bytes(vec![0; n]),
        ArrayKind::Fixed(n) => Value::Array((0..n).map(|_| single()).collect()),
        _ if ty.is_binary() => Value::Bytes(Vec::new()),
        _ => Value::Array(Vec::new()),
    }
}

#[derive(Debug)]
pub struct ServiceType {
    pub name: TypeName,
    pub request: Arc<MessageType>,
    pub response: Arc<MessageType>,
    /// The whole `.srv` text.
    pub text: String,
}

/// An action and the messages and services rosidl derives from it.
#[derive(Debug)]
pub struct ActionType {
    pub name: TypeName,
    pub goal: Arc<MessageType>,
    pub result: Arc<MessageType>,
    pub feedback: Arc<MessageType>,
    /// `<A>_SendGoal` (`goal_id`, `goal` → `accepted`, `stamp`).
    pub send_goal: Arc<ServiceType>,
    /// `<A>_GetResult` (`goal_id` → `status`, `result`).
    pub get_result: Arc<ServiceType>,
    /// `<A>_FeedbackMessage` (`goal_id`, `feedback`), on `<action>/_action/feedback`.
    pub feedback_message: Arc<MessageType>,
    /// The whole `.action` text.
    pub text: String,
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// One line of a definition before its types are resolved.
#[derive(Clone, Debug)]
struct RawItem {
    line: usize,
    type_text: String,
    name: String,
    /// Field default or constant value text.
    value: Option<String>,
    constant: bool,
}

fn parse_items(text: &str, file: &str, first_line: usize) -> Result<Vec<RawItem>, TypeError> {
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = first_line + i;
        let err = |message: String| TypeError::Parse { file: file.to_string(), line: line_no, message };
        let line = raw.replace('\t', " ");
        let line = match line.find('#') {
            Some(i) => &line[..i],
            None => &line[..],
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (type_text, rest) = line.split_once(' ').ok_or_else(|| err(format!("'{line}' has a type but no name")))?;
        let rest = rest.trim_start();
        if let Some((name, value)) = rest.split_once('=') {
            items.push(RawItem {
                line: line_no,
                type_text: type_text.to_string(),
                name: name.trim().to_string(),
                value: Some(value.trim().to_string()),
                constant: true,
            });
        } else {
            let (name, default) = match rest.split_once(' ') {
                Some((n, d)) => (n, Some(d.trim().to_string()).filter(|d| !d.is_empty())),
                None => (rest, None),
            };
            if !is_identifier(name) {
                return Err(err(format!("invalid field name '{name}'")));
            }
            items.push(RawItem { line: line_no, type_text: type_text.to_string(), name: name.to_string(), value: default, constant: false });
        }
    }
    Ok(items)
}

/// The largest fixed array or bound accepted (a defence against absurd definitions).
const MAX_ARRAY: usize = 1 << 24;

/// `base`, string bound, array kind of a type text such as `string<=5[<=10]`.
fn split_type(text: &str) -> Result<(&str, ArrayKind), String> {
    if let Some(stripped) = text.strip_suffix(']') {
        let open = stripped.rfind('[').ok_or_else(|| format!("invalid array type '{text}'"))?;
        let inner = &stripped[open + 1..];
        let base = &stripped[..open];
        let parse_n = |s: &str| -> Result<usize, String> {
            let n: usize = s.trim().parse().map_err(|_| format!("invalid array size in '{text}'"))?;
            if n > MAX_ARRAY {
                return Err(format!("array size in '{text}' is beyond {MAX_ARRAY}"));
            }
            Ok(n)
        };
        let kind = if inner.is_empty() {
            ArrayKind::Unbounded
        } else if let Some(n) = inner.strip_prefix("<=") {
            ArrayKind::Bounded(parse_n(n)?)
        } else {
            ArrayKind::Fixed(parse_n(inner)?)
        };
        Ok((base, kind))
    } else {
        Ok((text, ArrayKind::Single))
    }
}

/// Split `[a, "b, c", 'd']` into its elements, quotes kept.
fn split_array_literal(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("an array value must be written [a, b, …], not '{text}'"))?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let mut item = String::new();
        if c == '"' || c == '\'' {
            item.push(c);
            chars.next();
            let mut closed = false;
            while let Some(ch) = chars.next() {
                item.push(ch);
                if ch == '\\' {
                    if let Some(n) = chars.next() {
                        item.push(n);
                    }
                } else if ch == c {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err(format!("unterminated string in '{text}'"));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            match chars.next() {
                None | Some(',') => {}
                Some(other) => return Err(format!("unexpected '{other}' in '{text}'")),
            }
        } else {
            for ch in chars.by_ref() {
                if ch == ',' {
                    break;
                }
                item.push(ch);
            }
            item = item.trim().to_string();
        }
        out.push(item);
    }
    Ok(out)
}

fn unquote(text: &str) -> String {
    let t = text.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            let inner = &t[1..t.len() - 1];
            return inner.replace(&format!("\\{q}"), &q.to_string());
        }
    }
    t.to_string()
}

fn parse_primitive_value(p: Primitive, text: &str) -> Result<Value, String> {
    let t = text.trim();
    let int = || -> Result<i128, String> { t.parse::<i128>().map_err(|_| format!("'{t}' is not an integer")) };
    let range = |v: i128, lo: i128, hi: i128| -> Result<i128, String> {
        if v < lo || v > hi {
            Err(format!("{v} is out of range for {}", p.name()))
        } else {
            Ok(v)
        }
    };
    Ok(match p {
        Primitive::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(format!("'{t}' is not a bool")),
        },
        Primitive::Float32 => Value::Float32(t.parse::<f32>().map_err(|_| format!("'{t}' is not a number"))?),
        Primitive::Float64 => Value::Float64(t.parse::<f64>().map_err(|_| format!("'{t}' is not a number"))?),
        Primitive::Int8 => Value::Int8(range(int()?, i8::MIN.into(), i8::MAX.into())? as i8),
        Primitive::Byte | Primitive::Char | Primitive::Uint8 => Value::Uint8(range(int()?, 0, u8::MAX.into())? as u8),
        Primitive::Int16 => Value::Int16(range(int()?, i16::MIN.into(), i16::MAX.into())? as i16),
        Primitive::Uint16 => Value::Uint16(range(int()?, 0, u16::MAX.into())? as u16),
        Primitive::Int32 => Value::Int32(range(int()?, i32::MIN.into(), i32::MAX.into())? as i32),
        Primitive::Uint32 => Value::Uint32(range(int()?, 0, u32::MAX.into())? as u32),
        Primitive::Int64 => Value::Int64(range(int()?, i64::MIN.into(), i64::MAX.into())? as i64),
        Primitive::Uint64 => Value::Uint64(range(int()?, 0, u64::MAX.into())? as u64),
    })
}

/// A default or constant value for a (non-message) field type.
fn parse_value(ty: &FieldType, text: &str) -> Result<Value, String> {
    let single = |t: &str| -> Result<Value, String> {
        match &ty.base {
            BaseType::Primitive(p) => parse_primitive_value(*p, t),
            BaseType::String { bound } | BaseType::WString { bound } => {
                let s = unquote(t);
                let len = if matches!(ty.base, BaseType::WString { .. }) { s.encode_utf16().count() } else { s.len() };
                if let Some(b) = bound {
                    if len > *b {
                        return Err(format!("'{s}' is longer than the bound {b}"));
                    }
                }
                Ok(Value::String(s))
            }
            BaseType::Message(_) => Err("a message field cannot have a default value".into()),
        }
    };
    if !ty.is_array() {
        return single(text);
    }
    let items = split_array_literal(text)?;
    match ty.array {
        ArrayKind::Fixed(n) if items.len() != n => return Err(format!("{} values given for an array of {n}", items.len())),
        ArrayKind::Bounded(n) if items.len() > n => return Err(format!("{} values given for an array of at most {n}", items.len())),
        _ => {}
    }
    let values = items.iter().map(|i| single(i)).collect::<Result<Vec<_>, _>>()?;
    if ty.is_binary() {
        Ok(Value::Bytes(values.iter().map(|v| if let Value::Uint8(b) = v { *b } else { 0 }).collect()))
    } else {
        Ok(Value::Array(values))
    }
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

/// The installed interface types, found on the prefixes (AMENT_PREFIX_PATH) when first asked for.
/// Thread-safe; resolved types are cached (a type installed later is found on its first use).
pub struct Registry {
    prefixes: Vec<PathBuf>,
    messages: Mutex<HashMap<TypeName, Arc<MessageType>>>,
    services: Mutex<HashMap<TypeName, Arc<ServiceType>>>,
    actions: Mutex<HashMap<TypeName, Arc<ActionType>>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("prefixes", &self.prefixes).finish()
    }
}

/// How deep message types may nest.
const MAX_DEPTH: usize = 32;

impl Registry {
    /// The prefixes of `AMENT_PREFIX_PATH` (overlays first, as ament orders them).
    pub fn from_env() -> Self {
        let prefixes = std::env::var_os("AMENT_PREFIX_PATH")
            .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        Self::with_prefixes(prefixes)
    }

    pub fn with_prefixes(prefixes: Vec<PathBuf>) -> Self {
        Self { prefixes, messages: Mutex::default(), services: Mutex::default(), actions: Mutex::default() }
    }

    pub fn prefixes(&self) -> &[PathBuf] {
        &self.prefixes
    }

    /// The first prefix with `share/<package>` (for its libraries in `<prefix>/lib`).
    pub fn package_prefix(&self, package: &str) -> Option<&Path> {
        if !is_identifier(package) {
            return None;
        }
        self.prefixes.iter().find(|p| p.join("share").join(package).is_dir()).map(|p| p.as_path())
    }

    fn find_file(&self, package: &str, namespace: &str, file: &str) -> Result<PathBuf, TypeError> {
        for p in &self.prefixes {
            let path = p.join("share").join(package).join(namespace).join(file);
            if path.is_file() {
                return Ok(path);
            }
        }
        Err(TypeError::NotFound {
            name: format!("{package}/{namespace}/{}", file.rsplit_once('.').map_or(file, |(n, _)| n)),
            looked_for: format!("share/{package}/{namespace}/{file}"),
            prefixes: if self.prefixes.is_empty() {
                "(empty)".into()
            } else {
                self.prefixes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
            },
        })
    }

    fn read(path: &Path) -> Result<String, TypeError> {
        std::fs::read_to_string(path).map_err(|e| TypeError::Read { path: path.display().to_string(), message: e.to_string() })
    }

    /// A message type: `pkg/msg/T`, `pkg/T`, or a part of a service or action
    /// (`pkg/srv/S_Request`, `pkg/action/A_Goal`, `pkg/action/A_FeedbackMessage`…).
    pub fn message(&self, name: &str) -> Result<Arc<MessageType>, TypeError> {
        let tn = TypeName::parse(name)?;
        self.message_by_name(&tn, &mut Vec::new())
    }

    pub fn service(&self, name: &str) -> Result<Arc<ServiceType>, TypeError> {
        let tn = TypeName::parse(name)?;
        if tn.namespace == "action" {
            let (action, part) = tn.name.rsplit_once('_').ok_or_else(|| TypeError::InvalidName(name.into()))?;
            let a = self.action(&format!("{}/action/{action}", tn.package))?;
            return match part {
                "SendGoal" => Ok(a.send_goal.clone()),
                "GetResult" => Ok(a.get_result.clone()),
                _ => Err(TypeError::InvalidName(name.into())),
            };
        }
        if tn.namespace != "srv" {
            return Err(TypeError::InvalidName(name.into()));
        }
        if let Some(s) = self.services.lock().unwrap_or_else(|e| e.into_inner()).get(&tn) {
            return Ok(s.clone());
        }
        let path = self.find_file(&tn.package, "srv", &format!("{}.srv", tn.name))?;
        let text = Self::read(&path)?;
        let parts = split_parts(&text);
        if parts.len() != 2 {
            return Err(TypeError::Parse { file: path.display().to_string(), line: 1, message: format!("a service has 2 parts separated by ---, this has {}", parts.len()) });
        }
        let file = path.display().to_string();
        let mut stack = Vec::new();
        let request = self.build(TypeName::new(&tn.package, "srv", &format!("{}_Request", tn.name)), &parts[0].0, &file, parts[0].1, &mut stack)?;
        let response = self.build(TypeName::new(&tn.package, "srv", &format!("{}_Response", tn.name)), &parts[1].0, &file, parts[1].1, &mut stack)?;
        let s = Arc::new(ServiceType { name: tn.clone(), request, response, text });
        Ok(self.services.lock().unwrap_or_else(|e| e.into_inner()).entry(tn).or_insert(s).clone())
    }

    pub fn action(&self, name: &str) -> Result<Arc<ActionType>, TypeError> {
        let tn = TypeName::parse(name)?;
        if tn.namespace != "action" {
            return Err(TypeError::InvalidName(name.into()));
        }
        if let Some(a) = self.actions.lock().unwrap_or_else(|e| e.into_inner()).get(&tn) {
            return Ok(a.clone());
        }
        let path = self.find_file(&tn.package, "action", &format!("{}.action", tn.name))?;
        let text = Self::read(&path)?;
        let file = path.display().to_string();
        let parts = split_parts(&text);
        if parts.len() != 3 {
            return Err(TypeError::Parse { file, line: 1, message: format!("an action has 3 parts separated by ---, this has {}", parts.len()) });
        }
        let (pkg, a) = (&tn.package, &tn.name);
        let mut st = Vec::new();
        let part = |suffix: &str| TypeName::new(pkg, "action", &format!("{a}_{suffix}"));
        let goal = self.build(part("Goal"), &parts[0].0, &file, parts[0].1, &mut st)?;
        let result = self.build(part("Result"), &parts[1].0, &file, parts[1].1, &mut st)?;
        let feedback = self.build(part("Feedback"), &parts[2].0, &file, parts[2].1, &mut st)?;
        // The messages rosidl derives (rosidl_parser's action definition), with the parts above
        // already cached so that their names resolve.
        self.cache_message(&goal);
        self.cache_message(&result);
        self.cache_message(&feedback);
        let derived = |suffix: &str, text: String, st: &mut Vec<TypeName>| {
            let m = self.build(part(suffix), &text, &file, 1, st)?;
            self.cache_message(&m);
            Ok::<_, TypeError>(m)
        };
        let send_goal_request = derived("SendGoal_Request", format!("unique_identifier_msgs/UUID goal_id\n{pkg}/action/{a}_Goal goal\n"), &mut st)?;
        let send_goal_response = derived("SendGoal_Response", "bool accepted\nbuiltin_interfaces/Time stamp\n".into(), &mut st)?;
        let get_result_request = derived("GetResult_Request", "unique_identifier_msgs/UUID goal_id\n".into(), &mut st)?;
        let get_result_response = derived("GetResult_Response", format!("int8 status\n{pkg}/action/{a}_Result result\n"), &mut st)?;
        let feedback_message = derived("FeedbackMessage", format!("unique_identifier_msgs/UUID goal_id\n{pkg}/action/{a}_Feedback feedback\n"), &mut st)?;
        let send_goal = Arc::new(ServiceType {
            name: part("SendGoal"),
            text: format!("{}---\n{}", send_goal_request.text, send_goal_response.text),
            request: send_goal_request,
            response: send_goal_response,
        });
        let get_result = Arc::new(ServiceType {
            name: part("GetResult"),
            text: format!("{}---\n{}", get_result_request.text, get_result_response.text),
            request: get_result_request,
            response: get_result_response,
        });
        let at = Arc::new(ActionType { name: tn.clone(), goal, result, feedback, send_goal, get_result, feedback_message, text });
        Ok(self.actions.lock().unwrap_or_else(|e| e.into_inner()).entry(tn).or_insert(at).clone())
    }

    fn cache_message(&self, m: &Arc<MessageType>) {
        self.messages.lock().unwrap_or_else(|e| e.into_inner()).entry(m.name.clone()).or_insert_with(|| m.clone());
    }

    fn message_by_name(&self, tn: &TypeName, stack: &mut Vec<TypeName>) -> Result<Arc<MessageType>, TypeError> {
        if let Some(m) = self.messages.lock().unwrap_or_else(|e| e.into_inner()).get(tn) {
            return Ok(m.clone());
        }
        if stack.contains(tn) {
            return Err(TypeError::Recursive(tn.to_string()));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(TypeError::Recursive(tn.to_string()));
        }
        match tn.namespace.as_str() {
            "msg" => {
                let path = self.find_file(&tn.package, "msg", &format!("{}.msg", tn.name))?;
                let text = Self::read(&path)?;
                let m = self.build(tn.clone(), &text, &path.display().to_string(), 1, stack)?;
                self.cache_message(&m);
                Ok(m)
            }
            "srv" => {
                let (srv, part) = tn.name.rsplit_once('_').ok_or_else(|| TypeError::InvalidName(tn.to_string()))?;
                let s = self.service(&format!("{}/srv/{srv}", tn.package))?;
                let m = match part {
                    "Request" => s.request.clone(),
                    "Response" => s.response.clone(),
                    _ => return Err(TypeError::InvalidName(tn.to_string())),
                };
                Ok(m)
            }
            _ => {
                // pkg/action/A_Goal, A_SendGoal_Request, A_FeedbackMessage…: the action caches them.
                let base = ["_SendGoal_Request", "_SendGoal_Response", "_GetResult_Request", "_GetResult_Response", "_FeedbackMessage", "_Goal", "_Result", "_Feedback"]
                    .iter()
                    .find_map(|s| tn.name.strip_suffix(s))
                    .ok_or_else(|| TypeError::InvalidName(tn.to_string()))?;
                self.action(&format!("{}/action/{base}", tn.package))?;
                self.messages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(tn)
                    .cloned()
                    .ok_or_else(|| TypeError::InvalidName(tn.to_string()))
            }
        }
    }

    /// Resolve a nested type written as `Foo`, `pkg/Foo` or `pkg/msg/Foo` in package `context`.
    fn resolve_nested(&self, written: &str, context: &str, stack: &mut Vec<TypeName>) -> Result<(Arc<MessageType>, String), TypeError> {
        let parts: Vec<&str> = written.split('/').collect();
        let (tn, as_written) = match parts.as_slice() {
            [n] => (TypeName::new(context, "msg", n), format!("{context}/{n}")),
            _ => (TypeName::parse(written)?, written.to_string()),
        };
        if !is_identifier(&tn.name) || !is_identifier(&tn.package) {
            return Err(TypeError::InvalidName(written.to_string()));
        }
        match self.message_by_name(&tn, stack) {
            // ROS 1 habit: a bare `Header` is std_msgs/Header.
            Err(TypeError::NotFound { .. }) if written == "Header" => {
                let h = self.message_by_name(&TypeName::new("std_msgs", "msg", "Header"), stack)?;
                Ok((h, "std_msgs/Header".into()))
            }
            r => r.map(|m| (m, as_written)),
        }
    }

    fn build(&self, tn: TypeName, text: &str, file: &str, first_line: usize, stack: &mut Vec<TypeName>) -> Result<Arc<MessageType>, TypeError> {
        let items = parse_items(text, file, first_line)?;
        stack.push(tn.clone());
        let result = self.build_items(&tn, text, file, items, stack);
        stack.pop();
        result
    }

    fn build_items(&self, tn: &TypeName, text: &str, file: &str, items: Vec<RawItem>, stack: &mut Vec<TypeName>) -> Result<Arc<MessageType>, TypeError> {
        let mut fields = Vec::new();
        let mut constants = Vec::new();
        let mut deps = BTreeSet::new();
        for item in items {
            let err = |message: String| TypeError::Parse { file: file.to_string(), line: item.line, message };
            let (base_text, array) = split_type(&item.type_text).map_err(err)?;
            let base = if let Some(p) = Primitive::parse(base_text) {
                BaseType::Primitive(p)
            } else if base_text == "string" {
                BaseType::String { bound: None }
            } else if base_text == "wstring" {
                BaseType::WString { bound: None }
            } else if let Some(b) = base_text.strip_prefix("string<=") {
                BaseType::String { bound: Some(b.parse().map_err(|_| err(format!("invalid string bound in '{}'", item.type_text)))?) }
            } else if let Some(b) = base_text.strip_prefix("wstring<=") {
                BaseType::WString { bound: Some(b.parse().map_err(|_| err(format!("invalid string bound in '{}'", item.type_text)))?) }
            } else {
                match self.resolve_nested(base_text, &tn.package, stack) {
                    Ok((m, written)) => {
                        deps.insert(written);
                        BaseType::Message(m)
                    }
                    Err(TypeError::InvalidName(_)) => return Err(err(format!("unknown type '{base_text}'"))),
                    Err(TypeError::NotFound { name, .. }) => {
                        return Err(err(format!("type '{base_text}' ({name}) is not installed")))
                    }
                    Err(e) => return Err(e),
                }
            };
            let ty = FieldType { base, array };
            if item.constant {
                if ty.is_array() || matches!(ty.base, BaseType::Message(_)) {
                    return Err(err(format!("constant {} must be a primitive or a string", item.name)));
                }
                let value = parse_value(&ty, item.value.as_deref().unwrap_or("")).map_err(err)?;
                constants.push(Constant { name: item.name, ty, value });
            } else {
                let default = match &item.value {
                    Some(v) => Some(parse_value(&ty, v).map_err(|m| err(format!("default of {}: {m}", item.name)))?),
                    None => None,
                };
                fields.push(Field { name: item.name, ty, default });
            }
        }
        Ok(Arc::new(MessageType {
            name: tn.clone(),
            fields,
            constants,
            text: text.to_string(),
            dependencies: deps.into_iter().collect(),
        }))
    }

    /// The complete definition in rosbag2's `ros2msg` encoding (what `ros2 bag record` writes as an
    /// MCAP schema and Foxglove reads): the type's text, then each type it depends on, each once,
    /// depth first in sorted order, after a line of 80 `=` and `MSG: <name as written>`.
    pub fn ros2msg(&self, name: &str) -> Result<String, TypeError> {
        let root = self.message(name)?;
        let mut seen = std::collections::HashSet::new();
        let mut out = String::new();
        fn append(t: &MessageType, seen: &mut std::collections::HashSet<String>, out: &mut String) {
            out.push_str(&t.text);
            for dep in &t.dependencies {
                if seen.insert(dep.clone()) {
                    if let Some(m) = t.fields.iter().find_map(|f| match &f.ty.base {
                        BaseType::Message(m) if dependency_matches(dep, &m.name) => Some(m.clone()),
                        _ => None,
                    }) {
                        out.push('\n');
                        out.push_str(&"=".repeat(80));
                        out.push_str("\nMSG: ");
                        out.push_str(dep);
                        out.push('\n');
                        append(&m, seen, out);
                    }
                }
            }
        }
        append(&root, &mut seen, &mut out);
        Ok(out)
    }

    /// The RIHS01 type hash rosidl computed for the type (from `share/<pkg>/<ns>/<Type>.json`), as
    /// rosbag2 records it in `metadata.yaml`; `None` where the file or the entry is missing.
    pub fn type_hash(&self, name: &str) -> Option<String> {
        let tn = TypeName::parse(name).ok()?;
        let base = match tn.namespace.as_str() {
            "msg" => tn.name.clone(),
            "srv" => ["_Request", "_Response", "_Event"].iter().find_map(|s| tn.name.strip_suffix(s)).unwrap_or(&tn.name).to_string(),
            _ => ["_SendGoal_Request", "_SendGoal_Response", "_SendGoal_Event", "_GetResult_Request", "_GetResult_Response", "_GetResult_Event", "_SendGoal", "_GetResult", "_FeedbackMessage", "_Goal", "_Result", "_Feedback"]
                .iter()
                .find_map(|s| tn.name.strip_suffix(s))
                .unwrap_or(&tn.name)
                .to_string(),
        };
        let path = self.find_file(&tn.package, &tn.namespace, &format!("{base}.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        let full = tn.to_string();
        json.get("type_hashes")?.as_array()?.iter().find_map(|h| {
            (h.get("type_name")?.as_str()? == full).then(|| h.get("hash_string")?.as_str().map(str::to_string)).flatten()
        })
    }

    /// Every interface installed on the prefixes: `pkg/msg/T`, `pkg/srv/T`, `pkg/action/T`, sorted
    /// (the first prefix that has a package wins, as for lookups).
    pub fn installed(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        let mut packages = std::collections::HashSet::new();
        for p in &self.prefixes {
            let Ok(dir) = std::fs::read_dir(p.join("share")) else { continue };
            for pkg in dir.flatten() {
                let pkg_name = pkg.file_name().to_string_lossy().to_string();
                if !is_identifier(&pkg_name) || !packages.insert(pkg_name.clone()) {
                    continue;
                }
                for (ns, ext) in [("msg", "msg"), ("srv", "srv"), ("action", "action")] {
                    let Ok(files) = std::fs::read_dir(pkg.path().join(ns)) else { continue };
                    for f in files.flatten() {
                        let file = f.file_name().to_string_lossy().to_string();
                        if let Some(n) = file.strip_suffix(&format!(".{ext}")) {
                            if is_identifier(n) {
                                out.insert(format!("{pkg_name}/{ns}/{n}"));
                            }
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// Whether a dependency as written (`pkg/T` or `pkg/ns/T`) names this type.
fn dependency_matches(dep: &str, name: &TypeName) -> bool {
    let parts: Vec<&str> = dep.split('/').collect();
    match parts.as_slice() {
        [p, n] => *p == name.package && *n == name.name,
        [p, ns, n] => *p == name.package && *ns == name.namespace && *n == name.name,
        _ => false,
    }
    // A bare `Header` resolved to std_msgs: written as std_msgs/Header by resolve_nested.
}

/// The parts of a `.srv`/`.action` text, split at lines that are `---`: (text, first line number).
fn split_parts(text: &str) -> Vec<(String, usize)> {
    let mut parts = vec![(String::new(), 1)];
    for (i, line) in text.lines().enumerate() {
        if line.trim() == "---" {
            parts.push((String::new(), i + 2));
        } else if let Some(last) = parts.last_mut() {
            last.0.push_str(line);
            last.0.push('\n');
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn type_names() {
        assert_eq!(TypeName::parse("std_msgs/msg/String").unwrap().to_string(), "std_msgs/msg/String");
        assert_eq!(TypeName::parse("std_msgs/String").unwrap().to_string(), "std_msgs/msg/String");
        assert_eq!(TypeName::parse("a/srv/B").unwrap().symbol(), "a__srv__B");
        for bad in ["", "std_msgs", "a/b/c/d", "../x/msg/y", "a/foo/B", "a/msg/", "a/msg/B;rm", "1a/msg/B"] {
            assert!(TypeName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_fields_defaults_constants_and_bounds() {
        let dir = tempdir();
        write(&dir, "share/p/msg/Inner.msg", "float64 x\n");
        write(
            &dir,
            "share/p/msg/T.msg",
            "# comment\nint32 A=-5  # constant\nstring S='it''s'\nstring<=5 name \"ab\"\nInner[<=3] items\nuint8[2] raw [1, 2]\nstring[] words [\"a, b\", 'c']\nbool flag true\nfloat32 f -1.5\n",
        );
        let r = Registry::with_prefixes(vec![dir.clone()]);
        let t = r.message("p/msg/T").unwrap();
        assert_eq!(t.constants.len(), 2);
        assert!(matches!(t.constants[0].value, Value::Int32(-5)));
        let names: Vec<_> = t.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["name", "items", "raw", "words", "flag", "f"]);
        assert!(matches!(t.fields[0].ty.base, BaseType::String { bound: Some(5) }));
        assert_eq!(t.fields[1].ty.array, ArrayKind::Bounded(3));
        assert!(matches!(&t.fields[2].default, Some(Value::Bytes(b)) if b == &[1, 2]));
        match &t.fields[3].default {
            Some(Value::Array(a)) => assert!(matches!(&a[..], [Value::String(x), Value::String(y)] if x == "a, b" && y == "c")),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.dependencies, ["p/Inner"]);
        assert_eq!(t.fields[1].ty.display(), "p/msg/Inner[<=3]");
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempdir();
        write(&dir, "share/p/msg/Bad.msg", "int32 ok\nNope missing\n");
        write(&dir, "share/p/msg/Range.msg", "uint8 x 300\n");
        write(&dir, "share/p/msg/Loop.msg", "p/Loop2 a\n");
        write(&dir, "share/p/msg/Loop2.msg", "Loop b\n");
        let r = Registry::with_prefixes(vec![dir.clone()]);
        let e = r.message("p/msg/Bad").unwrap_err().to_string();
        assert!(e.contains("Bad.msg:2") && e.contains("Nope"), "{e}");
        let e = r.message("p/msg/Range").unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        assert!(matches!(r.message("p/msg/Loop"), Err(TypeError::Recursive(_))));
        let e = r.message("p/msg/Absent").unwrap_err().to_string();
        assert!(e.contains("not installed") && e.contains("share/p/msg/Absent.msg"), "{e}");
    }

    #[test]
    fn services_and_actions() {
        let dir = tempdir();
        write(&dir, "share/p/srv/S.srv", "int32 a\n---\nstring b\n");
        write(&dir, "share/p/action/A.action", "int32 order\n---\nint32[] seq\n---\nint32 step\n");
        write(&dir, "share/unique_identifier_msgs/msg/UUID.msg", "uint8[16] uuid\n");
        write(&dir, "share/builtin_interfaces/msg/Time.msg", "int32 sec\nuint32 nanosec\n");
        let r = Registry::with_prefixes(vec![dir.clone()]);
        let s = r.service("p/srv/S").unwrap();
        assert_eq!(s.request.fields[0].name, "a");
        assert_eq!(r.message("p/srv/S_Response").unwrap().fields[0].name, "b");
        let a = r.action("p/action/A").unwrap();
        assert_eq!(a.send_goal.request.fields[1].name, "goal");
        assert_eq!(a.feedback_message.fields[1].ty.display(), "p/action/A_Feedback");
        assert_eq!(r.message("p/action/A_GetResult_Response").unwrap().fields[0].name, "status");
        assert_eq!(r.service("p/action/A_SendGoal").unwrap().response.fields[0].name, "accepted");
    }

    #[test]
    fn ros2msg_is_rosbag2s_form() {
        let dir = tempdir();
        write(&dir, "share/p/msg/B.msg", "float32 c\n");
        write(&dir, "share/p/msg/A.msg", "p/B b\n");
        write(&dir, "share/q/msg/Top.msg", "# top\np/A a\np/msg/B b2\nA2 local\n");
        write(&dir, "share/q/msg/A2.msg", "p/B again\n");
        let r = Registry::with_prefixes(vec![dir.clone()]);
        // rosbag2's own test: "rosbag2_test_msgdefs/BasicMsg b\n\n====…\nMSG: rosbag2_test_msgdefs/BasicMsg\nfloat32 c\n"
        assert_eq!(r.ros2msg("p/msg/A").unwrap(), format!("p/B b\n\n{}\nMSG: p/B\nfloat32 c\n", "=".repeat(80)));
        let eq = "=".repeat(80);
        assert_eq!(
            r.ros2msg("q/msg/Top").unwrap(),
            format!("# top\np/A a\np/msg/B b2\nA2 local\n\n{eq}\nMSG: p/A\np/B b\n\n{eq}\nMSG: p/B\nfloat32 c\n\n{eq}\nMSG: p/msg/B\nfloat32 c\n\n{eq}\nMSG: q/A2\np/B again\n")
        );
    }

    #[test]
    fn overlay_prefix_wins() {
        let over = tempdir();
        let under = tempdir();
        write(&under, "share/p/msg/T.msg", "int32 old\n");
        write(&over, "share/p/msg/T.msg", "int32 new\n");
        let r = Registry::with_prefixes(vec![over.clone(), under.clone()]);
        assert_eq!(r.message("p/T").unwrap().fields[0].name, "new");
        assert_eq!(r.package_prefix("p"), Some(over.as_path()));
        assert_eq!(r.installed(), ["p/msg/T"]);
    }

    pub(crate) fn tempdir() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "rosa-dynmsg-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
