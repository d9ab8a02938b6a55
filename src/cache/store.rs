//! The cache directory on disk: published copies under `data/` (mirroring SOURCE's
//! tree, so a user can see what is on the SSD), copies in progress under `tmp/`, and a
//! `lock` file that one instance holds with flock.
//!
//! Each copy carries its provenance in the extended attribute `user.cachefs.src`: the
//! source's size, mtime (ns), inode number and ctime (ns) at the moment the copy was
//! taken. A copy is used only while those still match the source (invariant 2). The
//! ctime catches a rewrite that restored the mtime (taggers, `rsync -t`), which no user
//! can hide; a change of the ctime alone (a chmod or chown over the library) is re-checked
//! by content in the background (`reverify`) instead of costing the copy. A copy is published only
//! whole: written to `tmp/`, fsynced, provenance set, then renamed into `data/`
//! (invariant 4); startup empties `tmp/`.
//!
//! All access is by directory descriptor and single names (`walk`), as in the overlay.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, Stat, XattrFlags};
use rustix::io::Errno;

use crate::fdio;

pub const XATTR: &str = "user.cachefs.src";

/// What a copy was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provenance {
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    pub ino: u64,
    /// (sec, nsec); `None` in copies made before it was recorded ("v1"), which are
    /// re-checked by content once.
    pub ctime: Option<(i64, i64)>,
}

/// How a copy's provenance compares with its source now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Same,
    /// Size, mtime and inode match, the ctime does not: metadata changed, or bytes were
    /// rewritten and the mtime restored. Only the content can tell.
    CtimeOnly,
    Different,
}

impl Provenance {
    pub fn of(st: &Stat) -> Provenance {
        Provenance {
            size: st.st_size as u64,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as i64,
            ino: st.st_ino,
            ctime: Some((st.st_ctime, st.st_ctime_nsec as i64)),
        }
    }

    /// The same from a stat in libc's layout (the metadata cache's attributes).
    pub fn of_libc(st: &libc::stat) -> Provenance {
        Provenance {
            size: st.st_size as u64,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            ino: st.st_ino,
            ctime: Some((st.st_ctime, st.st_ctime_nsec)),
        }
    }

    pub fn compare(&self, now: &Provenance) -> Match {
        if (self.size, self.mtime_sec, self.mtime_nsec, self.ino)
            != (now.size, now.mtime_sec, now.mtime_nsec, now.ino)
        {
            Match::Different
        } else if self.ctime.is_none() || self.ctime != now.ctime {
            Match::CtimeOnly
        } else {
            Match::Same
        }
    }

    pub fn encode(&self) -> String {
        let base = format!(
            "{} {} {} {}",
            self.size, self.mtime_sec, self.mtime_nsec, self.ino
        );
        match self.ctime {
            Some((s, ns)) => format!("v2 {base} {s} {ns}"),
            None => format!("v1 {base}"),
        }
    }

    pub fn decode(b: &[u8]) -> Option<Provenance> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.split(' ');
        let version = it.next()?;
        if version != "v1" && version != "v2" {
            return None;
        }
        let mut p = Provenance {
            size: it.next()?.parse().ok()?,
            mtime_sec: it.next()?.parse().ok()?,
            mtime_nsec: it.next()?.parse().ok()?,
            ino: it.next()?.parse().ok()?,
            ctime: None,
        };
        if version == "v2" {
            p.ctime = Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?));
        }
        it.next().is_none().then_some(p)
    }
}

