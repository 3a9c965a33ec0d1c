//! Log lines that cannot be forged, and a rate limit for `/rosout`.
//!
//! Text from outside (commands, transcripts, LLM replies, tool results) reaches the logs. Every
//! field of every event is written with its control characters escaped (`\n`, `\r`, `\t`,
//! `\u{1b}`, bidirectional overrides…), so one event is one line: a newline in a command cannot
//! start a line of its own that looks like another event, and escape sequences cannot drive the
//! terminal. The same text goes to `/rosout` (see `ros::attach_rosout`), through [`RateLimit`] so
//! that a log storm cannot flood the graph. No r2r in here.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::Instant;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Characters that would break a log line or drive a terminal: C0/C1 controls and DEL, Unicode
/// line and paragraph separators, and the bidirectional formatting characters.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with [`is_unsafe`] characters escaped (`\n`, `\r`, `\t`, else `\u{…}`).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Writes an event's fields like tracing-subscriber's default (`message key=value …`), each value
/// escaped.
pub struct Visitor<'a> {
    out: &'a mut dyn fmt::Write,
    first: bool,
    result: fmt::Result,
}

impl<'a> Visitor<'a> {
    pub fn new(out: &'a mut dyn fmt::Write) -> Self {
        Self { out, first: true, result: Ok(()) }
    }

    fn write(&mut self, name: &str, value: &str) {
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.out, "{sep}{}", escape(value))
        } else {
            write!(self.out, "{sep}{}={}", name.strip_prefix("r#").unwrap_or(name), escape(value))
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write("message", value);
        } else {
            self.write(field.name(), &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field.name(), &format!("{value:?}"));
    }
}

/// The field formatter of the nodes' stderr log: [`Visitor`].
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Visitor::new(&mut writer);
        fields.record(&mut v);
        v.result
    }
}

/// An event's fields as one escaped line.
pub fn event_text(event: &tracing::Event<'_>) -> String {
    let mut s = String::new();
    let mut v = Visitor::new(&mut s);
    event.record(&mut v);
    s
}

/// At most `max` bytes of `s` (on a character boundary), saying how much was cut.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} more bytes)", &s[..end], s.len() - end))
}

/// A token bucket: bursts of `burst` messages, `per_sec` on average.
#[derive(Debug)]
pub struct RateLimit {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send it; `dropped` messages were refused since the last one sent (say so first).
    Send { dropped: u64 },
    Drop,
}

impl RateLimit {
    pub fn new(burst: u32, per_sec: f64) -> Self {
        Self::at(burst, per_sec, Instant::now())
    }

    pub fn at(burst: u32, per_sec: f64, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { burst, per_sec: per_sec.max(0.0), tokens: burst, last: now, dropped: 0 }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Send { dropped: std::mem::take(&mut self.dropped) }
        } else {
            self.dropped += 1;
            Admit::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain text, ünïcödé"), "plain text, ünïcödé");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nINFO kernel ready forged=1"), "a\\nINFO kernel ready forged=1");
        assert_eq!(escape("\r\t\u{1b}[31mred\u{7}\u{0}\u{9b}"), "\\r\\t\\u{1b}[31mred\\u{7}\\u{0}\\u{9b}");
        assert_eq!(escape("x\u{2028}y\u{202e}z"), "x\\u{2028}y\\u{202e}z");
        assert!(!escape("\u{1b}]0;title\u{7}").chars().any(is_unsafe));
    }

    #[test]
    fn clip_keeps_characters_whole() {
        assert_eq!(clip("short", 10), "short");
        let c = clip("ééééé", 3);
        assert_eq!(c, "é… (8 more bytes)");
    }

    #[test]
    fn a_storm_is_cut_to_the_rate_and_the_cut_is_counted() {
        let t0 = Instant::now();
        let mut r = RateLimit::at(10, 5.0, t0);
        let sent = (0..1000).filter(|_| r.admit(t0) != Admit::Drop).count();
        assert_eq!(sent, 10, "the burst, then nothing");
        // One second later: five more, the first says how many were dropped.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.admit(t1), Admit::Send { dropped: 990 });
        let more = (0..100).filter(|_| r.admit(t1) != Admit::Drop).count();
        assert_eq!(more, 4);
        // Over 10 s of a continuous storm, about per_sec × 10 get through.
        let mut sent = 0;
        for i in 0..10_000u64 {
            if r.admit(t1 + Duration::from_millis(i)) != Admit::Drop {
                sent += 1;
            }
        }
        assert!((49..=52).contains(&sent), "{sent}");
    }
}
