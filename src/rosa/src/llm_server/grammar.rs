//! JSON Schema → GBNF (llama.cpp's grammar format), for tool calls and `response_format`.
//!
//! A grammar built here constrains decoding so that the model can only write what the schema
//! allows: a tool call names one of the offered tools and its arguments match that tool's schema.
//! Supported: `type` (one or a list), `enum`, `const`, objects (`properties`, `required`,
//! `additionalProperties`), arrays (`items`, `minItems`, `maxItems`), strings (`minLength`,
//! `maxLength`), integers, numbers, booleans, null, `anyOf`/`oneOf`, `allOf` of objects, `$ref` into
//! `$defs`/`definitions`, `nullable`, and `{}`/`true` (any JSON value). Keywords that constrain
//! values beyond their shape (`minimum`, `pattern`, `format`…) are left to the tool, which checks
//! its own arguments.
//!
//! Choices made so the grammar stays small and the model's output canonical:
//! - properties come in the schema's order (each optional one may be left out);
//! - an object that declares `properties` gets no other keys (unless `additionalProperties` is a
//!   schema or `true` *and* no properties are declared);
//! - whitespace between tokens is bounded (at most one newline and 20 indentation characters), so
//!   the model cannot stall on spaces.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt::Write;

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum GrammarError {
    #[error("unsupported JSON schema at {path}: {message}")]
    Unsupported { path: String, message: String },
    #[error("no tools to build a tool-call grammar from")]
    NoTools,
}

/// The rules every grammar shares.
const PRELUDE: &str = r#"space ::= | " " | "\n" [ \t]{0,20}
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\"" space
integer ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) space
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})? space
boolean ::= ("true" | "false") space
null ::= "null" space
value ::= object | array | string | number | boolean | null
object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? "}" space
array ::= "[" space ( value ("," space value)* )? "]" space
"#;

/// Builds rules for schemas; one per grammar.
struct Builder<'a> {
    root: &'a Value,
    rules: Vec<(String, String)>,
    names: HashMap<String, usize>,
    /// `$ref` target → rule name (so recursive definitions terminate).
    refs: HashMap<String, String>,
}

impl<'a> Builder<'a> {
    fn new(root: &'a Value) -> Self {
        Self { root, rules: Vec::new(), names: HashMap::new(), refs: HashMap::new() }
    }