/// The normal components of a relative path; `None` if it has any other kind
/// (`..`, a root, a prefix), which no path built by the daemon has.
pub fn components(rel: &Path) -> Option<Vec<&OsStr>> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// The directory `rel` is in, relative as `rel` is (the empty path for the root).
pub fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// Opens the directory that holds `rel`'s last component, one name at a time from
/// `root`, never following a symlink; with `create`, missing directories are made.
/// Returns the directory and the last name.
pub fn walk_parent<'a>(
    root: BorrowedFd<'_>,
    rel: &'a Path,
    create: bool,
) -> io::Result<(OwnedFd, &'a OsStr)> {
    let comps = components(rel).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let (last, dirs) = comps
        .split_last()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut dir = openat(root, ".", OFlags::PATH | OFlags::DIRECTORY)?;
    for &name in dirs {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        dir = match openat(dir.as_fd(), name, flags) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&dir, name, Mode::RWXU) {
                    Err(e) if e != Errno::EXIST => return Err(e.into()),
                    _ => {}
                }
                openat(dir.as_fd(), name, flags)?
            }
            r => r?,
        };
    }
    Ok((dir, last))
}

/// `openat` of an existing object, close-on-exec.
fn openat<P: rustix::path::Arg>(
    dir: BorrowedFd<'_>,
    name: P,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, flags | OFlags::CLOEXEC, Mode::empty())
}

/// Opens `rel` below `root` read-only, following no symlink on the way.
pub fn open_below(root: BorrowedFd<'_>, rel: &Path) -> io::Result<File> {
    let (dir, name) = walk_parent(root, rel, false)?;
    let fd = openat(dir.as_fd(), name, OFlags::RDONLY | OFlags::NOFOLLOW)?;
    Ok(File::from(fd))
}

/// Opens the directory `rel` below `root` for reading (the empty path is `root`
/// itself), following no symlink on the way.
pub fn open_dir_below(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    if rel.as_os_str().is_empty() {
        return Ok(openat(root, ".", flags)?);
    }
    let (dir, name) = walk_parent(root, rel, false)?;
    Ok(openat(dir.as_fd(), name, flags | OFlags::NOFOLLOW)?)
}

/// The result of looking a copy up for an open.
pub enum Lookup {
    /// A copy that matches the source; open for reading.
    Hit(File),
    /// A copy whose source's ctime alone changed: not to be served until `reverify`
    /// has compared it with the source, not to be dropped before.
    Recheck,
    Miss,
}

/// The provenance recorded on a copy, if it has a readable one.
fn read_provenance(copy: &File) -> Option<Provenance> {
    let mut buf = [0u8; 160];
    let n = rustix::fs::fgetxattr(copy, XATTR, &mut buf).ok()?;
    Provenance::decode(&buf[..n])
}

