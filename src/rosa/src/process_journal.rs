//! The process manager's journal of its table (r2r-free), so that a process manager that dies —
//! even by SIGKILL — and is started again knows every worker that was running.
//!
//! Workers die with their process manager: each holds the write end of nothing but the read end
//! of its stdin, and exits as soon as that reaches end-of-file (see `nodes::worker`), which the
//! kernel makes happen the moment the process manager dies. A restarted process manager therefore
//! never re-adopts: for each worker the journal says was running it makes sure the process is gone
//! (same pid *and* start time, so a recycled pid is never signalled), then publishes that worker's
//! one final `WorkerCallback` — the worker's own report if it had arrived and was journaled but
//! maybe not published, otherwise `done=false` "the process manager restarted". Deterministic,
//! and each worker that was running ends with exactly one final callback (the kernel also drops
//! a repeated final by worker id).
//!
//! Record order for one worker: `Accepted` (journaled before the goal is accepted), `Spawned`
//! (pid and start time), `Final` (journaled before it is published), `Published`, `Ended`.

use crate::journal::{Journal, JournalError};
use crate::process::State;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

/// Compact after this many appended records.
pub const COMPACT_AFTER: u64 = 1000;

/// A worker's final report as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub done: bool,
    pub message: String,
    pub stamp_ns: i64,
    /// The callback was published.
    pub published: bool,
}

/// A worker the process manager is (or was) responsible for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRow {
    pub worker_id: String,
    pub system_prompt: String,
    pub robots: Vec<String>,
    pub started_ms: u64,
    /// 0 until the process is started.
    pub pid: i32,
    /// The process's start time (`/proc/<pid>/stat` field 22): with the pid, its identity.
    pub start_ticks: u64,
    pub report: Option<Report>,
}

/// An ended worker, kept for the table (`keep_ended`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndedRow {
    pub worker_id: String,
    pub state: State,
    pub system_prompt: String,
    pub robots: Vec<String>,
    pub started_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum Record {
    Snapshot { live: Vec<LiveRow>, ended: Vec<EndedRow> },
    Accepted { row: LiveRow },
    Spawned { worker_id: String, pid: i32, start_ticks: u64 },
    Final { worker_id: String, report: Report },
    Published { worker_id: String },
    Ended { worker_id: String, state: State },
}

/// What the journal held at start: the workers that were running, the ended ones kept.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    pub live: Vec<LiveRow>,
    pub ended: Vec<EndedRow>,
    pub skipped: usize,
}

pub struct ProcessJournal {
    journal: Journal,
    live: BTreeMap<String, LiveRow>,
    ended: VecDeque<EndedRow>,
    keep_ended: usize,
    write_errors: u64,
}

impl ProcessJournal {
    pub fn open(path: &Path, sync: bool, keep_ended: usize) -> Result<(Self, Recovered), JournalError> {
        let (journal, records, replay) = Journal::open::<Record>(path, sync)?;
        let mut j = Self { journal, live: BTreeMap::new(), ended: VecDeque::new(), keep_ended, write_errors: 0 };
        for r in records {
            j.apply(r);
        }
        let rec = Recovered { live: j.live.values().cloned().collect(), ended: j.ended.iter().cloned().collect(), skipped: replay.skipped };
        j.compact();
        Ok((j, rec))
    }

    fn apply(&mut self, r: Record) {
        match r {
            Record::Snapshot { live, ended } => {
                self.live = live.into_iter().map(|r| (r.worker_id.clone(), r)).collect();
                self.ended = ended.into();
            }
            Record::Accepted { row } => {
                self.live.insert(row.worker_id.clone(), row);
            }
            Record::Spawned { worker_id, pid, start_ticks } => {
                if let Some(r) = self.live.get_mut(&worker_id) {
                    r.pid = pid;
                    r.start_ticks = start_ticks;
                }
            }
            Record::Final { worker_id, report } => {
                if let Some(r) = self.live.get_mut(&worker_id) {
                    r.report = Some(report);
                }
            }
            Record::Published { worker_id } => {
                if let Some(rep) = self.live.get_mut(&worker_id).and_then(|r| r.report.as_mut()) {
                    rep.published = true;
                }
            }
            Record::Ended { worker_id, state } => {
                if let Some(r) = self.live.remove(&worker_id) {
                    self.ended.push_back(EndedRow {
                        worker_id,
                        state,
                        system_prompt: r.system_prompt,
                        robots: r.robots,
                        started_ms: r.started_ms,
                    });
                    while self.ended.len() > self.keep_ended {
                        self.ended.pop_front();
                    }
                }
            }
        }
    }