    /// A fresh rule name from a hint (letters, digits and dashes only).
    fn name(&mut self, hint: &str) -> String {
        let mut base: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
            base.insert_str(0, "r-");
        }
        let n = self.names.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 && !matches!(base.as_str(), "space" | "char" | "string" | "integer" | "number" | "boolean" | "null" | "value" | "object" | "array" | "root") {
            base
        } else {
            format!("{base}-{n}")
        }
    }

    fn add(&mut self, name: String, body: String) -> String {
        self.rules.push((name.clone(), body));
        name
    }

    /// The rule (or inline expression) for `schema`; `path` names it in errors and rule names.
    fn schema(&mut self, schema: &Value, path: &str) -> Result<String, GrammarError> {
        let unsupported = |m: &str| GrammarError::Unsupported { path: path.to_string(), message: m.to_string() };
        let o = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Bool(false) => return Err(unsupported("`false` admits no value")),
            Value::Object(o) => o,
            _ => return Err(unsupported("a schema must be an object or a boolean")),
        };
        if let Some(r) = o.get("$ref").and_then(Value::as_str) {
            return self.reference(r, path);
        }
        if let Some(c) = o.get("const") {
            return Ok(format!("{} space", literal(&c.to_string())));
        }
        if let Some(e) = o.get("enum") {
            let vals = e.as_array().ok_or_else(|| unsupported("`enum` must be an array"))?;
            if vals.is_empty() {
                return Err(unsupported("an empty `enum` admits no value"));
            }
            let alts: Vec<String> = vals.iter().map(|v| literal(&v.to_string())).collect();
            return Ok(format!("({}) space", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = o.get(key) {
                let list = list.as_array().ok_or_else(|| unsupported("must be an array"))?;
                let mut alts = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    // Keywords beside anyOf (e.g. a description) do not change the alternatives.
                    alts.push(self.schema(s, &format!("{path}/{key}/{i}"))?);
                }
                if alts.is_empty() {
                    return Err(unsupported("an empty list admits no value"));
                }
                let name = self.name(path);
                return Ok(self.add(name, alts.join(" | ")));
            }
        }
        if let Some(all) = o.get("allOf").and_then(Value::as_array) {
            return self.all_of(o, all, path);
        }
        let nullable = o.get("nullable").and_then(Value::as_bool).unwrap_or(false);
        let types: Vec<&str> = match o.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            None if o.contains_key("properties") => vec!["object"],
            None if o.contains_key("items") => vec!["array"],
            None => return Ok(if nullable { "(value | null)".into() } else { "value".into() }),
            Some(_) => return Err(unsupported("`type` must be a string or a list of strings")),
        };
        let mut alts = Vec::new();
        for t in &types {
            alts.push(match *t {
                "string" => self.string(o, path)?,
                "integer" => "integer".into(),
                "number" => "number".into(),
                "boolean" => "boolean".into(),
                "null" => "null".into(),
                "object" => self.object(o, path)?,
                "array" => self.array(o, path)?,
                other => return Err(unsupported(&format!("unknown type `{other}`"))),
            });
        }
        if nullable && !types.contains(&"null") {
            alts.push("null".into());
        }
        Ok(if alts.len() == 1 { alts.remove(0) } else { format!("({})", alts.join(" | ")) })
    }

    fn reference(&mut self, r: &str, path: &str) -> Result<String, GrammarError> {
        if let Some(n) = self.refs.get(r) {
            return Ok(n.clone());
        }
        let target = r
            .strip_prefix('#')
            .and_then(|p| self.root.pointer(p))
            .ok_or_else(|| GrammarError::Unsupported { path: path.into(), message: format!("`$ref` {r} does not resolve in this schema") })?;
        let name = self.name(r.rsplit('/').next().unwrap_or("ref"));
        self.refs.insert(r.to_string(), name.clone());
        // Reserve the rule's place, then fill it (it may refer to itself).
        let idx = self.rules.len();
        self.rules.push((name.clone(), String::new()));
        let body = self.schema(target, r)?;
        self.rules[idx].1 = body;
        Ok(name)
    }

    fn all_of(&mut self, o: &Map<String, Value>, all: &[Value], path: &str) -> Result<String, GrammarError> {
        // Merge objects: properties and required of every part (refs resolved), then the rest of `o`.
        let mut props = Map::new();
        let mut required: Vec<Value> = Vec::new();
        let mut parts: Vec<&Value> = all.iter().collect();
        let own = Value::Object(o.iter().filter(|(k, _)| k.as_str() != "allOf").map(|(k, v)| (k.clone(), v.clone())).collect());
        parts.push(&own);
        for p in parts {
            let mut p = p;
            while let Some(r) = p.get("$ref").and_then(Value::as_str) {
                p = r.strip_prefix('#').and_then(|x| self.root.pointer(x)).ok_or_else(|| GrammarError::Unsupported {
                    path: path.into(),
                    message: format!("`$ref` {r} does not resolve"),
                })?;
            }
            if let Some(ps) = p.get("properties").and_then(Value::as_object) {
                for (k, v) in ps {
                    props.insert(k.clone(), v.clone());
                }
            }
            if let Some(rs) = p.get("required").and_then(Value::as_array) {
                required.extend(rs.iter().cloned());
            }
        }
        let merged = serde_json::json!({"type": "object", "properties": props, "required": required});
        let Value::Object(m) = merged else { unreachable!() };
        self.object(&m, path)
    }

    fn string(&mut self, o: &Map<String, Value>, _path: &str) -> Result<String, GrammarError> {
        let min = o.get("minLength").and_then(Value::as_u64).unwrap_or(0).min(10_000);
        let max = o.get("maxLength").and_then(Value::as_u64).map(|m| m.min(100_000));
        Ok(match (min, max) {
            (0, None) => "string".into(),
            (min, None) => format!("\"\\\"\" char{{{min},}} \"\\\"\" space"),
            (min, Some(max)) => format!("\"\\\"\" char{{{min},{}}} \"\\\"\" space", max.max(min)),
        })
    }

    fn object(&mut self, o: &Map<String, Value>, path: &str) -> Result<String, GrammarError> {
        let empty = Map::new();
        let props = o.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let required: Vec<&str> = o.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if props.is_empty() && o.contains_key("properties") && !matches!(o.get("additionalProperties"), Some(Value::Object(_)) | Some(Value::Bool(true))) {
            // Declared without properties: no arguments at all.
            return Ok("\"{\" space \"}\" space".into());
        }
        if props.is_empty() {
            return Ok(match o.get("additionalProperties") {
                Some(Value::Bool(false)) => "\"{\" space \"}\" space".into(),
                Some(s @ Value::Object(_)) => {
                    let v = self.schema(s, &format!("{path}/additionalProperties"))?;
                    let name = self.name(&format!("{path}-map"));
                    self.add(name, format!("\"{{\" space ( string \":\" space {v} (\",\" space string \":\" space {v})* )? \"}}\" space"))
                }
                _ => "object".into(),
            });
        }
        for r in &required {
            if !props.contains_key(*r) {
                return Err(GrammarError::Unsupported { path: path.into(), message: format!("required property `{r}` is not among the properties") });
            }
        }
        // Each key/value pair as a rule.
        let mut kvs = Vec::new();
        for (k, v) in props {
            let val = self.schema(v, &format!("{path}/{k}"))?;
            let name = self.name(&format!("{path}-{k}-kv"));
            let rule = self.add(name, format!("{} space \":\" space {val}", literal(&Value::String(k.clone()).to_string())));
            kvs.push((rule, required.contains(&k.as_str())));
        }
        // Chains that put the commas right whichever optional properties are left out:
        // first(i) = properties i.. with none written yet; rest(i) = with some written already.
        let n = kvs.len();
        let base = self.name(&format!("{path}-obj"));
        let first: Vec<String> = (0..=n).map(|i| format!("{base}-f{i}")).collect();
        let rest: Vec<String> = (0..=n).map(|i| format!("{base}-r{i}")).collect();
        for i in (0..n).rev() {
            let (kv, req) = (&kvs[i].0, kvs[i].1);
            let f_next = if i + 1 == n { String::new() } else { format!(" {}", first[i + 1]) };
            let r_next = if i + 1 == n { String::new() } else { format!(" {}", rest[i + 1]) };
            // rest(i)
            let r_body = if req { format!("\",\" space {kv}{r_next}") } else { format!("(\",\" space {kv})?{r_next}") };
            self.rules.push((rest[i].clone(), r_body));
            // first(i)
            let f_body = if req {
                format!("{kv}{r_next}")
            } else if i + 1 == n {
                format!("({kv})?")
            } else {
                format!("{kv}{r_next} |{f_next}")
            };
            self.rules.push((first[i].clone(), f_body));
        }
        let body = format!("\"{{\" space {} \"}}\" space", first[0]);
        Ok(self.add(base, body))
    }

    fn array(&mut self, o: &Map<String, Value>, path: &str) -> Result<String, GrammarError> {
        let item = match o.get("items") {
            None => "value".to_string(),
            // Items that admit no value (an empty enum, e.g. no robot reachable): only `[]`.
            Some(s) if s.get("enum").and_then(Value::as_array).is_some_and(|e| e.is_empty()) => {
                return Ok("\"[\" space \"]\" space".into())
            }
            Some(s) => self.schema(s, &format!("{path}/items"))?,
        };
        let min = o.get("minItems").and_then(Value::as_u64).unwrap_or(0).min(1000);
        let max = o.get("maxItems").and_then(Value::as_u64).map(|m| m.min(10_000));
        if max == Some(0) {
            return Ok("\"[\" space \"]\" space".into());
        }
        let more = match (min, max) {
            (m, None) => format!("(\",\" space {item}){{{},}}", m.saturating_sub(1)),
            (m, Some(x)) => format!("(\",\" space {item}){{{},{}}}", m.saturating_sub(1), x.max(m.max(1)) - 1),
        };
        let inner = format!("{item} {more}");
        let body = if min == 0 { format!("\"[\" space ( {inner} )? \"]\" space") } else { format!("\"[\" space {inner} \"]\" space") };
        let name = self.name(&format!("{path}-arr"));
        Ok(self.add(name, body))
    }

    fn finish(self, root_body: String) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "root ::= {root_body}");
        for (name, body) in &self.rules {
            let _ = writeln!(out, "{name} ::= {body}");
        }
        out.push_str(PRELUDE);
        out
    }
}

