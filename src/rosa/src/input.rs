//! Input from outside, made safe before it is used: text that becomes a field of a ROS message,
//! text from a user, and numbers that become a `Duration` or a size.
//!
//! Every node takes text from places it does not control (the LLM, ROS clients, workers, the robot's
//! daemon) and numbers from goals, requests and parameters. rcl strings are C strings, so a NUL
//! cannot cross into rcl ([`ros_text`]: each becomes ␀ and the text says so; r2r_rcl carries the same
//! replacement as a safety net, `patches/r2r_rcl`). Invalid UTF-8 reaches us as U+FFFD (also that
//! patch). `Duration::from_secs_f64` panics on NaN, infinities, negative values and values beyond
//! ~1.8e19 s, so outside seconds go through [`seconds`] or [`clamped_seconds`].
//! No r2r here.

use std::borrow::Cow;
use std::time::Duration;

/// What a NUL becomes in text for ROS (U+2400 SYMBOL FOR NULL).
pub const NUL_SIGN: char = '\u{2400}';

/// How invalid UTF-8 arrives (r2r_rcl decodes lossily, `patches/r2r_rcl`).
pub const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;

/// Text for a string field of a ROS message: unchanged unless it holds NULs, which become ␀,
/// followed by a note saying how many were replaced.
pub fn ros_text(s: &str) -> Cow<'_, str> {
    if !s.contains('\0') {
        return Cow::Borrowed(s);
    }
    let n = s.matches('\0').count();
    let plural = if n == 1 { "" } else { "s" };
    Cow::Owned(format!("{} [{n} NUL character{plural} shown as {NUL_SIGN}]", s.replace('\0', &NUL_SIGN.to_string())))
}

/// A short identifier-like field (a tool name, a role): NULs become ␀, without a note.
pub fn ros_name(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', &NUL_SIGN.to_string()))
    } else {
        Cow::Borrowed(s)
    }
}

/// At most `max_bytes` bytes of `s` (cut at a character boundary), with "…" when cut: a bounded
/// summary of a long text.
pub fn summary(s: &str, max_bytes: usize) -> Cow<'_, str> {
    if s.len() <= max_bytes {
        return Cow::Borrowed(s);
    }
    let mut end = max_bytes.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// Why a user's text (a command, a chat prompt, a transcript) is refused before it reaches the
/// LLM: it is empty or only whitespace, or it was not valid UTF-8 (each invalid sequence arrives as
/// U+FFFD). `what` names it in the message ("command").
pub fn user_text_refusal(what: &str, text: &str) -> Option<String> {
    if text.trim().is_empty() {
        return Some(if text.is_empty() {
            format!("the {what} is empty: nothing to do")
        } else {
            format!("the {what} is only whitespace ({} characters): nothing to do", text.chars().count())
        });
    }
    let bad = text.matches(REPLACEMENT).count();
    if bad > 0 {
        let plural = if bad == 1 { "" } else { "s" };
        return Some(format!(
            "the {what} is not valid UTF-8 text ({bad} invalid byte sequence{plural}, shown as {REPLACEMENT}): {}",
            summary(&ros_text(text), 200)
        ));
    }
    None
}

/// Why seconds from outside are refused: not finite, or outside `[min, max]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{name}={value} is out of range: give a finite number of seconds from {min} to {max}")]
pub struct SecondsError {
    pub name: String,
    pub value: f64,
    pub min: f64,
    pub max: f64,
}

/// Range-checked seconds: a `Duration` when `value` is finite and within `[min, max]`
/// (`max` itself must be a valid duration, well below 1.8e19 s).
pub fn seconds(name: &str, value: f64, min: f64, max: f64) -> Result<Duration, SecondsError> {
    if value.is_finite() && value >= min && value <= max {
        if let Ok(d) = Duration::try_from_secs_f64(value) {
            return Ok(d);
        }
    }
    Err(SecondsError { name: name.into(), value, min, max })
}

/// Seconds clamped into `[min, max]` (NaN becomes `min`): for parameters, where a sane value beats
/// a refusal. `0 <= min <= max` and `max` a valid duration.
pub fn clamped_seconds(value: f64, min: f64, max: f64) -> Duration {
    let v = if value.is_nan() { min } else { value.clamp(min, max) };
    Duration::try_from_secs_f64(v).unwrap_or_default()
}

