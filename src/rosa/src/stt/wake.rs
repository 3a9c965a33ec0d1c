//! The wake word: which transcripts are forwarded to the kernel.
//!
//! With no wake word everything is forwarded. Otherwise an utterance is forwarded when it
//! contains the wake word — the text after it is what is forwarded, so "hello, turn left" in one
//! breath forwards "turn left" — or when it starts within `window_sec` of the end of the last
//! forwarded utterance or of the wake word said alone ("hello" … "turn left"). Each forwarded
//! utterance renews the window, so a conversation does not need the wake word every time.
//!
//! Matching is on words: case, punctuation and spacing do not matter ("Hello!", "hello,"), and a
//! wake word of several words ("hey reachy") must appear as consecutive words.

/// What to do with a transcript.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward `text`; `wake_word` is the Transcript's flag (the wake word or its window).
    Forward { text: String, wake_word: bool },
    /// The wake word alone: the window is open, nothing to forward.
    Woken,
    /// Not for the robot (no wake word, outside the window), or nothing but noise.
    Ignore,
}

pub struct WakeGate {
    words: Vec<String>,
    window_sec: f64,
    /// End (stream seconds) of the last utterance that opened or renewed the window.
    open_until: Option<f64>,
}

/// Words of `text` in lower case, with the byte offset where each one ends.
fn words(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() || (c == '\'' && !cur.is_empty()) {
            cur.extend(c.to_lowercase());
        } else if !cur.is_empty() {
            out.push((std::mem::take(&mut cur).trim_end_matches('\'').to_string(), i));
        }
    }
    if !cur.is_empty() {
        out.push((cur.trim_end_matches('\'').to_string(), text.len()));
    }
    out
}

/// The text after byte offset `at`, without leading punctuation or spaces.
fn after(text: &str, at: usize) -> &str {
    text[at..].trim_start_matches(|c: char| !c.is_alphanumeric()).trim_end()
}

impl WakeGate {
    pub fn new(wake_word: &str, window_sec: f64) -> Self {
        Self { words: words(wake_word).into_iter().map(|(w, _)| w).collect(), window_sec: window_sec.max(0.0), open_until: None }
    }

    pub fn enabled(&self) -> bool {
        !self.words.is_empty()
    }

    /// Whether an utterance starting at `now` (stream seconds) would be forwarded without the
    /// wake word: the `listening` state.
    pub fn is_open(&self, now: f64) -> bool {
        !self.enabled() || self.open_until.is_some_and(|t| now - t <= self.window_sec)
    }

    /// When the window closes (stream seconds), if it is open.
    pub fn closes_at(&self) -> Option<f64> {
        self.open_until.map(|t| t + self.window_sec)
    }

    /// Close the window.
    pub fn close(&mut self) {
        self.open_until = None;
    }

    /// Decide about the transcript `text` of an utterance spanning `start..end` (stream seconds).
    pub fn decide(&mut self, text: &str, start: f64, end: f64) -> Decision {
        let ws = words(text);
        if ws.is_empty() {
            return Decision::Ignore;
        }
        if !self.enabled() {
            return Decision::Forward { text: text.trim().to_string(), wake_word: false };
        }
        let n = self.words.len();
        let found = (0..ws.len().saturating_sub(n - 1)).find(|&i| ws[i..i + n].iter().map(|(w, _)| w).eq(self.words.iter()));
        if let Some(i) = found {
            let rest = after(text, ws[i + n - 1].1);
            self.open_until = Some(end);
            return if words(rest).is_empty() { Decision::Woken } else { Decision::Forward { text: rest.to_string(), wake_word: true } };
        }
        if self.is_open(start) {
            self.open_until = Some(end);
            return Decision::Forward { text: text.trim().to_string(), wake_word: true };
        }
        Decision::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(t: &str) -> Decision {
        Decision::Forward { text: t.into(), wake_word: true }
    }

    #[test]
    fn wake_word_and_command_in_one_breath_forwards_the_command() {
        let mut g = WakeGate::new("hello", 10.0);
        assert_eq!(g.decide("Hello, turn left.", 0.0, 2.0), fwd("turn left."));
        let mut g = WakeGate::new("hello", 10.0);
        assert_eq!(g.decide(" hello turn left", 0.0, 2.0), fwd("turn left"));
        let mut g = WakeGate::new("Hello", 10.0);
        assert_eq!(g.decide("HELLO! Look to the left.", 0.0, 2.0), fwd("Look to the left."));
    }

    #[test]
    fn the_wake_word_alone_opens_a_window_for_the_next_utterances() {
        let mut g = WakeGate::new("hello", 5.0);
        assert!(!g.is_open(0.0));
        assert_eq!(g.decide("Hello.", 0.0, 1.0), Decision::Woken);
        assert!(g.is_open(3.0));
        assert_eq!(g.decide("Turn left.", 4.0, 6.0), fwd("Turn left."));
        // Each forwarded utterance renews the window (from its end).
        assert_eq!(g.decide("Now nod.", 10.5, 11.0), fwd("Now nod."));
        assert!(g.is_open(16.0) && !g.is_open(16.5));
        assert_eq!(g.decide("What a day.", 17.0, 18.0), Decision::Ignore);
    }

    #[test]
    fn without_the_wake_word_nothing_is_forwarded() {
        let mut g = WakeGate::new("hello", 10.0);
        assert_eq!(g.decide("Turn left.", 0.0, 1.0), Decision::Ignore);
        assert_eq!(g.decide("Othello is a play.", 2.0, 3.0), Decision::Ignore, "whole words only");
        assert!(!g.is_open(3.0));
    }

    #[test]
    fn text_before_the_wake_word_is_dropped() {
        let mut g = WakeGate::new("hello", 10.0);
        assert_eq!(g.decide("Oh, hello robot, wave.", 0.0, 1.0), fwd("robot, wave."));
    }

    #[test]
    fn multi_word_wake_words_match_consecutive_words() {
        let mut g = WakeGate::new("hey reachy", 10.0);
        assert_eq!(g.decide("Hey, Reachy! Nod twice.", 0.0, 1.0), fwd("Nod twice."));
        let mut g = WakeGate::new("hey reachy", 10.0);
        assert_eq!(g.decide("Hey there Reachy nod", 0.0, 1.0), Decision::Ignore);
    }

    #[test]
    fn an_empty_wake_word_forwards_everything() {
        let mut g = WakeGate::new("", 10.0);
        assert!(!g.enabled() && g.is_open(0.0));
        assert_eq!(g.decide(" Turn left. ", 0.0, 1.0), Decision::Forward { text: "Turn left.".into(), wake_word: false });
        assert_eq!(g.decide("...", 2.0, 3.0), Decision::Ignore);
    }

    #[test]
    fn the_window_closes_on_request() {
        let mut g = WakeGate::new("hello", 10.0);
        g.decide("hello", 0.0, 1.0);
        assert_eq!(g.closes_at(), Some(11.0));
        g.close();
        assert!(!g.is_open(1.5) && g.closes_at().is_none());
    }

    #[test]
    fn apostrophes_stay_inside_words() {
        assert_eq!(words("Don't stop, Reachy's head")[0].0, "don't");
        assert_eq!(words("'quoted' it")[0].0, "quoted");
    }
}
