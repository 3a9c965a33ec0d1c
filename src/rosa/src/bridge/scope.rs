//! A bridged robot's scope: its namespace, which names may be read or written (allow/deny globs,
//! per kind), value limits on what is sent, the approval gate and what "stop" means for it.
//!
//! The `ros:` section of a robot in the robots registry (see `config/robots.yaml`):
//! ```yaml
//! ros:
//!   namespace: /r1
//!   allow: []                  # globs; default: the whole namespace (`/r1/*`)
//!   deny: ["secret*"]          # deny wins over allow; relative globs are in the namespace
//!   read_only: false           # true: nothing is published, called, sent or set
//!   write: {allow: [], deny: []}       # extra rules for mutating calls only
//!   topics: {allow: [], deny: []}      # per kind: topics, services, actions, parameters
//!   limits:
//!     - {name: cmd_vel, field: linear.x, min: -0.5, max: 0.5, mode: clamp}   # or mode: refuse
//!   approval: ["arm/*"]        # mutating calls on these names wait for a human decision
//!   approval_timeout_sec: 30   # no decision in time = denied
//!   stop:                      # published when a session that wrote to `topic` ends
//!     - {topic: cmd_vel, type: geometry_msgs/msg/Twist, msg: {}}
//! ```
//! Parameter rules match `<node>:<parameter>` (`/r1/driver:max_speed`). Globs: `*` is any run of
//! characters (`/` included), `?` one character. No r2r here.

use crate::dynmsg::{MessageValue, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitMode {
    /// Bring the value into [min, max] and say so in the reply.
    #[default]
    Clamp,
    /// Refuse the whole call.
    Refuse,
}

/// A limit on one numeric field of what is published / sent to names matching `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// A name or glob (relative to the namespace unless absolute): topic, service or action.
    pub name: String,
    /// A field path in the message / request / goal: `linear.x`, `poses[0].position.z`.
    pub field: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub mode: LimitMode,
}

/// A message published on `topic` when a session that published there ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopCommand {
    pub topic: String,
    /// The message type (default: the type the session published with).
    #[serde(default, rename = "type")]
    pub type_name: Option<String>,
    /// The message (JSON; missing fields are zero / default).
    #[serde(default = "empty_object")]
    pub msg: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// The `ros:` section of a robot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RosSection {
    pub namespace: String,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub read_only: bool,
    pub write: Rules,
    pub topics: Rules,
    pub services: Rules,
    pub actions: Rules,
    pub parameters: Rules,
    pub limits: Vec<Limit>,
    pub approval: Vec<String>,
    pub approval_timeout_sec: f64,
    pub stop: Vec<StopCommand>,
}

impl Default for RosSection {
    fn default() -> Self {
        Self {
            namespace: "/".into(),
            allow: vec![],
            deny: vec![],
            read_only: false,
            write: Rules::default(),
            topics: Rules::default(),
            services: Rules::default(),
            actions: Rules::default(),
            parameters: Rules::default(),
            limits: vec![],
            approval: vec![],
            approval_timeout_sec: 30.0,
            stop: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Topic,
    Service,
    Action,
    Parameter,
    Node,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Service => "service",
            Kind::Action => "action",
            Kind::Parameter => "parameter",
            Kind::Node => "node",
        }
    }