/// The largest goal timeout the process manager's `max_timeout_sec` may allow (~31 years).
pub const MAX_GOAL_TIMEOUT_SEC: f64 = 1e9;

/// A LaunchProcess goal's timeout: `requested` seconds (0 = `default_sec`), range-checked against
/// `(0, max_sec]`; at least 100 ms. `default_sec` and `max_sec` are parameters: an unusable one
/// falls back to 300 s and 1 day. The error says why the goal is rejected.
pub fn goal_timeout(requested: f64, default_sec: f64, max_sec: f64) -> Result<Duration, String> {
    let max = if max_sec.is_finite() && max_sec > 0.0 { max_sec.min(MAX_GOAL_TIMEOUT_SEC) } else { 86_400.0 };
    let default = if default_sec.is_finite() && default_sec > 0.0 { default_sec.min(max) } else { 300f64.min(max) };
    let wanted = if requested == 0.0 { default } else { requested };
    seconds("timeout_sec", wanted, 0.0, max).map(|d| d.max(Duration::from_millis(100))).map_err(|e| e.to_string())
}

/// A count or size from outside clamped into `[min, max]` as a `usize`.
pub fn clamped_size(value: u64, min: usize, max: usize) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX).clamp(min, max)
}

/// A `u64` as `u32`, saturating (for counts put into a message's `uint32` field).
pub fn saturating_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_becomes_a_visible_sign_and_the_text_says_so() {
        assert!(matches!(ros_text("plain"), Cow::Borrowed("plain")));
        assert_eq!(ros_text("a\0b"), "a␀b [1 NUL character shown as ␀]");
        assert_eq!(ros_text("\0\0"), "␀␀ [2 NUL characters shown as ␀]");
        assert_eq!(ros_name("get\0x"), "get␀x");
        assert!(!ros_text("x\0y").contains('\0'));
    }

    #[test]
    fn summaries_are_bounded_and_cut_at_a_character() {
        assert_eq!(summary("short", 10), "short");
        let long = "é".repeat(1000); // 2000 bytes
        let s = summary(&long, 1000);
        assert!(s.len() <= 1000, "{}", s.len());
        assert!(s.ends_with('…'));
        assert_eq!(summary("abcdef", 4), "a…");
        assert_eq!(summary("abcdef", 0), "…");
    }

    #[test]
    fn empty_whitespace_and_invalid_utf8_are_refused() {
        assert!(user_text_refusal("command", "").unwrap().contains("empty"));
        assert!(user_text_refusal("command", " \t\n").unwrap().contains("only whitespace"));
        let bad = String::from_utf8_lossy(b"go \xff\xfe left").into_owned();
        let why = user_text_refusal("command", &bad).unwrap();
        assert!(why.contains("not valid UTF-8") && why.contains("2 invalid byte sequences"), "{why}");
        assert_eq!(user_text_refusal("command", "wave at me"), None);
        assert_eq!(user_text_refusal("command", "a\0b"), None, "NULs are escaped, not refused");
    }

    #[test]
    fn outside_seconds_are_range_checked() {
        for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e300, 1.8e19, -1.0, 86_401.0] {
            let e = seconds("timeout_sec", bad, 0.0, 86_400.0).unwrap_err();
            assert!(e.to_string().contains("timeout_sec="), "{e}");
        }
        assert_eq!(seconds("t", 2.5, 0.0, 10.0).unwrap(), Duration::from_millis(2500));
        assert_eq!(clamped_seconds(f64::NAN, 0.1, 10.0), Duration::from_millis(100));
        assert_eq!(clamped_seconds(f64::INFINITY, 0.1, 10.0), Duration::from_secs(10));
        assert_eq!(clamped_seconds(-5.0, 0.0, 10.0), Duration::ZERO);
        assert_eq!(clamped_size(u64::MAX, 1, 1000), 1000);
        assert_eq!(clamped_size(0, 1, 1000), 1);
        assert_eq!(saturating_u32(u64::MAX), u32::MAX);
    }
}
