//! The files tools read and write (pictures, speech, images to describe): only under one directory,
//! the data dir, whatever path a model or a client gives.
//!
//! - A path is taken relative to the data dir, or as an absolute path inside it; `..` may not
//!   leave it, nor may a symlink: files are opened with `openat2(RESOLVE_BENEATH)` from the data
//!   dir (Linux ≥ 5.6), else the canonical path is checked and the opened descriptor verified.
//! - Only regular files, opened non-blocking (a FIFO cannot hang the open) and checked with
//!   `fstat` before a byte is read; at most a cap of bytes is read (`/dev/zero` is never read).
//! - Blocking I/O runs on tokio's blocking pool ([`DataDir::read`], [`DataDir::write`]), never
//!   on the async threads that serve MCP.
//! - Errors name the path as given and the data dir, never whether something exists outside it:
//!   `/etc/shadow`, a missing file and a symlink out all get the same answer.
//!
//! No r2r here.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Outside the data dir, missing, not a regular file, or reached through a symlink out: one
    /// answer for all (no oracle for what exists elsewhere).
    #[error("`{given}` is not a readable file in the data dir ({root}); give a file under it (e.g. a path from take_picture) or an http(s) URL")]
    NotAvailable { given: String, root: String },
    #[error("`{given}` is {size} bytes, more than the {cap} bytes allowed")]
    TooBig { given: String, size: u64, cap: u64 },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("the data dir {root} cannot be used: {message}")]
    Root { root: String, message: String },
}

/// The data dir when no parameter names one: `$ROSA_DATA_DIR`, else `~/.local/share/rosa` (where
/// `./rosa setup` puts the MCP token too).
pub fn default_root() -> PathBuf {
    if let Some(d) = std::env::var_os("ROSA_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/share/rosa")
}

/// The data dir: its canonical path (and the path it was configured as).
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    configured: PathBuf,
}

