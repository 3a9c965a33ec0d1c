//! Trigger conditions: a small expression on a message's fields, e.g. `percentage < 0.2`,
//! `status.level >= 2 && name == "motor"`, `!(data)`, or `any` (every message).
//!
//! Grammar: `or := and ("||" and)*`, `and := unary ("&&" unary)*`, `unary := "!" unary | "("
//! or ")" | operand (op operand)?` with `op` one of `< <= > >= == !=`, and an operand a field
//! path (`a.b[2].c`), a number, a "string" / 'string', `true` or `false`. A field alone is true
//! when it is true / non-zero / non-empty. A path that is not in the message is an evaluation
//! error (said when the trigger is created, against the type's default message). No r2r here.

use serde_json::Value as Json;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("condition `{text}`: {message}")]
pub struct ConditionError {
    pub text: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(String),
    Num(f64),
    Str(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Any,
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Truthy(Operand),
    Cmp(Operand, Op, Operand),
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    text: String,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Str(String),
    Op(Op),
    And,
    Or,
    Not,
    LParen,
    RParen,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        match ch {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '&' if next == Some('&') => {
                out.push(Tok::And);
                i += 2
            }
            '|' if next == Some('|') => {
                out.push(Tok::Or);
                i += 2
            }
            '<' | '>' | '=' | '!' => {
                let eq = next == Some('=');
                let t = match (ch, eq) {
                    ('<', true) => Tok::Op(Op::Le),
                    ('<', false) => Tok::Op(Op::Lt),
                    ('>', true) => Tok::Op(Op::Ge),
                    ('>', false) => Tok::Op(Op::Gt),
                    ('=', true) => Tok::Op(Op::Eq),
                    ('!', true) => Tok::Op(Op::Ne),
                    ('!', false) => Tok::Not,
                    _ => return Err(format!("`=` at {i}: use `==`")),
                };
                out.push(t);
                i += if eq { 2 } else { 1 };
            }
            '"' | '\'' => {
                let mut j = i + 1;
                let mut text = String::new();
                while j < c.len() && c[j] != ch {
                    text.push(c[j]);
                    j += 1;
                }
                if j >= c.len() {
                    return Err(format!("unterminated string at {i}"));
                }
                out.push(Tok::Str(text));
                i = j + 1;
            }
            d if d.is_ascii_digit() || (d == '-' || d == '.') && next.is_some_and(|n| n.is_ascii_digit() || n == '.') => {
                let mut j = i + 1;
                while j < c.len() && (c[j].is_ascii_alphanumeric() || c[j] == '.' || ((c[j] == '-' || c[j] == '+') && matches!(c[j - 1], 'e' | 'E'))) {
                    j += 1;
                }
                let t: String = c[i..j].iter().collect();
                let n: f64 = t.parse().map_err(|_| format!("`{t}` is not a number"))?;
                if !n.is_finite() {
                    return Err(format!("`{t}` is not a finite number"));
                }
                out.push(Tok::Num(n));
                i = j;
            }
            a if a.is_ascii_alphabetic() || a == '_' => {
                let mut j = i + 1;
                while j < c.len() && (c[j].is_ascii_alphanumeric() || matches!(c[j], '_' | '.' | '[' | ']')) {
                    j += 1;
                }
                out.push(Tok::Ident(c[i..j].iter().collect()));
                i = j;
            }
            other => return Err(format!("unexpected `{other}` at {i}")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("nested too deeply".into());
        }
        let r = match self.peek().cloned() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err("a `(` is not closed".into());
                }
                self.pos += 1;
                Ok(e)
            }
            _ => {
                let a = self.operand()?;
                if let Some(Tok::Op(op)) = self.peek().cloned() {
                    self.pos += 1;
                    let b = self.operand()?;
                    Ok(Expr::Cmp(a, op, b))
                } else {
                    Ok(Expr::Truthy(a))
                }
            }
        };
        self.depth -= 1;
        r
    }

    fn operand(&mut self) -> Result<Operand, String> {
        let t = self.peek().cloned().ok_or("an operand is missing at the end")?;
        self.pos += 1;
        Ok(match t {
            Tok::Num(n) => Operand::Num(n),
            Tok::Str(s) => Operand::Str(s),
            Tok::Ident(i) if i == "true" => Operand::Bool(true),
            Tok::Ident(i) if i == "false" => Operand::Bool(false),
            Tok::Ident(i) => Operand::Path(i),
            other => return Err(format!("expected a field, a number or a string, found {other:?}")),
        })
    }
}

/// The value at `a.b[2].c` in a message's JSON.
pub fn lookup<'a>(v: &'a Json, path: &str) -> Option<&'a Json> {
    let mut cur = v;
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        let mut r = rest;
        while let Some(s) = r.strip_prefix('[') {
            let end = s.find(']')?;
            let idx: usize = s[..end].parse().ok()?;
            cur = cur.get(idx)?;
            r = &s[end + 1..];
        }
        if !r.is_empty() {
            return None;
        }
    }
    Some(cur)
}

