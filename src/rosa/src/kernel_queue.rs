//! The kernel's durable event queue: every event the kernel accepts is journaled before it is
//! queued, and so is its progress (started, each tool call, done with the turn it added to the
//! conversation). A kernel that dies — even by SIGKILL — and is started again replays the journal:
//! it resumes the unanswered events in their order, knows which one it was handling and which tools
//! that one had already called, continues the `seq` of `/rosa/events`, and has its bounded
//! conversation memory back.
//!
//! The bound applies to what users send (commands, transcripts, chat calls): beyond `capacity`
//! waiting events a new one is refused, out loud, by the caller. Worker callbacks are never
//! refused (there are at most a few in flight, one per worker) and are deduplicated: the kernel
//! subscribes to `/rosa/worker_callback` with transient-local durability, so a restarted kernel
//! gets the callbacks published while it was down from the publisher's history, and drops those
//! it had already accepted (their keys are journaled and remembered, [`KEYS_KEPT`] of them: more
//! than the publisher keeps).
//!
//! No r2r here; the node (`nodes::kernel`) feeds events in and the kernel loop takes them out.

use crate::agent::{AgentEvent, Memory, MemorySnapshot};
use crate::journal::{Journal, JournalError};
use crate::kernel::{Event, Source};
use crate::llm::Message;
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Callback keys remembered for deduplication. A duplicate can only come from the publisher's
/// history (the process manager keeps 100 callbacks) or its restart (a final callback for each
/// worker it had running): ten times the history is ample. The set fills within the first ~1,000
/// workers and then stays at this size (~0.2 MB, and in each journal snapshot; 4096 keys were
/// ~0.8 MB of kernel RSS growth over the first 4,000 commands of a soak, and most of its journal).
pub const KEYS_KEPT: usize = 1024;
/// The journal is compacted once this many records were appended since the last compaction.
pub const COMPACT_AFTER: u64 = 2000;
/// Tool results are journaled up to this many characters (enough to tell the model what happened).
const TOOL_RESULT_CHARS: usize = 300;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum Record {
    /// The state at a compaction; the records after it apply on top.
    Snapshot { next_id: u64, seq: u64, memory: MemorySnapshot, keys: Vec<String> },
    /// An event was accepted into the queue.
    Accepted { id: u64, source: Source, text: String, received_ms: u64, chat: bool, key: Option<String> },
    /// The kernel began handling event `id` as `/rosa/events` number `seq`.
    Started { id: u64, seq: u64 },
    /// While handling `id` the kernel called `tool`; `result` is `None` while the call runs.
    Tool { id: u64, tool: String, result: Option<String> },
    /// Event `id` is answered; `turn` is what it added to the conversation.
    Done { id: u64, turn: Vec<Message> },
    /// The kernel stopped cleanly (what is still queued is resumed at the next start).
    Stopped,
}