/// Whether two open files hold the same bytes, read in 1 MiB chunks.
fn same_bytes(a: &File, b: &File, len: u64) -> io::Result<bool> {
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    while off < len {
        let want = ((len - off) as usize).min(x.len());
        let n = fdio::pread_full(a.as_fd(), &mut x[..want], off)?;
        let m = fdio::pread_full(b.as_fd(), &mut y[..want], off)?;
        if n != want || m != want || x[..n] != y[..m] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

pub struct Store {
    /// The cache directory itself (`O_PATH`).
    root: OwnedFd,
    data: OwnedFd,
    tmp: OwnedFd,
    /// Held (flock) for the life of the store.
    _lock: File,
    next_tmp: AtomicU64,
}

/// A copy renamed into place; its directory still to be synced.
pub struct Placed(OwnedFd);

impl Placed {
    /// The rename is durable once the directory is; a crash before that loses the copy
    /// (fine), never half of it.
    pub fn sync(self) {
        let dir = self.0;
        let _ = rustix::fs::fsync(&dir).or_else(|_| {
            // An O_PATH directory cannot be fsynced; reopen it for reading.
            openat(dir.as_fd(), ".", OFlags::RDONLY | OFlags::DIRECTORY).and_then(rustix::fs::fsync)
        });
    }
}

impl Store {
    /// Opens (creating) the cache directory's layout, takes its lock, and empties `tmp/`
    /// of copies a previous run left unfinished.
    pub fn open(dir: &Path) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let root = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Copies of files only some users may read live here: root only.
        for sub in ["data", "tmp"] {
            match rustix::fs::mkdirat(&root, sub, Mode::RWXU) {
                Err(e) if e != Errno::EXIST => return Err(e.into()),
                _ => {}
            }
        }
        let lock = File::from(rustix::fs::openat(
            &root,
            "lock",
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?);
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            if e == Errno::WOULDBLOCK {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "cache directory {} is in use by another cachefs mount: give each mount its own cache",
                        dir.display()
                    ),
                )
            } else {
                e.into()
            }
        })?;
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        let data = openat(root.as_fd(), "data", dir_flags)?;
        let tmp = openat(root.as_fd(), "tmp", dir_flags)?;
        let store = Store {
            root,
            data,
            tmp,
            _lock: lock,
            next_tmp: AtomicU64::new(0),
        };
        store.clean_tmp()?;
        Ok(store)
    }

    pub fn clean_tmp(&self) -> io::Result<()> {
        for e in fdio::read_dir(self.tmp.as_fd())? {
            if let Err(err) = rustix::fs::unlinkat(&self.tmp, &e.name, AtFlags::empty()) {
                tracing::warn!("cannot remove unfinished copy tmp/{:?}: {err}", e.name);
            } else {
                tracing::info!("removed unfinished copy tmp/{}", e.name.to_string_lossy());
            }
        }
        Ok(())
    }

    /// The copy of `rel` if it still matches the source's `current` attributes. A copy
    /// that does not match is removed (it can never become valid again).
    pub fn lookup(&self, rel: &Path, current: &Provenance) -> io::Result<Lookup> {
        let file = match open_below(self.data.as_fd(), rel) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(Lookup::Miss);
            }
            Err(e) => return Err(e),
        };
        let m = read_provenance(&file).map_or(Match::Different, |p| p.compare(current));
        let st = rustix::fs::fstat(&file)?;
        if st.st_size as u64 == current.size {
            match m {
                Match::Same => return Ok(Lookup::Hit(file)),
                Match::CtimeOnly => return Ok(Lookup::Recheck),
                Match::Different => {}
            }
        }
        tracing::info!("dropping stale copy of {}", rel.display());
        self.remove(rel)?;
        Ok(Lookup::Miss)
    }

    /// A copy whose source's ctime alone changed (`Lookup::Recheck`), compared with the
    /// source `src` byte for byte: kept, with the source's provenance now, if identical
    /// and the source did not change meanwhile; removed otherwise. Returns whether it was
    /// kept. The source is only read.
    pub fn reverify(&self, src: &File, rel: &Path) -> io::Result<bool> {
        let copy = match open_below(self.data.as_fd(), rel) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let before = rustix::fs::fstat(src)?;
        let keep = match read_provenance(&copy).map(|p| p.compare(&Provenance::of(&before))) {
            Some(Match::Same) => return Ok(true),
            Some(Match::CtimeOnly) => {
                let size = before.st_size as u64;
                rustix::fs::fstat(&copy)?.st_size as u64 == size
                    && same_bytes(src, &copy, size)?
                    && Provenance::of(&rustix::fs::fstat(src)?) == Provenance::of(&before)
            }
            _ => false,
        };
        if keep {
            set_provenance(&copy, &Provenance::of(&before))?;
        } else {
            self.remove(rel)?;
        }
        Ok(keep)
    }

    /// The source of `rel` changed through the mount in its metadata only (a rename, a
    /// chmod, a link): a copy that matched it but for the ctime takes the new one, so the
    /// daemon's own changes never cost a re-check. Anything else is left to `lookup`.
    pub fn metadata_changed(&self, rel: &Path, now: &Stat) -> io::Result<()> {
        let copy = match open_below(self.data.as_fd(), rel) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let now = Provenance::of(now);
        match read_provenance(&copy) {
            Some(p) if p.ctime.is_some() && p.compare(&now) == Match::CtimeOnly => {
                set_provenance(&copy, &now)
            }
            _ => Ok(()),
        }
    }

    /// Removes the copy of `rel`, if any. Open readers keep their bytes.
    pub fn remove(&self, rel: &Path) -> io::Result<bool> {
        let (dir, name) = match walk_parent(self.data.as_fd(), rel, false) {
            Ok(x) => x,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT | Errno::ISDIR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the copy or the directory of copies at `rel`, whatever it is. Failures are
    /// logged: a leftover copy is harmless, as it is validated before any use.
    pub fn remove_tree(&self, rel: &Path) {
        if rel.components().next().is_none() {
            // The root (`cachefs evict MOUNTPOINT`): every copy, the data directory stays.
            let names = openat(self.data.as_fd(), ".", OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(io::Error::from)
                .and_then(|d| fdio::read_dir(d.as_fd()));
            for entry in names.unwrap_or_default() {
                if let Err(e) = remove_all(self.data.as_fd(), &entry.name) {
                    tracing::warn!("cannot remove cached {}: {e}", entry.name.display());
                }
            }
            return;
        }
        let Ok((dir, name)) = walk_parent(self.data.as_fd(), rel, false) else {
            return;
        };
        if let Err(e) = remove_all(dir.as_fd(), name)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!("cannot remove cached {}: {e}", rel.display());
        }
    }

    /// Moves the copy (or directory of copies) at `from` to `to`.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fdir, fname) = walk_parent(self.data.as_fd(), from, false)?;
        // Check there is something to move before making the target's directories.
        rustix::fs::statat(&fdir, fname, AtFlags::SYMLINK_NOFOLLOW)?;
        let (tdir, tname) = walk_parent(self.data.as_fd(), to, true)?;
        Ok(rustix::fs::renameat(&fdir, fname, &tdir, tname)?)
    }

    /// A new temporary file for a copy in progress, and its name in `tmp/`.
    pub fn temp_file(&self) -> io::Result<(File, String)> {
        let name = format!(
            "{}-{}.part",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        );
        let fd = rustix::fs::openat(
            &self.tmp,
            &name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        Ok((File::from(fd), name))
    }

    pub fn discard_temp(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.tmp, name, AtFlags::empty());
    }

    /// Publishes a finished, fsynced temporary file as the copy of `rel`, recording its
    /// provenance first so the copy is never visible without it.
    pub fn publish(
        &self,
        file: &File,
        tmp_name: &str,
        rel: &Path,
        prov: &Provenance,
    ) -> io::Result<()> {
        self.rename_into_place(file, tmp_name, rel, prov)?.sync();
        Ok(())
    }

    /// The first step of `publish`: the copy is in place, not yet durable (see
    /// `Placed::sync`). Callers that hold a lock while the copy appears take it for this
    /// step alone: the directory's fsync can take a journal commit.
    pub fn rename_into_place(
        &self,
        file: &File,
        tmp_name: &str,
        rel: &Path,
        prov: &Provenance,
    ) -> io::Result<Placed> {
        set_provenance(file, prov)?;
        let (dir, name) = walk_parent(self.data.as_fd(), rel, true)?;
        rustix::fs::renameat(&self.tmp, tmp_name, &dir, name)?;
        Ok(Placed(dir))
    }

    /// The whole of a small file in the cache directory (`index`, `pins`).
    pub fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        let fd = openat(self.root.as_fd(), name, OFlags::RDONLY | OFlags::NOFOLLOW)?;
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut File::from(fd), &mut buf)?;
        Ok(buf)
    }

    /// Replaces a small file in the cache directory as a whole (temp file, fsync, rename).
    pub fn write_file(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = format!("{name}.new");
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(
            &self.root,
            &tmp,
            flags | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        let mut f = File::from(fd);
        io::Write::write_all(&mut f, data)?;
        f.sync_all()?;
        Ok(rustix::fs::renameat(&self.root, &tmp, &self.root, name)?)
    }

    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.root, name, AtFlags::empty()) {
            Err(e) if e != Errno::NOENT => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// (available, total) bytes of the cache's filesystem.
    pub fn space(&self) -> io::Result<(u64, u64)> {
        let s = rustix::fs::fstatvfs(&self.data)?;
        Ok((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
    }

    /// Whether the cache directory is still where it was, with its `data/` in it: false
    /// once someone removed or replaced it under the running mount.
    pub fn intact(&self, dir: &Path) -> bool {
        let (Ok(now), Ok(ours), Ok(data)) = (
            rustix::fs::stat(dir),
            rustix::fs::fstat(&self.root),
            rustix::fs::fstat(&self.data),
        ) else {
            return false;
        };
        (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino) && data.st_nlink > 0
    }

    /// The names of the copies in the directory `dir` of `data/` (none if it does not
    /// exist): what is cached beside a file, read from the SSD alone.
    pub fn copies_in(&self, dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        let d = match open_dir_below(self.data.as_fd(), dir) {
            Ok(d) => d,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        Ok(fdio::read_dir(d.as_fd())?
            .into_iter()
            .filter(|e| e.kind == FileType::RegularFile)
            .map(|e| e.name)
            .collect())
    }

    /// Every published copy: (path relative to `data/`, size, mtime). Used at startup
    /// when there is no index to trust.
    pub fn scan(&self) -> io::Result<Vec<(std::path::PathBuf, u64, i64)>> {
        let mut out = Vec::new();
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY;
        let mut stack = vec![(
            openat(self.data.as_fd(), ".", dir_flags)?,
            std::path::PathBuf::new(),
        )];
        while let Some((dir, prefix)) = stack.pop() {
            for e in fdio::read_dir(dir.as_fd())? {
                let rel = prefix.join(&e.name);
                if e.kind == FileType::Directory {
                    if let Ok(d) = openat(dir.as_fd(), &e.name, dir_flags | OFlags::NOFOLLOW) {
                        stack.push((d, rel));
                    }
                } else if e.kind == FileType::RegularFile
                    && let Ok(st) = rustix::fs::statat(&dir, &e.name, AtFlags::SYMLINK_NOFOLLOW)
                {
                    out.push((rel, st.st_size as u64, st.st_mtime));
                }
            }
        }
        Ok(out)
    }
}

/// Records a copy's provenance on it.
fn set_provenance(copy: &File, prov: &Provenance) -> io::Result<()> {
    let value = prov.encode();
    Ok(rustix::fs::fsetxattr(
        copy,
        XATTR,
        value.as_bytes(),
        XattrFlags::empty(),
    )?)
}

/// Removes `name` under `dir`: a file, or a directory and everything below it.
fn remove_all(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::ISDIR | Errno::PERM) => {}
        r => return Ok(r?),
    }
    let sub = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
    )?;
    for e in fdio::read_dir(sub.as_fd())? {
        remove_all(sub.as_fd(), &e.name)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_round_trip() {
        let p = Provenance {
            size: 734003200,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 123_456_789,
            ino: 42,
            ctime: Some((1_700_000_100, 5)),
        };
        assert_eq!(Provenance::decode(p.encode().as_bytes()), Some(p));
        assert_eq!(
            p.encode(),
            "v2 734003200 1700000000 123456789 42 1700000100 5"
        );
        // Copies made before the ctime was recorded: decoded, to be re-checked once.
        let v1 = Provenance::decode(b"v1 734003200 1700000000 123456789 42").unwrap();
        assert_eq!(v1.ctime, None);
        assert_eq!(v1.compare(&p), Match::CtimeOnly);
        assert_eq!(p.compare(&p), Match::Same);
        let chmodded = Provenance {
            ctime: Some((1_700_000_200, 0)),
            ..p
        };
        assert_eq!(p.compare(&chmodded), Match::CtimeOnly);
        let rewritten = Provenance { size: 1, ..p };
        assert_eq!(p.compare(&rewritten), Match::Different);
        assert_eq!(Provenance::decode(b"v2 1 2 3 4 5"), None);
        assert_eq!(Provenance::decode(b"v2 1 2 3 4 5 6 7"), None);
        assert_eq!(Provenance::decode(b"v1 1 2 3"), None);
        assert_eq!(Provenance::decode(b"v1 1 2 3 4 5"), None);
        assert_eq!(Provenance::decode(b"v2 1 2 3 4"), None);
        assert_eq!(Provenance::decode(b"\xff"), None);
    }

    #[test]
    fn components_reject_escapes() {
        assert!(components(Path::new("a/b/c")).is_some());
        assert!(components(Path::new("../a")).is_none());
        assert!(components(Path::new("/a")).is_none());
    }

    #[test]
    fn reverify_keeps_identical_copies_and_drops_changed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let publish = |name: &str, bytes: &[u8]| {
            let src = dir.path().join(name);
            std::fs::write(&src, bytes).unwrap();
            let st = rustix::fs::stat(&src).unwrap();
            let (f, tmp) = store.temp_file().unwrap();
            io::Write::write_all(&mut &f, bytes).unwrap();
            f.sync_all().unwrap();
            store
                .publish(&f, &tmp, Path::new(name), &Provenance::of(&st))
                .unwrap();
            src
        };
        let same = publish("same", b"identical bytes");
        let changed = publish("changed", b"original bytes!");
        // A chmod: the ctime alone moves.
        std::fs::set_permissions(&same, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // A rewrite of as many bytes, with the mtime put back: the ctime alone moves.
        let old = std::fs::metadata(&changed).unwrap().modified().unwrap();
        std::fs::write(&changed, b"rewritten bytes").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&changed)
            .unwrap()
            .set_modified(old)
            .unwrap();
        for (src, rel, kept) in [(&same, "same", true), (&changed, "changed", false)] {
            let st = rustix::fs::stat(src).unwrap();
            assert!(matches!(
                store.lookup(Path::new(rel), &Provenance::of(&st)).unwrap(),
                Lookup::Recheck
            ));
            let f = File::open(src).unwrap();
            assert_eq!(store.reverify(&f, Path::new(rel)).unwrap(), kept, "{rel}");
            let after = store.lookup(Path::new(rel), &Provenance::of(&st)).unwrap();
            assert_eq!(matches!(after, Lookup::Hit(_)), kept, "{rel}");
        }
    }

    #[test]
    fn publish_lookup_stale_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, b"hello").unwrap();
        let st = rustix::fs::stat(&src).unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        // A second instance on the same cache is refused.
        assert!(Store::open(&dir.path().join("cache")).is_err());

        let rel = Path::new("Show/S01/E01.mkv");
        assert!(matches!(
            store.lookup(rel, &Provenance::of(&st)).unwrap(),
            Lookup::Miss
        ));
        let (mut f, name) = store.temp_file().unwrap();
        io::Write::write_all(&mut f, b"hello").unwrap();
        f.sync_all().unwrap();
        store.publish(&f, &name, rel, &Provenance::of(&st)).unwrap();
        assert!(matches!(
            store.lookup(rel, &Provenance::of(&st)).unwrap(),
            Lookup::Hit(_)
        ));
        let scanned = store.scan().unwrap();
        assert_eq!(scanned.len(), 1);
        assert_eq!((scanned[0].0.as_path(), scanned[0].1), (rel, 5));

        // The source changes: the copy is stale and goes.
        let mut changed = st;
        changed.st_mtime_nsec += 1;
        assert!(matches!(
            store.lookup(rel, &Provenance::of(&changed)).unwrap(),
            Lookup::Miss
        ));
        assert!(store.scan().unwrap().is_empty());
    }
}