enum V<'a> {
    Num(f64),
    Str(&'a str),
    Bool(bool),
    Other(&'a Json),
}

impl Condition {
    pub fn parse(text: &str) -> Result<Self, ConditionError> {
        let t = text.trim();
        let err = |m: String| ConditionError { text: crate::input::summary(text, 200).into_owned(), message: m };
        if t.is_empty() || t == "any" || t == "true" || t == "*" {
            return Ok(Self { text: "any".into(), expr: Expr::Any });
        }
        if t.len() > 2000 {
            return Err(err("longer than 2000 characters".into()));
        }
        let toks = lex(t).map_err(err)?;
        let mut p = Parser { toks, pos: 0, depth: 0 };
        let expr = p.or().map_err(err)?;
        if p.pos != p.toks.len() {
            return Err(err(format!("unexpected {:?} after the expression", p.toks[p.pos])));
        }
        Ok(Self { text: t.to_string(), expr })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Does the condition hold for this message (its JSON)?
    pub fn eval(&self, msg: &Json) -> Result<bool, ConditionError> {
        eval(&self.expr, msg).map_err(|m| ConditionError { text: self.text.clone(), message: m })
    }
}

fn value<'a>(o: &'a Operand, msg: &'a Json) -> Result<V<'a>, String> {
    Ok(match o {
        Operand::Num(n) => V::Num(*n),
        Operand::Str(s) => V::Str(s),
        Operand::Bool(b) => V::Bool(*b),
        Operand::Path(p) => match lookup(msg, p).ok_or_else(|| format!("the message has no field `{p}`"))? {
            Json::Number(n) => V::Num(n.as_f64().unwrap_or(f64::NAN)),
            Json::String(s) => V::Str(s),
            Json::Bool(b) => V::Bool(*b),
            other => V::Other(other),
        },
    })
}

fn eval(e: &Expr, msg: &Json) -> Result<bool, String> {
    Ok(match e {
        Expr::Any => true,
        Expr::Or(a, b) => eval(a, msg)? || eval(b, msg)?,
        Expr::And(a, b) => eval(a, msg)? && eval(b, msg)?,
        Expr::Not(a) => !eval(a, msg)?,
        Expr::Truthy(o) => match value(o, msg)? {
            V::Num(n) => n != 0.0 && !n.is_nan(),
            V::Str(s) => !s.is_empty(),
            V::Bool(b) => b,
            V::Other(j) => match j {
                Json::Array(a) => !a.is_empty(),
                Json::Object(m) => !m.is_empty(),
                _ => false,
            },
        },
        Expr::Cmp(a, op, b) => {
            let (x, y) = (value(a, msg)?, value(b, msg)?);
            let ord = match (&x, &y) {
                (V::Num(p), V::Num(q)) => p.partial_cmp(q),
                (V::Str(p), V::Str(q)) => Some(p.cmp(q)),
                (V::Bool(p), V::Bool(q)) => Some(p.cmp(q)),
                (V::Bool(p), V::Num(q)) | (V::Num(q), V::Bool(p)) if matches!(op, Op::Eq | Op::Ne) => {
                    Some(if (*q != 0.0) == *p { std::cmp::Ordering::Equal } else { std::cmp::Ordering::Less })
                }
                _ => return Err(format!("cannot compare {} with {}", kind(&x), kind(&y))),
            };
            let Some(o) = ord else { return Ok(matches!(op, Op::Ne)) }; // NaN: only != holds
            use std::cmp::Ordering::*;
            match op {
                Op::Lt => o == Less,
                Op::Le => o != Greater,
                Op::Gt => o == Greater,
                Op::Ge => o != Less,
                Op::Eq => o == Equal,
                Op::Ne => o != Equal,
            }
        }
    })
}

fn kind(v: &V) -> &'static str {
    match v {
        V::Num(_) => "a number",
        V::Str(_) => "a string",
        V::Bool(_) => "a boolean",
        V::Other(_) => "an array or message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_hold_or_not() {
        let m = json!({"percentage": 0.15, "status": {"level": 2, "name": "motor"}, "cells": [3.7, 3.1], "ok": false, "data": ""});
        let t = |c: &str| Condition::parse(c).unwrap().eval(&m).unwrap();
        assert!(t("percentage < 0.2"));
        assert!(!t("percentage >= 0.2"));
        assert!(t("status.level >= 2 && status.name == \"motor\""));
        assert!(t("status.name == 'x' || cells[1] < 3.2"));
        assert!(t("!ok"));
        assert!(!t("data"));
        assert!(t("any"));
        assert!(t(""));
        assert!(t("!(percentage > 1) && cells"));
        assert!(t("ok == false"));
        assert!(t("-1 < percentage"));
        assert!(t("percentage < 2e-1"));
    }

    #[test]
    fn bad_conditions_are_clear_errors() {
        for bad in ["percentage <", "a = 1", "(a < 1", "a < 1 b", "\"open", "a # b", "1e999 > a"] {
            let e = Condition::parse(bad).unwrap_err();
            assert!(!e.message.is_empty(), "{bad}");
        }
        let m = json!({"a": 1, "s": "x"});
        assert!(Condition::parse("b < 1").unwrap().eval(&m).unwrap_err().message.contains("no field `b`"));
        assert!(Condition::parse("s < 1").unwrap().eval(&m).unwrap_err().message.contains("cannot compare"));
        let deep = "(".repeat(100) + "a" + &")".repeat(100);
        assert!(Condition::parse(&deep).is_err());
    }

    #[test]
    fn paths_with_indexes() {
        let m = json!({"poses": [{"x": 1}, {"x": 2}], "m": [[1, 2], [3]]});
        assert_eq!(lookup(&m, "poses[1].x"), Some(&json!(2)));
        assert_eq!(lookup(&m, "m[1][0]"), Some(&json!(3)));
        assert_eq!(lookup(&m, "poses[5].x"), None);
        assert_eq!(lookup(&m, "poses[x]"), None);
    }
}
