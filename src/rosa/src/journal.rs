//! An append-only journal: what a node must not forget when it dies (the kernel's accepted events,
//! the process manager's table), one JSON record per line in a file under `$ROSA_DATA_DIR`.
//!
//! Why a log and not SQLite: each journal has one writer that appends records in order and one
//! reader, at start, that replays them in order; nothing is ever queried. An append is one
//! `write(2)` of whole lines, which a killed process cannot tear (the page cache keeps it), and with
//! `sync` an `fdatasync(2)` that makes it survive a power cut too. A line torn by a power cut is at
//! the end of the file: it does not parse, and is dropped (and cut off) at the next start. The file
//! is compacted by the owner ([`Journal::rewrite`]: a snapshot written aside, fsynced, renamed over
//! the old file), so it stays small. It is plain text: `tail -f` shows what a node journals. No C
//! library, no schema migrations.
//!
//! Only one process may own a journal: [`Journal::open`] takes an exclusive `flock(2)` on it (the
//! kernel releases it when the owner dies, even by SIGKILL), so a second kernel started on the same
//! data directory fails with a clear error instead of interleaving records.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("journal {} is in use by another process (its pid is in the .lock file next to it): one node per journal", path.display())]
    Locked { path: PathBuf },
    #[error("journal {}: cannot encode a record: {source}", path.display())]
    Encode { path: PathBuf, source: serde_json::Error },
}

/// What replaying a journal found besides its records.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Replay {
    /// Records read.
    pub records: usize,
    /// Lines that did not parse and were skipped (a torn last line is counted here too).
    pub skipped: usize,
    /// Bytes at the end of the file cut off because they were not a complete line.
    pub torn_bytes: u64,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    _lock: File,
    sync: bool,
    appended: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

impl Journal {
    /// Open (creating it and its directory) the journal at `path` and replay its records in order.
    /// Lines that do not parse as `R` are skipped and counted; an incomplete last line is cut off.
    pub fn open<R: DeserializeOwned>(path: &Path, sync: bool) -> Result<(Self, Vec<R>, Replay), JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(JournalError::Locked { path: path.to_path_buf() });
        }
        {
            let mut l = &lock;
            let _ = l.set_len(0);
            let _ = writeln!(l, "{}", std::process::id());
        }
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).append(true).open(path).map_err(io(path))?;
        let mut records = Vec::new();
        let mut replay = Replay::default();
        let mut good_len = 0u64;
        {
            let mut reader = BufReader::new(&file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).map_err(io(path))?;
                if n == 0 {
                    break;
                }
                if line.last() != Some(&b'\n') {
                    // An incomplete last line: the write of a record cut short (power loss).
                    replay.torn_bytes = n as u64;
                    replay.skipped += 1;
                    break;
                }
                good_len += n as u64;
                let text = &line[..line.len() - 1];
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<R>(text) {
                    Ok(r) => {
                        records.push(r);
                        replay.records += 1;
                    }
                    Err(e) => {
                        tracing::error!(journal = %path.display(), error = %e, "skipping a journal record that does not parse");
                        replay.skipped += 1;
                    }
                }
            }
        }
        if replay.torn_bytes > 0 {
            tracing::warn!(journal = %path.display(), bytes = replay.torn_bytes, "cutting off an incomplete last record");
            file.set_len(good_len).map_err(io(path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io(path))?;
        Ok((Self { path: path.to_path_buf(), file, _lock: lock, sync, appended: 0 }, records, replay))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records appended since the journal was opened or last rewritten.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    fn encode<R: Serialize>(&self, records: &[R]) -> Result<Vec<u8>, JournalError> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|source| JournalError::Encode { path: self.path.clone(), source })?;
            buf.push(b'\n');
        }
        Ok(buf)
    }

    /// Append `records` in one write before returning. Written records survive the death of this
    /// process; with `durable` (and the journal opened with `sync`) they are also synced to disk
    /// (`fdatasync`, ~4 ms here), so they survive a power cut.
    pub fn append<R: Serialize>(&mut self, records: &[R], durable: bool) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let buf = self.encode(records)?;
        self.file.write_all(&buf).map_err(io(&self.path))?;
        if durable && self.sync {
            self.file.sync_data().map_err(io(&self.path))?;
        }
        self.appended += records.len() as u64;
        Ok(())
    }

    /// Replace the whole journal with `records` (a compaction): written to a temporary file,
    /// synced, then renamed over the journal, so a crash at any point leaves either the old or the
    /// new journal, never a mix.
    pub fn rewrite<R: Serialize>(&mut self, records: &[R]) -> Result<(), JournalError> {
        let buf = self.encode(records)?;
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&buf).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = OpenOptions::new().read(true).append(true).open(&self.path).map_err(io(&self.path))?;
        self.appended = 0;
        Ok(())
    }
}