/// A path made of normal components only (`.` dropped, `..` popped; `None` if `..` leaves the top).
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `openat2(dir, rel, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`; `Err(None)` when the
/// kernel has no openat2 (older than 5.6, or a seccomp filter refuses it).
fn open_beneath(dir: &File, rel: &Path, flags: i32, mode: u32) -> Result<OwnedFd, Option<std::io::Error>> {
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| Some(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: open_how is plain data; zeroed is its documented initial state.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, NUL-terminated path, a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), c.as_ptr(), &how as *const libc::open_how, std::mem::size_of::<libc::open_how>())
    };
    if fd < 0 {
        let e = errno();
        return Err(if e == libc::ENOSYS || e == libc::EPERM { None } else { Some(std::io::Error::from_raw_os_error(e)) });
    }
    // SAFETY: a descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl DataDir {
    /// Create the directory if needed and resolve it once.
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let err = |m: String| FileError::Root { root: path.display().to_string(), message: m };
        std::fs::create_dir_all(path).map_err(|e| err(e.to_string()))?;
        let root = path.canonicalize().map_err(|e| err(e.to_string()))?;
        if !root.is_dir() {
            return Err(err("not a directory".into()));
        }
        Ok(Self { root, configured: path.to_path_buf() })
    }

    /// The canonical path of the data dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn not_available(&self, given: &str) -> FileError {
        FileError::NotAvailable { given: crate::input::summary(given, 300).into_owned(), root: self.root.display().to_string() }
    }

    /// `given` as a path relative to the data dir, if it names something inside it (lexically).
    pub fn relative(&self, given: &str) -> Option<PathBuf> {
        let given = given.trim();
        let p = Path::new(given.strip_prefix("file://").unwrap_or(given));
        let rel = if p.is_absolute() {
            let n = Path::new("/").join(normalize(p)?);
            [&self.root, &self.configured]
                .iter()
                .filter(|r| r.is_absolute())
                .find_map(|r| normalize(r).and_then(|r| n.strip_prefix(Path::new("/").join(r)).ok().map(Path::to_path_buf)))?
        } else {
            normalize(p)?
        };
        (!rel.as_os_str().is_empty()).then_some(rel)
    }

    /// Open `rel` (relative, normalized) under the data dir with `flags`, never leaving it.
    fn open_rel(&self, rel: &Path, flags: i32, mode: u32) -> std::io::Result<File> {
        let dir = File::open(&self.root)?;
        match open_beneath(&dir, rel, flags, mode) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Some(e)) => Err(e),
            Err(None) => self.open_checked(rel, flags, mode),
        }
    }

    /// Without openat2: the parent's canonical path must be inside the data dir, the last
    /// component is opened with O_NOFOLLOW, and the opened descriptor's path is checked again.
    fn open_checked(&self, rel: &Path, flags: i32, mode: u32) -> std::io::Result<File> {
        let outside = || std::io::Error::from_raw_os_error(libc::EXDEV);
        let full = self.root.join(rel);
        let parent = full.parent().ok_or_else(outside)?.canonicalize()?;
        if !parent.starts_with(&self.root) {
            return Err(outside());
        }
        let name = full.file_name().ok_or_else(outside)?;
        let f = std::fs::OpenOptions::new()
            .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
            .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
            .create(flags & libc::O_CREAT != 0)
            .mode(mode)
            .custom_flags((flags & !(libc::O_ACCMODE | libc::O_CREAT)) | libc::O_NOFOLLOW)
            .open(parent.join(name))?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
        if !real.starts_with(&self.root) {
            return Err(outside());
        }
        Ok(f)
    }

    /// Read the regular file `given` names under the data dir, at most `cap` bytes (blocking).
    pub fn read_blocking(&self, given: &str, cap: u64) -> Result<(PathBuf, Vec<u8>), FileError> {
        let rel = self.relative(given).ok_or_else(|| self.not_available(given))?;
        let file = self
            .open_rel(&rel, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)
            .map_err(|_| self.not_available(given))?;
        let meta = file.metadata().map_err(|_| self.not_available(given))?;
        if !meta.file_type().is_file() {
            return Err(self.not_available(given));
        }
        if meta.len() > cap {
            return Err(FileError::TooBig { given: given.trim().to_string(), size: meta.len(), cap });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // One byte past the cap tells a file that grew while being read.
        file.take(cap.saturating_add(1)).read_to_end(&mut bytes).map_err(|_| self.not_available(given))?;
        if bytes.len() as u64 > cap {
            return Err(FileError::TooBig { given: given.trim().to_string(), size: bytes.len() as u64, cap });
        }
        Ok((self.root.join(rel), bytes))
    }

    /// [`Self::read_blocking`] on tokio's blocking pool.
    pub async fn read(&self, given: &str, cap: u64) -> Result<(PathBuf, Vec<u8>), FileError> {
        let (me, given) = (self.clone(), given.to_string());
        tokio::task::spawn_blocking(move || me.read_blocking(&given, cap))
            .await
            .unwrap_or_else(|e| Err(FileError::Root { root: String::new(), message: format!("the file reader failed: {e}") }))
    }

    /// Write `bytes` as the regular file `sub/name` under the data dir (blocking): `sub` is created
    /// if needed (one level); an existing regular file is replaced; a symlink, FIFO or anything
    /// but a regular file at that name is refused; at most `cap` bytes.
    pub fn write_blocking(&self, sub: &str, name: &str, bytes: &[u8], cap: u64) -> Result<PathBuf, FileError> {
        let rel = normalize(&Path::new(sub).join(name)).filter(|r| r.components().count() >= 1);
        let shown = self.root.join(sub).join(name).display().to_string();
        let err = |m: String| FileError::Write { path: shown.clone(), message: m };
        let rel = rel.ok_or_else(|| err("not a name inside the data dir".into()))?;
        if bytes.len() as u64 > cap {
            return Err(err(format!("{} bytes, more than the {cap} allowed", bytes.len())));
        }
        if !sub.is_empty() {
            let d = self.root.join(sub);
            match std::fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e.to_string())),
            }
        }
        let mut f = self
            .open_rel(&rel, libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY, 0o644)
            .map_err(|e| err(if e.raw_os_error() == Some(libc::EXDEV) { "it would be outside the data dir".into() } else { e.to_string() }))?;
        let meta = f.metadata().map_err(|e| err(e.to_string()))?;
        if !meta.file_type().is_file() {
            return Err(err("not a regular file".into()));
        }
        f.set_len(0).map_err(|e| err(e.to_string()))?;
        f.write_all(bytes).map_err(|e| err(e.to_string()))?;
        Ok(self.root.join(rel))
    }

    /// [`Self::write_blocking`] on tokio's blocking pool.
    pub async fn write(&self, sub: &str, name: &str, bytes: Vec<u8>, cap: u64) -> Result<PathBuf, FileError> {
        let (me, sub, name) = (self.clone(), sub.to_string(), name.to_string());
        let shown = name.clone();
        tokio::task::spawn_blocking(move || me.write_blocking(&sub, &name, &bytes, cap))
            .await
            .unwrap_or_else(|e| Err(FileError::Write { path: shown, message: format!("the file writer failed: {e}") }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("rosa-datadir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn mkfifo(p: &Path) {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn reads_files_inside_and_nothing_else_with_one_answer() {
        let t = tmp("read");
        let dd = DataDir::open(&t.0.join("data")).unwrap();
        std::fs::create_dir_all(dd.root().join("pictures")).unwrap();
        std::fs::write(dd.root().join("pictures/a.jpg"), [0xFF, 0xD8, 1]).unwrap();
        let (p, b) = dd.read_blocking("pictures/a.jpg", 100).unwrap();
        assert_eq!(b, [0xFF, 0xD8, 1]);
        assert_eq!(p, dd.root().join("pictures/a.jpg"));
        let abs = dd.root().join("pictures/a.jpg");
        assert!(dd.read_blocking(abs.to_str().unwrap(), 100).is_ok());
        assert!(dd.read_blocking(&format!("file://{}", abs.display()), 100).is_ok());
        // Through the configured (non-canonical) path too.
        let conf = t.0.join("data/./pictures/../pictures/a.jpg");
        assert!(dd.read_blocking(conf.to_str().unwrap(), 100).is_ok());

        // Outside, missing, escaping, symlinked out, FIFO, device: the same answer.
        std::fs::write(t.0.join("secret.jpg"), [0xFF, 0xD8, 2]).unwrap();
        symlink(t.0.join("secret.jpg"), dd.root().join("out.jpg")).unwrap();
        symlink("/etc", dd.root().join("etc")).unwrap();
        symlink("/dev/zero", dd.root().join("zero")).unwrap();
        mkfifo(&dd.root().join("fifo"));
        let mut answers = std::collections::HashSet::new();
        for given in ["/etc/shadow", "/etc/passwd", "/no/such/file", "/dev/zero", "../secret.jpg", "pictures/../../secret.jpg",
                      "out.jpg", "etc/passwd", "zero", "fifo", "missing.jpg", "", "pictures"] {
            let e = dd.read_blocking(given, 1 << 20).unwrap_err();
            assert!(matches!(e, FileError::NotAvailable { .. }), "{given}: {e}");
            answers.insert(e.to_string().replace(&format!("`{given}`"), "`X`"));
        }
        assert_eq!(answers.len(), 1, "{answers:?}");
        // A symlink that stays inside is fine.
        symlink("pictures/a.jpg", dd.root().join("in.jpg")).unwrap();
        assert!(dd.read_blocking("in.jpg", 100).is_ok());
    }

    #[test]
    fn reads_are_capped() {
        let t = tmp("cap");
        let dd = DataDir::open(&t.0).unwrap();
        std::fs::write(dd.root().join("big"), vec![0u8; 5000]).unwrap();
        assert!(matches!(dd.read_blocking("big", 4999), Err(FileError::TooBig { size: 5000, .. })));
        assert_eq!(dd.read_blocking("big", 5000).unwrap().1.len(), 5000);
    }

    #[test]
    fn the_fallback_without_openat2_is_as_strict() {
        let t = tmp("fallback");
        let dd = DataDir::open(&t.0.join("d")).unwrap();
        std::fs::write(t.0.join("outside"), b"x").unwrap();
        std::fs::write(dd.root().join("inside"), b"y").unwrap();
        symlink(t.0.join("outside"), dd.root().join("link")).unwrap();
        symlink(&t.0, dd.root().join("up")).unwrap();
        let ro = libc::O_RDONLY | libc::O_NONBLOCK;
        assert!(dd.open_checked(Path::new("inside"), ro, 0).is_ok());
        assert!(dd.open_checked(Path::new("link"), ro, 0).is_err());
        assert!(dd.open_checked(Path::new("up/outside"), ro, 0).is_err());
    }

    #[test]
    fn writes_stay_inside_and_refuse_planted_links_and_fifos() {
        let t = tmp("write");
        let dd = DataDir::open(&t.0.join("data")).unwrap();
        let p = dd.write_blocking("pictures", "p1.jpg", b"jpeg", 100).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"jpeg");
        // Replacing a regular file is fine.
        dd.write_blocking("pictures", "p1.jpg", b"j2", 100).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"j2");
        std::fs::write(t.0.join("victim"), b"keep").unwrap();
        symlink(t.0.join("victim"), dd.root().join("pictures/p2.jpg")).unwrap();
        assert!(dd.write_blocking("pictures", "p2.jpg", b"evil", 100).is_err());
        assert_eq!(std::fs::read(t.0.join("victim")).unwrap(), b"keep");
        // A data subdir that is a symlink out.
        symlink(&t.0, dd.root().join("speech")).unwrap();
        assert!(dd.write_blocking("speech", "victim", b"evil", 100).is_err());
        assert_eq!(std::fs::read(t.0.join("victim")).unwrap(), b"keep");
        mkfifo(&dd.root().join("pictures/fifo"));
        assert!(dd.write_blocking("pictures", "fifo", b"x", 100).is_err());
        assert!(dd.write_blocking("pictures", "../../escape", b"x", 100).is_err());
        assert!(dd.write_blocking("pictures", "big", &[0; 101], 100).is_err());
    }

    #[tokio::test]
    async fn a_fifo_does_not_block_the_reader() {
        let t = tmp("fifo");
        let dd = DataDir::open(&t.0).unwrap();
        mkfifo(&dd.root().join("f.jpg"));
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), dd.read("f.jpg", 100)).await.expect("no hang");
        assert!(r.is_err());
    }
}