/// An event taken from the queue, with what is known about an earlier attempt at it.
#[derive(Debug)]
pub struct Queued {
    pub id: u64,
    pub event: Event,
    /// The event was being handled when the kernel died: the tools it had called then.
    pub interrupted: Option<Vec<ToolRecord>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolRecord {
    pub tool: String,
    /// `None`: the call was running when the kernel died, its outcome is unknown.
    pub result: Option<String>,
}

/// Why an event was not queued.
#[derive(Debug)]
pub enum Refusal {
    /// Too many user events waiting; the event comes back with the reason.
    Full(Event, String),
    /// The kernel is stopping.
    Closed(Event),
    /// A worker callback that was accepted before (replayed after a restart).
    Duplicate(String),
}

/// What the journal held when the kernel started.
#[derive(Debug, Default)]
pub struct Recovery {
    /// A journal from an earlier run was found.
    pub restarted: bool,
    /// The earlier run ended with a clean stop (not a crash).
    pub clean: bool,
    /// The last `/rosa/events` seq used.
    pub seq: u64,
    /// The conversation memory to restore.
    pub memory: MemorySnapshot,
    /// Events resumed, in order (the interrupted one first), as summaries for the user.
    pub resumed: Vec<String>,
    /// One of them was being handled when the kernel died.
    pub interrupted: bool,
    /// Chat calls among the resumed events (their callers got no reply; the answer goes to /rosa/updates).
    pub orphaned_chats: usize,
    /// Journal lines that could not be read.
    pub skipped: usize,
}

impl Recovery {
    /// What the kernel says on `/rosa/updates` when it starts again (None on a first start).
    pub fn announcement(&self) -> Option<String> {
        if !self.restarted {
            return None;
        }
        let how = if self.clean { "started again" } else { "restarted after a crash" };
        let mut s = format!("The kernel {how}; its conversation memory is restored ({} turn(s)).", self.memory.turns.len());
        if self.resumed.is_empty() {
            s.push_str(" No event was waiting.");
        } else {
            s.push_str(&format!(" Resuming {} unanswered event(s) in order: ", self.resumed.len()));
            s.push_str(&self.resumed.join("; "));
            s.push('.');
            if self.interrupted {
                s.push_str(" The first was being handled when the kernel stopped: it is handled again, told what it had already done.");
            }
            if self.orphaned_chats > 0 {
                s.push_str(&format!(
                    " {} of them came from /rosa/chat calls whose callers got no reply; their answers are published here.",
                    self.orphaned_chats
                ));
            }
        }
        if self.skipped > 0 {
            s.push_str(&format!(" ({} unreadable journal record(s) were skipped.)", self.skipped));
        }
        Some(s)
    }
}

struct RecentKeys {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentKeys {
    fn new() -> Self {
        Self { set: HashSet::new(), order: VecDeque::new() }
    }
    fn contains(&self, k: &str) -> bool {
        self.set.contains(k)
    }
    fn insert(&mut self, k: String) {
        if self.set.insert(k.clone()) {
            self.order.push_back(k);
            while self.order.len() > KEYS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

struct Pending {
    id: u64,
    event: Event,
    interrupted: Option<Vec<ToolRecord>>,
    /// Kept for compaction: the Accepted record as journaled.
    record: Record,
}

struct State {
    journal: Journal,
    pending: VecDeque<Pending>,
    /// The event being handled, with the tools it called so far.
    in_hand: Option<(Pending, Vec<ToolRecord>)>,
    /// User events (not callbacks) among `pending`.
    user_pending: usize,
    capacity: usize,
    next_id: u64,
    seq: u64,
    keys: RecentKeys,
    closed: bool,
    write_errors: u64,
}

/// The queue (shared by the producers and the kernel loop).
pub struct KernelQueue {
    state: Mutex<State>,
    notify: Notify,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn summary(source: Source, text: &str) -> String {
    let s = crate::llm::truncate(&text.replace('\n', " "), 100);
    if source == Source::Chat {
        format!("{s} (chat)")
    } else {
        s
    }
}

/// The key under which a worker callback is deduplicated: a worker has one final callback;
/// other callbacks are told apart by their stamp and text.
pub fn callback_key(worker_id: &str, is_final: bool, stamp_ns: i64, message: &str) -> String {
    if is_final {
        format!("{worker_id}/final")
    } else {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        message.hash(&mut h);
        format!("{worker_id}/{stamp_ns}/{:016x}", h.finish())
    }
}

impl KernelQueue {
    /// Open the journal at `path` and rebuild the queue from it. `memory_budget` is the kernel's
    /// memory budget (the conversation is replayed through a memory of that size).
    pub fn open(path: &Path, capacity: usize, sync: bool, memory_budget: usize) -> Result<(Self, Recovery), JournalError> {
        let (journal, records, replay) = Journal::open::<Record>(path, sync)?;
        let mut rec = Recovery { restarted: !records.is_empty(), skipped: replay.skipped, ..Default::default() };
        let mut memory = Memory::new("", memory_budget);
        let mut keys = RecentKeys::new();
        let mut next_id = 1;
        let mut pending: Vec<Pending> = Vec::new();
        let mut started: Option<u64> = None;
        for r in records {
            rec.clean = matches!(r, Record::Stopped);
            match r {
                Record::Snapshot { next_id: n, seq, memory: m, keys: k } => {
                    next_id = n;
                    rec.seq = seq;
                    memory.restore(m);
                    keys = RecentKeys::new();
                    for key in k {
                        keys.insert(key);
                    }
                    pending.clear();
                    started = None;
                }
                Record::Accepted { id, source, ref text, received_ms, ref key, .. } => {
                    next_id = next_id.max(id + 1);
                    if let Some(k) = key {
                        keys.insert(k.clone());
                    }
                    let mut event = Event::new(source, text.clone());
                    event.received = UNIX_EPOCH + Duration::from_millis(received_ms);
                    pending.push(Pending { id, event, interrupted: None, record: r.clone() });
                }
                Record::Started { id, seq } => {
                    rec.seq = rec.seq.max(seq);
                    started = Some(id);
                    if let Some(p) = pending.iter_mut().find(|p| p.id == id) {
                        // Started again after an earlier crash: keep what the first attempt did.
                        p.interrupted.get_or_insert_with(Vec::new);
                    }
                }
                Record::Tool { id, tool, result } => {
                    if let Some(tools) = pending.iter_mut().find(|p| p.id == id).and_then(|p| p.interrupted.as_mut()) {
                        match tools.iter_mut().rev().find(|t| t.tool == tool && t.result.is_none()) {
                            Some(t) if result.is_some() => t.result = result,
                            _ => tools.push(ToolRecord { tool, result }),
                        }
                    }
                }
                Record::Done { id, turn } => {
                    pending.retain(|p| p.id != id);
                    if started == Some(id) {
                        started = None;
                    }
                    memory.push_turn(turn);
                }
                Record::Stopped => {}
            }
        }
        // Only the event that was being handled keeps its "interrupted" mark; handle it first.
        for p in pending.iter_mut() {
            if Some(p.id) != started {
                p.interrupted = None;
            }
        }
        pending.sort_by_key(|p| (p.interrupted.is_none(), p.id));
        rec.interrupted = pending.first().is_some_and(|p| p.interrupted.is_some());
        rec.resumed = pending.iter().map(|p| summary(p.event.source, &p.event.text)).collect();
        rec.orphaned_chats = pending.iter().filter(|p| matches!(p.record, Record::Accepted { chat: true, .. })).count();
        rec.memory = memory.snapshot();
        let user_pending = pending.iter().filter(|p| p.event.source != Source::WorkerCallback).count();
        let state = State {
            journal,
            pending: pending.into(),
            in_hand: None,
            user_pending,
            capacity: capacity.max(1),
            next_id,
            seq: rec.seq,
            keys,
            closed: false,
            write_errors: 0,
        };
        let q = Self { state: Mutex::new(state), notify: Notify::new() };
        // Start the new run from a compact journal: the replayed state, then what comes.
        q.compact(&rec.memory);
        Ok((q, rec))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(st: &mut State, records: &[Record], durable: bool) {
        if let Err(e) = st.journal.append(records, durable) {
            st.write_errors += 1;
            tracing::error!(error = %e, failures = st.write_errors, "cannot write the kernel's journal: the queue is kept in memory only");
        }
    }

    /// Offer events (a burst is journaled with one write). For each: accepted, or refused with why.
    /// `key` is a worker callback's deduplication key ([`callback_key`]).
    pub fn push_batch(&self, events: Vec<(Event, Option<String>)>) -> Vec<Result<(), Refusal>> {
        let mut out = Vec::with_capacity(events.len());
        let mut records = Vec::new();
        {
            let mut st = self.lock();
            for (event, key) in events {
                if st.closed {
                    out.push(Err(Refusal::Closed(event)));
                    continue;
                }
                if let Some(k) = &key {
                    if st.keys.contains(k) {
                        out.push(Err(Refusal::Duplicate(k.clone())));
                        continue;
                    }
                }
                let user = event.source != Source::WorkerCallback;
                if user && st.user_pending >= st.capacity {
                    let why = format!("the kernel's event queue is full ({} events waiting)", st.capacity);
                    out.push(Err(Refusal::Full(event, why)));
                    continue;
                }
                let id = st.next_id;
                st.next_id += 1;
                if let Some(k) = &key {
                    st.keys.insert(k.clone());
                }
                let record = Record::Accepted {
                    id,
                    source: event.source,
                    text: event.text.clone(),
                    received_ms: unix_ms(event.received),
                    chat: event.reply.is_some(),
                    key,
                };
                records.push(record.clone());
                if user {
                    st.user_pending += 1;
                }
                st.pending.push_back(Pending { id, event, interrupted: None, record });
                out.push(Ok(()));
            }
            // Journaled (and synced) before anyone is told the event is queued.
            Self::write(&mut st, &records, true);
        }
        if !records.is_empty() {
            self.notify.notify_one();
        }
        out
    }

    /// Offer one event.
    pub fn push(&self, event: Event, key: Option<String>) -> Result<(), Refusal> {
        self.push_batch(vec![(event, key)]).pop().unwrap_or_else(|| unreachable!("one result per event"))
    }

    /// Events waiting (not counting the one being handled).
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next event, in order; `None` once closed. It stays journaled as unanswered until
    /// [`done`](Self::done).
    pub async fn next(&self) -> Option<Queued> {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                if let Some(mut p) = st.pending.pop_front() {
                    if p.event.source != Source::WorkerCallback {
                        st.user_pending -= 1;
                    }
                    let event = std::mem::replace(&mut p.event, Event::new(Source::Command, String::new()));
                    let interrupted = p.interrupted.take();
                    st.in_hand = Some((p, interrupted.clone().unwrap_or_default()));
                    return Some(Queued { id: st.in_hand.as_ref().map_or(0, |(p, _)| p.id), event, interrupted });
                }
            }
            notified.await;
        }
    }

    /// Event `id` is being handled as `/rosa/events` number `seq`.
    pub fn started(&self, id: u64, seq: u64) {
        let mut st = self.lock();
        st.seq = st.seq.max(seq);
        Self::write(&mut st, &[Record::Started { id, seq }], false);
    }

    /// Progress of the event being handled (tool calls).
    pub fn progress(&self, id: u64, e: &AgentEvent) {
        let r = match e {
            AgentEvent::ToolStarted { tool, .. } => Record::Tool { id, tool: tool.clone(), result: None },
            AgentEvent::ToolCalled { tool, output, .. } => Record::Tool {
                id,
                tool: tool.clone(),
                result: Some(crate::llm::truncate(&output.content, TOOL_RESULT_CHARS)),
            },
            AgentEvent::Step { .. } => return,
        };
        let mut st = self.lock();
        if let (Some((p, tools)), Record::Tool { tool, result, .. }) = (st.in_hand.as_mut(), &r) {
            if p.id == id {
                match tools.iter_mut().rev().find(|t| &t.tool == tool && t.result.is_none()) {
                    Some(t) if result.is_some() => t.result = result.clone(),
                    _ => tools.push(ToolRecord { tool: tool.clone(), result: result.clone() }),
                }
            }
        }
        Self::write(&mut st, &[r], false);
    }

    /// Event `id` is answered; `memory` is the kernel's memory after it (its last turn is journaled).
    pub fn done(&self, id: u64, memory: &Memory) {
        let compact = {
            let mut st = self.lock();
            if st.in_hand.as_ref().is_some_and(|(p, _)| p.id == id) {
                st.in_hand = None;
            }
            Self::write(&mut st, &[Record::Done { id, turn: memory.last_turn() }], false);
            st.journal.appended() >= COMPACT_AFTER
        };
        if compact {
            self.compact(&memory.snapshot());
        }
    }

    /// Rewrite the journal as one snapshot plus the events still waiting.
    fn compact(&self, memory: &MemorySnapshot) {
        let mut st = self.lock();
        let mut records = vec![Record::Snapshot {
            next_id: st.next_id,
            seq: st.seq,
            memory: memory.clone(),
            keys: st.keys.order.iter().cloned().collect(),
        }];
        if let Some((p, tools)) = &st.in_hand {
            // The event in hand stays unanswered, started, with its tool calls.
            records.push(p.record.clone());
            records.push(Record::Started { id: p.id, seq: st.seq });
            for t in tools {
                records.push(Record::Tool { id: p.id, tool: t.tool.clone(), result: t.result.clone() });
            }
        }
        for p in &st.pending {
            records.push(p.record.clone());
            if let Some(tools) = &p.interrupted {
                // Interrupted by an earlier crash and not yet handled again.
                records.push(Record::Started { id: p.id, seq: st.seq });
                for t in tools {
                    records.push(Record::Tool { id: p.id, tool: t.tool.clone(), result: t.result.clone() });
                }
            }
        }
        if let Err(e) = st.journal.rewrite(&records) {
            st.write_errors += 1;
            tracing::error!(error = %e, "cannot compact the kernel's journal");
        }
    }

    /// Stop: no more events are accepted or taken; a clean stop is journaled.
    pub fn close(&self) {
        let mut st = self.lock();
        if !st.closed {
            st.closed = true;
            Self::write(&mut st, &[Record::Stopped], true);
        }
        drop(st);
        self.notify.notify_waiters();
    }

    /// The journal's path (for logs).
    pub fn journal_path(&self) -> std::path::PathBuf {
        self.lock().journal.path().to_path_buf()
    }
}

/// The text the model gets for an event that was interrupted by a restart: what it had done.
pub fn resumed_text(text: &str, tools: &[ToolRecord]) -> String {
    let mut s = text.to_string();
    s.push_str("\n(The kernel restarted while handling this event. ");
    if tools.is_empty() {
        s.push_str("No tool had been called for it yet.)");
        return s;
    }
    s.push_str("Before the restart it had already called: ");
    let calls: Vec<String> = tools
        .iter()
        .map(|t| match &t.result {
            Some(r) => format!("{} -> {}", t.tool, r.replace('\n', " ")),
            None => format!("{} (running when the kernel stopped: its outcome is unknown; check with list_processes)", t.tool),
        })
        .collect();
    s.push_str(&calls.join("; "));
    s.push_str(". Do not repeat what was done.)");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ToolOutput;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rosa-kq-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("kernel.journal")
    }

    fn texts(q: &KernelQueue) -> Vec<String> {
        q.lock().pending.iter().map(|p| p.event.text.clone()).collect()
    }

    fn memory_after(turn: &[&str]) -> Memory {
        let mut m = Memory::new("", 10_000);
        m.push_turn(turn.iter().map(|t| Message::User(t.to_string())).collect());
        m
    }

    #[tokio::test]
    async fn a_crash_resumes_unanswered_events_in_order_with_memory_and_seq() {
        let p = tmp("crash");
        {
            let (q, rec) = KernelQueue::open(&p, 8, true, 10_000).unwrap();
            assert!(!rec.restarted && rec.announcement().is_none());
            for i in 0..4 {
                q.push(Event::command(&format!("cmd {i}")), None).unwrap();
            }
            // cmd 0 answered, cmd 1 in hand with a tool call done and one running: then SIGKILL.
            let first = q.next().await.unwrap();
            q.started(first.id, 1);
            q.done(first.id, &memory_after(&["[User typed] cmd 0", "answer 0"]));
            let second = q.next().await.unwrap();
            assert_eq!(second.event.text, "[User typed] cmd 1");
            q.started(second.id, 2);
            q.progress(second.id, &AgentEvent::ToolStarted { step: 1, tool: "launch_process".into() });
            q.progress(second.id, &AgentEvent::ToolCalled { step: 1, tool: "launch_process".into(), output: ToolOutput::ok("launched worker_id=w1") });
            q.progress(second.id, &AgentEvent::ToolStarted { step: 2, tool: "terminate_process".into() });
            // dropped without close(): a crash
        }
        let (q, rec) = KernelQueue::open(&p, 8, true, 10_000).unwrap();
        assert!(rec.restarted && !rec.clean && rec.interrupted);
        assert_eq!(rec.seq, 2);
        assert_eq!(rec.memory.turns.len(), 1);
        assert_eq!(rec.resumed, vec!["[User typed] cmd 1", "[User typed] cmd 2", "[User typed] cmd 3"]);
        let say = rec.announcement().unwrap();
        assert!(say.contains("restarted after a crash") && say.contains("Resuming 3 unanswered event(s)"), "{say}");
        let again = q.next().await.unwrap();
        let tools = again.interrupted.clone().unwrap();
        assert_eq!(tools, vec![
            ToolRecord { tool: "launch_process".into(), result: Some("launched worker_id=w1".into()) },
            ToolRecord { tool: "terminate_process".into(), result: None },
        ]);
        let text = resumed_text(&again.event.text, &tools);
        assert!(text.starts_with("[User typed] cmd 1\n(The kernel restarted"), "{text}");
        assert!(text.contains("launch_process -> launched worker_id=w1") && text.contains("outcome is unknown"), "{text}");
        assert_eq!(texts(&q), vec!["[User typed] cmd 2", "[User typed] cmd 3"]);
        // A second crash before it is done keeps it interrupted, with the same history.
        drop(q);
        let (q, rec) = KernelQueue::open(&p, 8, true, 10_000).unwrap();
        assert!(rec.interrupted);
        assert_eq!(q.next().await.unwrap().interrupted.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_clean_stop_keeps_what_is_queued() {
        let p = tmp("clean");
        {
            let (q, _) = KernelQueue::open(&p, 8, false, 10_000).unwrap();
            q.push(Event::transcript("hello"), None).unwrap();
            q.close();
            assert!(q.next().await.is_none());
            assert!(matches!(q.push(Event::command("late"), None), Err(Refusal::Closed(_))));
        }
        let (q, rec) = KernelQueue::open(&p, 8, false, 10_000).unwrap();
        assert!(rec.restarted && rec.clean && !rec.interrupted);
        assert!(rec.announcement().unwrap().contains("started again"));
        assert_eq!(q.next().await.unwrap().event.text, "[User said] hello");
    }

    #[tokio::test]
    async fn the_bound_is_for_user_events_and_callbacks_are_deduplicated() {
        let p = tmp("bound");
        {
            let (q, _) = KernelQueue::open(&p, 2, false, 10_000).unwrap();
            q.push(Event::command("a"), None).unwrap();
            q.push(Event::command("b"), None).unwrap();
            match q.push(Event::command("c"), None) {
                Err(Refusal::Full(e, why)) => {
                    assert_eq!(e.text, "[User typed] c");
                    assert!(why.contains("full (2 events waiting)"), "{why}");
                }
                other => panic!("{other:?}"),
            }
            let key = callback_key("w1", true, 5, "done");
            q.push(Event::worker_callback("w1", "done", true), Some(key.clone())).unwrap();
            assert!(matches!(q.push(Event::worker_callback("w1", "done", true), Some(key)), Err(Refusal::Duplicate(_))));
            assert_eq!(q.len(), 3);
        }
        // After a restart the same callback (replayed from the publisher's history) is still known.
        let (q, _) = KernelQueue::open(&p, 2, false, 10_000).unwrap();
        assert!(matches!(q.push(Event::worker_callback("w1", "done", true), Some(callback_key("w1", true, 9, "x"))), Err(Refusal::Duplicate(_))));
        assert!(q.push(Event::worker_callback("w2", "done", true), Some(callback_key("w2", true, 9, "x"))).is_ok());
        assert_ne!(callback_key("w3", false, 1, "a"), callback_key("w3", false, 1, "b"));
    }

    #[test]
    fn recent_keys_keep_the_last_keys_kept() {
        let mut keys = RecentKeys::new();
        for i in 0..KEYS_KEPT + 10 {
            keys.insert(format!("w{i}/final"));
            keys.insert(format!("w{i}/final")); // a duplicate insert adds nothing
        }
        assert_eq!(keys.order.len(), KEYS_KEPT);
        assert_eq!(keys.set.len(), KEYS_KEPT);
        assert!(!keys.contains("w9/final"));
        assert!(keys.contains("w10/final"));
        assert!(keys.contains(&format!("w{}/final", KEYS_KEPT + 9)));
    }

    #[tokio::test]
    async fn compaction_keeps_the_state_and_bounds_the_file() {
        let p = tmp("compact");
        let mut memory = Memory::new("", 2_000);
        {
            let (q, _) = KernelQueue::open(&p, 8, false, 2_000).unwrap();
            for i in 0..1500u64 {
                q.push(Event::command(&format!("c{i}")), None).unwrap();
                let e = q.next().await.unwrap();
                q.started(e.id, i + 1);
                memory.push_turn(vec![Message::User(e.event.text.clone()), Message::Assistant { content: Some("ok".into()), tool_calls: vec![] }]);
                q.done(e.id, &memory);
            }
            q.push(Event::command("left over"), None).unwrap();
        }
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(lines < COMPACT_AFTER as usize + 10, "{lines} lines");
        let (q, rec) = KernelQueue::open(&p, 8, false, 2_000).unwrap();
        assert_eq!(rec.seq, 1500);
        assert_eq!(rec.memory, memory.snapshot(), "the replayed memory is the kernel's");
        assert_eq!(rec.memory.dropped_total, memory.dropped_turns());
        assert_eq!(texts(&q), vec!["[User typed] left over"]);
        let next = q.push(Event::command("new"), None);
        assert!(next.is_ok());
        assert_eq!(q.lock().pending.back().unwrap().id, 1502, "ids go on after a compaction");
    }
}