    fn record(&mut self, r: Record, durable: bool) {
        if let Err(e) = self.journal.append(std::slice::from_ref(&r), durable) {
            self.write_errors += 1;
            tracing::error!(error = %e, failures = self.write_errors, "cannot write the process table's journal");
        }
        let ended = matches!(r, Record::Ended { .. });
        self.apply(r);
        if ended && self.journal.appended() >= COMPACT_AFTER {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let snap = Record::Snapshot { live: self.live.values().cloned().collect(), ended: self.ended.iter().cloned().collect() };
        if let Err(e) = self.journal.rewrite(&[snap]) {
            self.write_errors += 1;
            tracing::error!(error = %e, "cannot compact the process table's journal");
        }
    }

    /// A goal is about to be accepted: journaled (synced) first, so an accepted goal is never unknown.
    pub fn accepted(&mut self, row: LiveRow) {
        self.record(Record::Accepted { row }, true);
    }

    /// Not synced: after a power cut no worker is running anyway; after a crash the write is there.
    pub fn spawned(&mut self, worker_id: &str, pid: i32, start_ticks: u64) {
        self.record(Record::Spawned { worker_id: worker_id.into(), pid, start_ticks }, false);
    }

    /// The worker's final callback is about to be published.
    pub fn final_report(&mut self, worker_id: &str, done: bool, message: &str, stamp_ns: i64) {
        let report = Report { done, message: message.into(), stamp_ns, published: false };
        self.record(Record::Final { worker_id: worker_id.into(), report }, true);
    }

    pub fn published(&mut self, worker_id: &str) {
        self.record(Record::Published { worker_id: worker_id.into() }, false);
    }

    pub fn ended(&mut self, worker_id: &str, state: State) {
        self.record(Record::Ended { worker_id: worker_id.into(), state }, false);
    }

    /// Workers the journal says are running.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rosa-pj-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("process_manager.journal")
    }

    fn row(id: &str) -> LiveRow {
        LiveRow { worker_id: id.into(), system_prompt: "task".into(), robots: vec!["bot".into()], started_ms: 1, pid: 0, start_ticks: 0, report: None }
    }

    #[test]
    fn running_workers_and_their_reports_survive_a_crash() {
        let p = tmp("crash");
        {
            let (mut j, rec) = ProcessJournal::open(&p, true, 3).unwrap();
            assert_eq!(rec, Recovered::default());
            j.accepted(row("w1"));
            j.spawned("w1", 100, 555);
            j.accepted(row("w2"));
            j.spawned("w2", 101, 556);
            j.final_report("w2", true, "waved", 7);
            j.accepted(row("w3"));
            j.spawned("w3", 102, 557);
            j.final_report("w3", false, "failed", 8);
            j.published("w3");
            j.accepted(row("w4"));
            j.final_report("w4", true, "ok", 9);
            j.published("w4");
            j.ended("w4", State::Succeeded);
        }
        let (j, rec) = ProcessJournal::open(&p, true, 3).unwrap();
        assert_eq!(rec.live.len(), 3);
        let w1 = &rec.live[0];
        assert_eq!((w1.worker_id.as_str(), w1.pid, w1.start_ticks, w1.report.is_none()), ("w1", 100, 555, true));
        let w2 = rec.live[1].report.clone().unwrap();
        assert!(w2.done && !w2.published && w2.message == "waved" && w2.stamp_ns == 7);
        assert!(rec.live[2].report.as_ref().unwrap().published);
        assert_eq!(rec.ended, vec![EndedRow { worker_id: "w4".into(), state: State::Succeeded, system_prompt: "task".into(), robots: vec!["bot".into()], started_ms: 1 }]);
        assert_eq!(j.live_count(), 3);
    }

    #[test]
    fn ended_rows_are_bounded_and_the_file_is_compacted() {
        let p = tmp("bound");
        {
            let (mut j, _) = ProcessJournal::open(&p, false, 5).unwrap();
            for i in 0..1200 {
                let id = format!("w{i}");
                j.accepted(row(&id));
                j.spawned(&id, 10, 20);
                j.final_report(&id, true, "ok", i);
                j.published(&id);
                j.ended(&id, State::Succeeded);
            }
            j.accepted(row("last"));
        }
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(lines <= COMPACT_AFTER as usize + 2, "{lines} lines");
        let (_, rec) = ProcessJournal::open(&p, false, 5).unwrap();
        assert_eq!(rec.live.iter().map(|r| r.worker_id.as_str()).collect::<Vec<_>>(), vec!["last"]);
        assert_eq!(rec.ended.len(), 5);
        assert_eq!(rec.ended.last().unwrap().worker_id, "w1199");
    }
}