/// A GBNF string literal for `s`.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A grammar for one JSON value of `schema` (`response_format: json_schema`).
pub fn for_schema(schema: &Value) -> Result<String, GrammarError> {
    let mut b = Builder::new(schema);
    let root = b.schema(schema, "root")?;
    Ok(b.finish(root))
}

/// How a tool call may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallForm {
    /// Exactly `<tool_call>\n{…}\n</tool_call>` (tool_choice `required` or a named tool).
    Tagged,
    /// Tagged, or the bare `{…}` object (a lazy grammar, applied once the model starts a call in
    /// either form: the trigger is the `<tool_call>` token or a `{` opening the reply).
    TaggedOrBare,
}

/// A grammar for one tool call `{"name": <tool>, "arguments": <its schema>}` of `tools`
/// (`(name, parameters schema)`), in Qwen2.5's form.
pub fn for_tool_call(tools: &[(&str, &Value)], form: CallForm) -> Result<String, GrammarError> {
    if tools.is_empty() {
        return Err(GrammarError::NoTools);
    }
    let mut alts = Vec::new();
    let mut rules = Vec::new();
    let mut names = HashMap::new();
    for (name, params) in tools {
        // Each tool's schema is its own document ($refs resolve within it).
        let mut b = Builder { root: params, rules: Vec::new(), names, refs: HashMap::new() };
        let args = b.schema(params, &format!("{name}-args"))?;
        names = b.names;
        rules.extend(b.rules);
        alts.push(format!(
            "{} space \",\" space \"\\\"arguments\\\"\" space \":\" space {args}",
            literal(&Value::String(name.to_string()).to_string())
        ));
    }
    let mut b = Builder { root: &Value::Null, rules, names, refs: HashMap::new() };
    let call = b.name("call");
    b.rules.push((call.clone(), format!("\"{{\" space \"\\\"name\\\"\" space \":\" space ({}) \"}}\"", alts.join(" | "))));
    let tagged = format!("\"<tool_call>\" \"\\n\" {call} \"\\n\" \"</tool_call>\"");
    let root = match form {
        CallForm::Tagged => tagged,
        CallForm::TaggedOrBare => format!("{tagged} | {call} space"),
    };
    Ok(b.finish(root))
}