    fn section(self) -> &'static str {
        match self {
            Kind::Topic => "topics",
            Kind::Service => "services",
            Kind::Action => "actions",
            Kind::Parameter => "parameters",
            Kind::Node => "",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    #[error("`{0}` is not a valid ROS name: {1}")]
    BadName(String, &'static str),
    #[error("{kind} {name} is refused by robot {robot}'s rule {rule}")]
    Denied { robot: String, kind: &'static str, name: String, rule: String },
    #[error("{kind} {name} is outside robot {robot}'s scope (allowed: {allowed})")]
    OutOfScope { robot: String, kind: &'static str, name: String, allowed: String },
    #[error("robot {0} is read-only: nothing may be published, called, sent or set")]
    ReadOnly(String),
    #[error("{0}")]
    Limit(String),
    #[error("robot {robot}'s ros section: {message}")]
    Config { robot: String, message: String },
}

/// A robot's scope, with its globs resolved against its namespace.
#[derive(Debug, Clone)]
pub struct Scope {
    pub robot: String,
    pub namespace: String,
    pub read_only: bool,
    allow: Vec<String>,
    deny: Vec<String>,
    write: Rules,
    kinds: [(Kind, Rules); 4],
    limits: Vec<Limit>,
    approval: Vec<String>,
    pub approval_timeout_sec: f64,
    pub stop: Vec<StopCommand>,
}

/// `*` any run of characters, `?` one character; everything else literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with backtracking on the last `*` (linear in practice, no recursion).
    let (mut pi, mut ni, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Checks a name's characters as rcl would (`[A-Za-z0-9_/]`, no `//`, not ending in `/`).
pub fn check_name(name: &str) -> Result<(), ScopeError> {
    let bad = |why| Err(ScopeError::BadName(crate::input::summary(name, 200).into_owned(), why));
    if name.is_empty() || name == "/" {
        return bad("it is empty");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '/') {
        return bad("only letters, digits, `_` and `/` may be used");
    }
    if name.contains("//") || (name.len() > 1 && name.ends_with('/')) {
        return bad("empty name part");
    }
    if name.split('/').any(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit())) {
        return bad("a name part may not start with a digit");
    }
    Ok(())
}

fn join(namespace: &str, name: &str) -> String {
    if namespace == "/" {
        format!("/{name}")
    } else {
        format!("{namespace}/{name}")
    }
}

impl Scope {
    pub fn new(robot: &str, s: &RosSection) -> Result<Self, ScopeError> {
        let cfg = |m: String| ScopeError::Config { robot: robot.to_string(), message: m };
        let mut ns = s.namespace.trim().to_string();
        if ns.is_empty() {
            ns = "/".into();
        }
        if !ns.starts_with('/') {
            ns.insert(0, '/');
        }
        let ns = ns.trim_end_matches('/').to_string();
        let ns = if ns.is_empty() { "/".to_string() } else { ns };
        if ns != "/" {
            check_name(&ns).map_err(|e| cfg(format!("namespace: {e}")))?;
        }
        if !(s.approval_timeout_sec.is_finite() && s.approval_timeout_sec > 0.0 && s.approval_timeout_sec <= 86_400.0) {
            return Err(cfg(format!("approval_timeout_sec {} is not within (0, 86400]", s.approval_timeout_sec)));
        }
        let abs = |g: &String| if g.starts_with('/') { g.trim().to_string() } else { join(&ns, g.trim()) };
        let rules = |r: &Rules| Rules { allow: r.allow.iter().map(abs).collect(), deny: r.deny.iter().map(abs).collect() };
        let mut limits = s.limits.clone();
        for l in &mut limits {
            l.name = abs(&l.name);
            if l.min.is_some_and(|m| !m.is_finite()) || l.max.is_some_and(|m| !m.is_finite()) {
                return Err(cfg(format!("limit on {} {}: min and max must be finite numbers", l.name, l.field)));
            }
            if let (Some(a), Some(b)) = (l.min, l.max) {
                if a > b {
                    return Err(cfg(format!("limit on {} {}: min {a} > max {b}", l.name, l.field)));
                }
            }
        }
        let allow = if s.allow.is_empty() { vec![join(&ns, "*")] } else { s.allow.iter().map(abs).collect() };
        Ok(Self {
            robot: robot.to_string(),
            namespace: ns.clone(),
            read_only: s.read_only,
            allow,
            deny: s.deny.iter().map(abs).collect(),
            write: rules(&s.write),
            kinds: [
                (Kind::Topic, rules(&s.topics)),
                (Kind::Service, rules(&s.services)),
                (Kind::Action, rules(&s.actions)),
                (Kind::Parameter, rules(&s.parameters)),
            ],
            limits,
            approval: s.approval.iter().map(abs).collect(),
            approval_timeout_sec: s.approval_timeout_sec,
            stop: s
                .stop
                .iter()
                .map(|c| StopCommand { topic: abs(&c.topic), ..c.clone() })
                .collect(),
        })
    }

    /// A name as given by a caller, absolute: `battery` → `/r1/battery`.
    pub fn resolve(&self, name: &str) -> Result<String, ScopeError> {
        let n = name.trim();
        let abs = if n.starts_with('/') { n.to_string() } else { join(&self.namespace, n) };
        check_name(&abs)?;
        Ok(abs)
    }

    fn kind_rules(&self, kind: Kind) -> Option<&Rules> {
        self.kinds.iter().find(|(k, _)| *k == kind).map(|(_, r)| r)
    }

    /// May `name` (absolute; for parameters `<node>:<param>`) be accessed so?
    pub fn check(&self, kind: Kind, access: Access, name: &str) -> Result<(), ScopeError> {
        let denied = |rule: String| ScopeError::Denied { robot: self.robot.clone(), kind: kind.name(), name: name.to_string(), rule };
        // Parameters: the node part is checked with the general rules.
        let general = if kind == Kind::Parameter { name.split(':').next().unwrap_or(name) } else { name };
        if access == Access::Write && self.read_only {
            return Err(ScopeError::ReadOnly(self.robot.clone()));
        }
        if let Some(g) = self.deny.iter().find(|g| glob_match(g, general)) {
            return Err(denied(format!("deny `{g}`")));
        }
        let kr = self.kind_rules(kind);
        if let Some(g) = kr.and_then(|r| r.deny.iter().find(|g| glob_match(g, name))) {
            return Err(denied(format!("{}.deny `{g}`", kind.section())));
        }
        if access == Access::Write {
            if let Some(g) = self.write.deny.iter().find(|g| glob_match(g, name)) {
                return Err(denied(format!("write.deny `{g}`")));
            }
        }
        let out = |allowed: &[String]| ScopeError::OutOfScope {
            robot: self.robot.clone(),
            kind: kind.name(),
            name: name.to_string(),
            allowed: allowed.join(", "),
        };
        if !self.allow.iter().any(|g| glob_match(g, general)) {
            return Err(out(&self.allow));
        }
        if let Some(r) = kr.filter(|r| !r.allow.is_empty()) {
            if !r.allow.iter().any(|g| glob_match(g, name)) {
                return Err(denied(format!("{}.allow (not listed in {})", kind.section(), r.allow.join(", "))));
            }
        }
        if access == Access::Write && !self.write.allow.is_empty() && !self.write.allow.iter().any(|g| glob_match(g, name)) {
            return Err(denied(format!("write.allow (not listed in {})", self.write.allow.join(", "))));
        }
        Ok(())
    }

    /// Is `name` readable (for listing)?
    pub fn visible(&self, kind: Kind, name: &str) -> bool {
        self.check(kind, Access::Read, name).is_ok()
    }

    /// Does a mutating call on `name` wait for approval?
    pub fn needs_approval(&self, name: &str) -> bool {
        self.approval.iter().any(|g| glob_match(g, name))
    }

    /// The stop command configured for a topic.
    pub fn stop_for(&self, topic: &str) -> Option<&StopCommand> {
        self.stop.iter().find(|c| c.topic == topic)
    }

    /// Apply the value limits of `name` to `msg`: clamped values are changed in place (and each
    /// change described), a value beyond a `refuse` limit (or NaN) refuses the whole message.
    pub fn apply_limits(&self, name: &str, msg: &mut MessageValue) -> Result<Vec<String>, ScopeError> {
        let mut notes = Vec::new();
        let limits: Vec<&Limit> = self.limits.iter().filter(|l| glob_match(&l.name, name)).collect();
        if limits.is_empty() {
            return Ok(notes);
        }
        let mut root = Value::Message(msg.clone());
        for l in limits {
            let Some(v) = root.path_mut(&l.field) else {
                // The field is not in this type (a limit for another type on the same name): skip.
                continue;
            };
            let Some(x) = v.as_f64() else {
                return Err(ScopeError::Limit(format!("limit on {name} {}: the field is not a number", l.field)));
            };
            let lo = l.min.unwrap_or(f64::NEG_INFINITY);
            let hi = l.max.unwrap_or(f64::INFINITY);
            if x.is_nan() {
                return Err(ScopeError::Limit(format!("{name} {} is NaN: refused", l.field)));
            }
            if x < lo || x > hi {
                let range = format!("[{}, {}]", l.min.map_or("-inf".into(), |m| m.to_string()), l.max.map_or("inf".into(), |m| m.to_string()));
                match l.mode {
                    LimitMode::Refuse => {
                        return Err(ScopeError::Limit(format!(
                            "{name} {} = {x} is outside its limit {range}: refused (robot {}'s limits)",
                            l.field, self.robot
                        )))
                    }
                    LimitMode::Clamp => {
                        let c = x.clamp(lo, hi);
                        v.set_f64(c);
                        notes.push(format!("{} {x} limited to {c} (limit {range})", l.field));
                    }
                }
            }
        }
        if let Value::Message(m) = root {
            *msg = m;
        }
        Ok(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(yaml: &str) -> Scope {
        let s: RosSection = serde_yaml::from_str(yaml).unwrap();
        Scope::new("r1", &s).unwrap()
    }

    #[test]
    fn globs() {
        assert!(glob_match("/r1/*", "/r1/cmd_vel"));
        assert!(glob_match("/r1/*", "/r1/a/b"));
        assert!(!glob_match("/r1/*", "/r2/cmd_vel"));
        assert!(!glob_match("/r1/*", "/r1"));
        assert!(glob_match("/r1/secret*", "/r1/secret_key"));
        assert!(glob_match("/r?/x", "/r2/x"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("/a", "/ab"));
        assert!(glob_match("/a*b*c", "/axxbyyc"));
        assert!(!glob_match("/a*b*c", "/axxbyy"));
    }

    #[test]
    fn names_resolve_in_the_namespace() {
        let s = scope("namespace: /r1");
        assert_eq!(s.resolve("battery").unwrap(), "/r1/battery");
        assert_eq!(s.resolve("/r1/battery").unwrap(), "/r1/battery");
        assert_eq!(s.resolve(" cmd_vel ").unwrap(), "/r1/cmd_vel");
        for bad in ["", "a b", "a//b", "a\0b", "/r1/", "1abc", "~/x", "a.b"] {
            assert!(s.resolve(bad).is_err(), "{bad:?}");
        }
        let root = scope("namespace: ''");
        assert_eq!(root.namespace, "/");
        assert_eq!(root.resolve("x").unwrap(), "/x");
        assert_eq!(scope("namespace: r1/").namespace, "/r1");
    }

    #[test]
    fn deny_wins_and_names_the_rule() {
        let s = scope("namespace: /r1\ndeny: ['secret*']\ntopics: {deny: ['/r1/private']}\nwrite: {deny: ['/r1/odom']}");
        assert!(s.check(Kind::Topic, Access::Read, "/r1/cmd_vel").is_ok());
        let e = s.check(Kind::Topic, Access::Write, "/r1/secret_x").unwrap_err().to_string();
        assert!(e.contains("deny `/r1/secret*`"), "{e}");
        let e = s.check(Kind::Topic, Access::Read, "/r1/private").unwrap_err().to_string();
        assert!(e.contains("topics.deny `/r1/private`"), "{e}");
        assert!(s.check(Kind::Service, Access::Read, "/r1/private").is_ok());
        assert!(s.check(Kind::Topic, Access::Read, "/r1/odom").is_ok());
        assert!(s.check(Kind::Topic, Access::Write, "/r1/odom").unwrap_err().to_string().contains("write.deny"));
        // Outside the namespace.
        let e = s.check(Kind::Topic, Access::Read, "/r2/cmd_vel").unwrap_err().to_string();
        assert!(e.contains("outside robot r1's scope"), "{e}");
    }

    #[test]
    fn explicit_allow_and_read_only() {
        let s = scope("namespace: /r1\nallow: ['/r1/*', '/tf', '/tf_static']\nread_only: true\nservices: {allow: ['get_*']}");
        assert!(s.check(Kind::Topic, Access::Read, "/tf").is_ok());
        assert!(matches!(s.check(Kind::Topic, Access::Write, "/r1/cmd_vel"), Err(ScopeError::ReadOnly(_))));
        assert!(s.check(Kind::Service, Access::Read, "/r1/get_state").is_ok());
        assert!(s.check(Kind::Service, Access::Read, "/r1/reset").unwrap_err().to_string().contains("services.allow"));
    }

    #[test]
    fn parameters_match_node_and_name() {
        let s = scope("namespace: /r1\nparameters: {deny: ['*:secret*']}");
        assert!(s.check(Kind::Parameter, Access::Write, "/r1/driver:max_speed").is_ok());
        assert!(s.check(Kind::Parameter, Access::Write, "/r1/driver:secret_key").is_err());
        assert!(s.check(Kind::Parameter, Access::Read, "/r2/driver:max_speed").is_err());
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let y = |t: &str| Scope::new("r1", &serde_yaml::from_str::<RosSection>(t).unwrap()).unwrap_err().to_string();
        assert!(y("namespace: '/r 1'").contains("namespace"));
        assert!(y("limits: [{name: x, field: a, min: 2, max: 1}]").contains("min 2 > max 1"));
        assert!(y("approval_timeout_sec: 0").contains("approval_timeout_sec"));
        assert!(serde_yaml::from_str::<RosSection>("namespce: /r1").is_err());
    }

    fn twist(x: f64, z: f64) -> MessageValue {
        let dir = std::env::temp_dir().join(format!("rosa-scope-{}-{x}-{z}", std::process::id()));
        for (rel, text) in [("share/geometry_msgs/msg/Vector3.msg", "float64 x\nfloat64 y\nfloat64 z\n"), ("share/geometry_msgs/msg/Twist.msg", "Vector3 linear\nVector3 angular\n")] {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let reg = crate::dynmsg::Registry::with_prefixes(vec![dir]);
        let ty = reg.message("geometry_msgs/msg/Twist").unwrap();
        crate::dynmsg::json::from_json(&ty, &serde_json::json!({"linear": {"x": x}, "angular": {"z": z}})).unwrap()
    }

    #[test]
    fn value_limits_clamp_or_refuse() {
        let s = scope("namespace: /r1\nlimits:\n  - {name: cmd_vel, field: linear.x, min: -0.5, max: 0.5}\n  - {name: cmd_vel, field: angular.z, max: 1.0, mode: refuse}\n  - {name: cmd_vel, field: no.such, max: 1}\n");
        let mut m = twist(3.0, 0.5);
        let notes = s.apply_limits("/r1/cmd_vel", &mut m).unwrap();
        assert_eq!(notes, vec!["linear.x 3 limited to 0.5 (limit [-0.5, 0.5])".to_string()]);
        assert_eq!(Value::Message(m.clone()).path("linear.x").and_then(Value::as_f64), Some(0.5));
        let mut m = twist(-9.0, 0.0);
        s.apply_limits("/r1/cmd_vel", &mut m).unwrap();
        assert_eq!(Value::Message(m).path("linear.x").and_then(Value::as_f64), Some(-0.5));
        let e = s.apply_limits("/r1/cmd_vel", &mut twist(0.1, 2.0)).unwrap_err().to_string();
        assert!(e.contains("angular.z = 2 is outside its limit [-inf, 1]: refused"), "{e}");
        // NaN (JSON has none: set it in the value) is refused.
        let mut root = Value::Message(twist(0.0, 0.0));
        assert!(root.path_mut("linear.x").is_some_and(|v| v.set_f64(f64::NAN)));
        let Value::Message(mut m) = root else { unreachable!() };
        assert!(s.apply_limits("/r1/cmd_vel", &mut m).unwrap_err().to_string().contains("NaN"));
        // Other names are not limited.
        let mut m = twist(3.0, 5.0);
        assert!(s.apply_limits("/r1/other", &mut m).unwrap().is_empty());
    }

    #[test]
    fn approval_and_stop_resolve() {
        let s = scope("namespace: /r1\napproval: [arm/*]\nstop: [{topic: cmd_vel, type: geometry_msgs/msg/Twist}]");
        assert!(s.needs_approval("/r1/arm/move"));
        assert!(!s.needs_approval("/r1/cmd_vel"));
        let c = s.stop_for("/r1/cmd_vel").unwrap();
        assert_eq!(c.msg, serde_json::json!({}));
        assert_eq!(c.type_name.as_deref(), Some("geometry_msgs/msg/Twist"));
    }
}