/// The directory for a node's durable state: `$ROSA_DATA_DIR` (else `~/.local/share/rosa`), then
/// `state/domain<ROS_DOMAIN_ID>`, so that graphs in different ROS domains on one machine (two
/// robots, parallel test runs) never share a journal. `configured` (a node parameter) wins when set.
pub fn state_dir(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    let base = crate::data_dir::default_root();
    let domain = std::env::var("ROS_DOMAIN_ID").ok().filter(|d| !d.trim().is_empty()).unwrap_or_else(|| "0".into());
    base.join("state").join(format!("domain{}", domain.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        n: u32,
        text: String,
    }

    fn rec(n: u32) -> Rec {
        Rec { n, text: format!("record {n} with \"quotes\" and\nnewlines") }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rosa-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("j.journal")
    }

    #[test]
    fn records_come_back_in_order_after_a_reopen() {
        let p = tmp("order");
        {
            let (mut j, old, _) = Journal::open::<Rec>(&p, true).unwrap();
            assert!(old.is_empty());
            j.append(&[rec(1), rec(2)], true).unwrap();
            j.append(&[rec(3)], true).unwrap();
            assert_eq!(j.appended(), 3);
        }
        let (mut j, back, replay) = Journal::open::<Rec>(&p, false).unwrap();
        assert_eq!(back, vec![rec(1), rec(2), rec(3)]);
        assert_eq!(replay, Replay { records: 3, skipped: 0, torn_bytes: 0 });
        j.append(&[rec(4)], true).unwrap();
        drop(j);
        assert_eq!(Journal::open::<Rec>(&p, false).unwrap().1.len(), 4);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_a_corrupt_one_skipped() {
        let p = tmp("torn");
        {
            let (mut j, _, _) = Journal::open::<Rec>(&p, false).unwrap();
            j.append(&[rec(1)], true).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"n\": 2, \"text\": \"not json\n").unwrap(); // a complete line that does not parse
        let torn = b"{\"n\":3,\"text\":\"cut sh";
        f.write_all(torn).unwrap(); // the write a power cut interrupted
        drop(f);
        {
            let (mut j, back, replay) = Journal::open::<Rec>(&p, false).unwrap();
            assert_eq!(back, vec![rec(1)]);
            assert_eq!(replay.skipped, 2);
            assert_eq!(replay.torn_bytes, torn.len() as u64);
            j.append(&[rec(4)], true).unwrap();
        }
        // The torn bytes are gone: the next record starts on a line of its own.
        let (_, back, replay) = Journal::open::<Rec>(&p, false).unwrap();
        assert_eq!(back, vec![rec(1), rec(4)]);
        assert_eq!(replay.torn_bytes, 0);
    }

    #[test]
    fn rewrite_replaces_everything_atomically() {
        let p = tmp("rewrite");
        let (mut j, _, _) = Journal::open::<Rec>(&p, false).unwrap();
        for i in 0..100 {
            j.append(&[rec(i)], true).unwrap();
        }
        j.rewrite(&[rec(7)]).unwrap();
        assert_eq!(j.appended(), 0);
        j.append(&[rec(8)], true).unwrap();
        drop(j);
        assert_eq!(Journal::open::<Rec>(&p, false).unwrap().1, vec![rec(7), rec(8)]);
        assert!(!p.with_extension("tmp").exists());
    }

    #[test]
    fn one_owner_at_a_time() {
        let p = tmp("lock");
        let (j, _, _) = Journal::open::<Rec>(&p, false).unwrap();
        let err = Journal::open::<Rec>(&p, false).err().unwrap();
        assert!(matches!(err, JournalError::Locked { .. }), "{err}");
        drop(j);
        assert!(Journal::open::<Rec>(&p, false).is_ok(), "the lock goes with its owner");
    }

    #[test]
    fn state_dirs_are_per_domain() {
        assert_eq!(state_dir("/x/y"), PathBuf::from("/x/y"));
        let d = state_dir("");
        assert!(d.to_string_lossy().contains("/state/domain"), "{}", d.display());
    }
}