#[cfg(test)]
pub(crate) mod gbnf {
    //! A GBNF recogniser (the subset this module writes): to check in tests that a grammar
    //! accepts exactly the texts it should, independently of llama.cpp.
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Node {
        Lit(Vec<char>),
        Class { neg: bool, ranges: Vec<(char, char)> },
        Ref(String),
        Seq(Vec<Node>),
        Alt(Vec<Node>),
        Rep(Box<Node>, usize, Option<usize>),
    }

    pub struct Grammar {
        rules: HashMap<String, Node>,
    }

    struct P<'a> {
        s: &'a [char],
        i: usize,
    }

    impl<'a> P<'a> {
        fn peek(&self) -> Option<char> {
            self.s.get(self.i).copied()
        }
        fn ws(&mut self, newlines: bool) {
            while let Some(c) = self.peek() {
                if c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r')) {
                    self.i += 1;
                } else if c == '#' {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.i += 1;
                    }
                } else {
                    break;
                }
            }
        }
        fn esc(&mut self) -> char {
            let c = self.s[self.i];
            self.i += 1;
            let hex = |p: &mut P, n: usize| {
                let h: String = p.s[p.i..p.i + n].iter().collect();
                p.i += n;
                char::from_u32(u32::from_str_radix(&h, 16).expect("hex")).expect("char")
            };
            match c {
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'x' => hex(self, 2),
                'u' => hex(self, 4),
                other => other,
            }
        }
        fn alt(&mut self) -> Node {
            let mut alts = vec![self.seq()];
            loop {
                self.ws(false);
                if self.peek() == Some('|') {
                    self.i += 1;
                    alts.push(self.seq());
                } else {
                    break;
                }
            }
            if alts.len() == 1 {
                alts.pop().unwrap()
            } else {
                Node::Alt(alts)
            }
        }
        fn seq(&mut self) -> Node {
            let mut items = Vec::new();
            loop {
                self.ws(false);
                let Some(c) = self.peek() else { break };
                let atom = match c {
                    '"' => {
                        self.i += 1;
                        let mut lit = Vec::new();
                        while self.s[self.i] != '"' {
                            if self.s[self.i] == '\\' {
                                self.i += 1;
                                lit.push(self.esc());
                            } else {
                                lit.push(self.s[self.i]);
                                self.i += 1;
                            }
                        }
                        self.i += 1;
                        Node::Lit(lit)
                    }
                    '[' => {
                        self.i += 1;
                        let neg = self.peek() == Some('^');
                        if neg {
                            self.i += 1;
                        }
                        let mut ranges = Vec::new();
                        while self.s[self.i] != ']' {
                            let a = if self.s[self.i] == '\\' {
                                self.i += 1;
                                self.esc()
                            } else {
                                self.i += 1;
                                self.s[self.i - 1]
                            };
                            let b = if self.s[self.i] == '-' && self.s[self.i + 1] != ']' {
                                self.i += 1;
                                if self.s[self.i] == '\\' {
                                    self.i += 1;
                                    self.esc()
                                } else {
                                    self.i += 1;
                                    self.s[self.i - 1]
                                }
                            } else {
                                a
                            };
                            ranges.push((a, b));
                        }
                        self.i += 1;
                        Node::Class { neg, ranges }
                    }
                    '(' => {
                        self.i += 1;
                        let n = self.alt();
                        self.ws(true);
                        assert_eq!(self.peek(), Some(')'), "unclosed group");
                        self.i += 1;
                        n
                    }
                    c if c.is_ascii_alphanumeric() || c == '-' => {
                        let start = self.i;
                        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
                            self.i += 1;
                        }
                        let name: String = self.s[start..self.i].iter().collect();
                        // A rule definition starts here: this sequence is over.
                        let save = self.i;
                        self.ws(false);
                        if self.s[self.i..].starts_with(&[':', ':', '=']) {
                            self.i = start;
                            break;
                        }
                        self.i = save;
                        Node::Ref(name)
                    }
                    _ => break,
                };
                let atom = match self.peek() {
                    Some('*') => {
                        self.i += 1;
                        Node::Rep(Box::new(atom), 0, None)
                    }
                    Some('+') => {
                        self.i += 1;
                        Node::Rep(Box::new(atom), 1, None)
                    }
                    Some('?') => {
                        self.i += 1;
                        Node::Rep(Box::new(atom), 0, Some(1))
                    }
                    Some('{') => {
                        self.i += 1;
                        let close = self.s[self.i..].iter().position(|&c| c == '}').unwrap() + self.i;
                        let inner: String = self.s[self.i..close].iter().collect();
                        self.i = close + 1;
                        let (lo, hi) = match inner.split_once(',') {
                            None => (inner.trim().parse().unwrap(), Some(inner.trim().parse().unwrap())),
                            Some((a, b)) if b.trim().is_empty() => (a.trim().parse().unwrap(), None),
                            Some((a, b)) => (a.trim().parse().unwrap(), Some(b.trim().parse().unwrap())),
                        };
                        Node::Rep(Box::new(atom), lo, hi)
                    }
                    _ => atom,
                };
                items.push(atom);
            }
            if items.len() == 1 {
                items.pop().unwrap()
            } else {
                Node::Seq(items)
            }
        }
    }

    impl Grammar {
        pub fn parse(text: &str) -> Grammar {
            let chars: Vec<char> = text.chars().collect();
            let mut p = P { s: &chars, i: 0 };
            let mut rules = HashMap::new();
            loop {
                p.ws(true);
                if p.peek().is_none() {
                    break;
                }
                let start = p.i;
                while p.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
                    p.i += 1;
                }
                let name: String = chars[start..p.i].iter().collect();
                p.ws(false);
                assert!(chars[p.i..].starts_with(&[':', ':', '=']), "expected ::= after {name} at {}", p.i);
                p.i += 3;
                let body = p.alt();
                assert!(rules.insert(name.clone(), body).is_none(), "rule {name} defined twice");
            }
            let g = Grammar { rules };
            // Every reference resolves.
            fn refs(n: &Node, out: &mut Vec<String>) {
                match n {
                    Node::Ref(r) => out.push(r.clone()),
                    Node::Seq(v) | Node::Alt(v) => v.iter().for_each(|x| refs(x, out)),
                    Node::Rep(x, ..) => refs(x, out),
                    _ => {}
                }
            }
            for (name, body) in &g.rules {
                let mut out = Vec::new();
                refs(body, &mut out);
                for r in out {
                    assert!(g.rules.contains_key(&r), "rule {name} refers to undefined {r}");
                }
            }
            g
        }

        /// Does `root` match the whole of `text`?
        pub fn accepts(&self, text: &str) -> bool {
            let s: Vec<char> = text.chars().collect();
            let mut memo = HashMap::new();
            self.ends(&Node::Ref("root".into()), &s, 0, &mut memo).contains(&s.len())
        }

        fn ends(&self, n: &Node, s: &[char], i: usize, memo: &mut HashMap<(String, usize), Vec<usize>>) -> Vec<usize> {
            match n {
                Node::Lit(l) => {
                    if s.len() >= i + l.len() && s[i..i + l.len()] == l[..] {
                        vec![i + l.len()]
                    } else {
                        vec![]
                    }
                }
                Node::Class { neg, ranges } => match s.get(i) {
                    Some(&c) if ranges.iter().any(|&(a, b)| a <= c && c <= b) != *neg => vec![i + 1],
                    _ => vec![],
                },
                Node::Ref(r) => {
                    let key = (r.clone(), i);
                    if let Some(v) = memo.get(&key) {
                        return v.clone();
                    }
                    memo.insert(key.clone(), vec![]); // no left recursion in these grammars
                    let v = self.ends(&self.rules[r], s, i, memo);
                    memo.insert(key, v.clone());
                    v
                }
                Node::Seq(items) => {
                    let mut cur = vec![i];
                    for it in items {
                        let mut next = Vec::new();
                        for &p in &cur {
                            for e in self.ends(it, s, p, memo) {
                                if !next.contains(&e) {
                                    next.push(e);
                                }
                            }
                        }
                        cur = next;
                        if cur.is_empty() {
                            break;
                        }
                    }
                    cur
                }
                Node::Alt(alts) => {
                    let mut out = Vec::new();
                    for a in alts {
                        for e in self.ends(a, s, i, memo) {
                            if !out.contains(&e) {
                                out.push(e);
                            }
                        }
                    }
                    out
                }
                Node::Rep(x, lo, hi) => {
                    let mut out = Vec::new();
                    let mut cur = vec![i];
                    let mut k = 0;
                    loop {
                        if k >= *lo {
                            for &p in &cur {
                                if !out.contains(&p) {
                                    out.push(p);
                                }
                            }
                        }
                        if hi.is_some_and(|h| k >= h) || cur.is_empty() {
                            break;
                        }
                        let mut next = Vec::new();
                        for &p in &cur {
                            for e in self.ends(x, s, p, memo) {
                                // Progress only (an empty match would loop).
                                if e > p && !next.contains(&e) {
                                    next.push(e);
                                }
                            }
                        }
                        cur = next;
                        k += 1;
                    }
                    out
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gbnf::Grammar;
    use super::*;
    use serde_json::json;

    fn g(schema: Value) -> Grammar {
        let text = for_schema(&schema).unwrap();
        Grammar::parse(&text)
    }

    #[track_caller]
    fn check(gr: &Grammar, yes: &[&str], no: &[&str]) {
        for y in yes {
            assert!(gr.accepts(y), "should accept: {y}");
        }
        for n in no {
            assert!(!gr.accepts(n), "should reject: {n}");
        }
    }

    #[test]
    fn strings_with_escapes() {
        let gr = g(json!({"type": "string"}));
        check(
            &gr,
            &[r#""""#, r#""plain""#, r#""a \"quote\" and \\ and \n and \u00e9""#, "\"héllo wörld\"", r#""tab\tok""#],
            &[r#""unterminated"#, r#""bad \q escape""#, "\"raw\nnewline\"", r#""\u12""#, "plain", r#""a" "b""#],
        );
        let bounded = g(json!({"type": "string", "minLength": 2, "maxLength": 3}));
        check(&bounded, &[r#""ab""#, r#""a\nc""#], &[r#""a""#, r#""abcd""#]);
    }

    #[test]
    fn numbers_booleans_null_and_enums() {
        check(&g(json!({"type": "integer"})), &["0", "-12", "123456"], &["01", "1.5", "-", "1e3", "\"1\""]);
        check(&g(json!({"type": "number"})), &["0", "-1.25", "3e8", "1.5E-3"], &["1.", ".5", "+1", "NaN"]);
        check(&g(json!({"type": "boolean"})), &["true", "false"], &["True", "1", "null"]);
        check(&g(json!({"type": ["string", "null"]})), &["null", "\"x\""], &["1"]);
        check(&g(json!({"enum": ["left", "right", 3, null]})), &["\"left\"", "\"right\"", "3", "null"], &["\"up\"", "\"Left\"", "4"]);
        check(&g(json!({"const": "mm"})), &["\"mm\""], &["\"m\""]);
    }

    #[test]
    fn objects_with_required_and_optional_properties_in_order() {
        let gr = g(json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "string"},
                "c": {"type": "boolean"}
            },
            "required": ["b"]
        }));
        check(
            &gr,
            &[
                r#"{"b": "x"}"#,
                r#"{"a": 1, "b": "x"}"#,
                r#"{"b": "x", "c": true}"#,
                r#"{"a": 1, "b": "x", "c": false}"#,
                "{\n  \"a\": 1,\n  \"b\": \"x\"\n}",
            ],
            &[
                r#"{}"#,                       // b is required
                r#"{"a": 1}"#,                 // b is required
                r#"{"b": 1}"#,                 // wrong type
                r#"{"b": "x", "d": 1}"#,       // unknown key
                r#"{"b": "x",}"#,              // trailing comma
                r#"{, "b": "x"}"#,             // leading comma
                r#"{"b": "x" "c": true}"#,     // missing comma
                r#"{"b": "x", "b": "y"}"#,     // repeated key
            ],
        );
        let all_optional = g(json!({"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}}));
        check(&all_optional, &["{}", r#"{"x": 1}"#, r#"{"y": 2}"#, r#"{"x": 1, "y": 2}"#], &[r#"{"x": 1,}"#, r#"{,"y": 2}"#]);
    }

    #[test]
    fn nested_objects_arrays_refs_and_unions() {
        let schema = json!({
            "type": "object",
            "properties": {
                "pose": {"$ref": "#/$defs/Pose"},
                "antennas": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                "tags": {"type": "array", "items": {"type": "string"}},
                "unit": {"anyOf": [{"const": "mm"}, {"const": "m"}]},
                "note": {"type": "string", "nullable": true}
            },
            "required": ["pose"],
            "$defs": {"Pose": {"type": "object", "properties": {"x": {"type": "number"}, "yaw": {"type": "number"}}, "required": ["x"]}}
        });
        let gr = g(schema);
        check(
            &gr,
            &[
                r#"{"pose": {"x": 1}}"#,
                r#"{"pose": {"x": 1, "yaw": -0.5}, "antennas": [0.1, 0.2], "tags": [], "unit": "mm", "note": null}"#,
                r#"{"pose": {"x": 0}, "tags": ["a", "b", "c"], "note": "hi"}"#,
            ],
            &[
                r#"{"pose": {"yaw": 1}}"#,                       // x required in the $ref
                r#"{"pose": {"x": 1}, "antennas": [0.1]}"#,       // minItems
                r#"{"pose": {"x": 1}, "antennas": [1, 2, 3]}"#,   // maxItems
                r#"{"pose": {"x": 1}, "unit": "cm"}"#,            // not in anyOf
                r#"{"pose": {"x": 1}, "tags": [1]}"#,             // item type
            ],
        );
    }

    #[test]
    fn free_form_values() {
        let gr = g(json!({}));
        check(&gr, &[r#"{"a": [1, {"b": null}], "c": "d"}"#, "[]", "1", "\"s\""], &["{a: 1}", "[1,]"]);
        let map = g(json!({"type": "object", "additionalProperties": {"type": "integer"}}));
        check(&map, &[r#"{}"#, r#"{"a": 1, "b": 2}"#], &[r#"{"a": "x"}"#]);
    }

    fn kernel_tools() -> Vec<(String, Value)> {
        vec![
            (
                "launch_process".into(),
                json!({"type": "object", "properties": {
                    "system_prompt": {"type": "string"},
                    "robots": {"type": "array", "items": {"type": "string", "enum": ["reachy-mini"]}}
                }, "required": ["system_prompt", "robots"]}),
            ),
            ("list_processes".into(), json!({"type": "object", "properties": {}})),
            (
                "terminate_process".into(),
                json!({"type": "object", "properties": {"worker_id": {"type": "string"}, "force": {"type": "boolean", "default": false}}, "required": ["worker_id"]}),
            ),
        ]
    }

    #[test]
    fn tool_calls_name_an_offered_tool_with_valid_arguments() {
        let tools = kernel_tools();
        let refs: Vec<(&str, &Value)> = tools.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let tagged = Grammar::parse(&for_tool_call(&refs, CallForm::Tagged).unwrap());
        let ok = [
            r#"{"name": "launch_process", "arguments": {"system_prompt": "Look left.", "robots": ["reachy-mini"]}}"#,
            r#"{"name": "list_processes", "arguments": {}}"#,
            r#"{"name": "terminate_process", "arguments": {"worker_id": "w1a2b3c4d", "force": true}}"#,
        ];
        let bad = [
            r#"{"name": "fly", "arguments": {}}"#,
            r#"{"name": "launch_process", "arguments": {"system_prompt": "x"}}"#,
            r#"{"name": "launch_process", "arguments": {"system_prompt": "x", "robots": ["ghost"]}}"#,
            r#"{"name": "terminate_process", "arguments": {"force": true}}"#,
            r#"{"name": "list_processes"}"#,
            r#"{"name": "list_processes", "arguments": {}} trailing"#,
        ];
        for c in ok {
            assert!(tagged.accepts(&format!("<tool_call>\n{c}\n</tool_call>")), "{c}");
            assert!(!tagged.accepts(c), "a bare call is not the tagged form: {c}");
        }
        for c in bad {
            assert!(!tagged.accepts(&format!("<tool_call>\n{c}\n</tool_call>")), "{c}");
        }
        let lazy = Grammar::parse(&for_tool_call(&refs, CallForm::TaggedOrBare).unwrap());
        for c in ok {
            assert!(lazy.accepts(c) && lazy.accepts(&format!("<tool_call>\n{c}\n</tool_call>")), "{c}");
        }
        for c in bad {
            assert!(!lazy.accepts(c), "{c}");
        }
        assert_eq!(for_tool_call(&[], CallForm::Tagged), Err(GrammarError::NoTools));
    }

    #[test]
    fn unsupported_schemas_are_errors_not_panics() {
        assert!(for_schema(&json!({"type": "tuple"})).is_err());
        assert!(for_schema(&json!({"$ref": "#/$defs/Missing"})).is_err());
        assert!(for_schema(&json!({"enum": []})).is_err());
        // An array of such items can still be empty.
        check(&g(json!({"type": "array", "items": {"type": "string", "enum": []}})), &["[]"], &["[\"a\"]"]);
        assert!(for_schema(&json!(false)).is_err());
        assert!(for_schema(&json!({"type": "object", "properties": {"a": {}}, "required": ["b"]})).is_err());
        // Recursive definitions terminate.
        let tree = json!({"$ref": "#/$defs/T", "$defs": {"T": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/T"}}}}}});
        let gr = g(tree);
        check(&gr, &[r#"{"kids": [{"kids": []}, {}]}"#], &[r#"{"kids": [1]}"#]);
    }

    #[test]
    fn literals_escape_what_gbnf_needs() {
        assert_eq!(literal("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
        assert_eq!(literal("\u{1}"), r#""\x01""#);
    }
}
