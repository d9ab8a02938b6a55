//! Parity: each script makes the same calls under a root, once inside a cachefs mount and
//! once inside a plain directory on the same file system as SOURCE, and records every
//! outcome (value or errno name, type, mode bits, owner; no times, inode numbers or paths).
//! The two logs must be equal. Each script runs twice on a mount: with the default policy
//! (nothing is promoted) and in `promoting`, where a file is promoted on its first read;
//! there the scripts check that their files were promoted, that the steps meant to read a
//! copy did, and that writes, truncates, renames and unlinks dropped or moved the copies
//! (`Probe`). A few further tests check that writes land in SOURCE.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    Outcomes, TestMount, assert_same, check, check_size, cpath, digest, errno, in_child, num,
    pattern, plain_dir, rc, status,
};
use crate::require_mount;

/// What a script run on a mount sees of it besides the mount itself; `None` on the plain
/// directory, where the same calls are made and nothing is checked.
struct Probe<'a> {
    m: &'a TestMount,
    /// SOURCE/t: the script's root as the daemon reaches it.
    source: PathBuf,
    /// CACHE/data/t: where the copies of the script's files are published.
    copies: PathBuf,
    /// The mount promotes a file on its first read, so copies are expected.
    promoting: bool,
    /// Files seen promoted, and steps seen served from a copy: a promoting run that saw
    /// none of either exercised no copy at all.
    promoted: usize,
    served: usize,
}

/// How long a promotion of one small file may take in the background.
const PROMOTION_DEADLINE: Duration = Duration::from_secs(20);

impl Probe<'_> {
    /// (hits, misses) from the daemon's status.
    fn counters(&self) -> (u64, u64) {
        let s = status(self.m);
        (num(&s, "hits"), num(&s, "misses"))
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "{what}\nstatus: {}\nlog:\n{}",
            status(self.m),
            self.m.log_contents()
        )
    }
}

/// `rel` for a message: a long one by its length and its end.
fn short(rel: &str) -> String {
    match rel.len() {
        n if n > 80 => format!("{n}-byte path ...{:?}", &rel[n - 20..]),
        _ => format!("{rel:?}"),
    }
}

/// The bytes of the regular file `rel` below `base`, by one `openat` from a descriptor of
/// `base` (a long `rel` is no longer than the caller's own paths). `None` when there is no
/// regular file there.
fn file_below(base: &Path, rel: &str) -> Option<Vec<u8>> {
    let dir = File::open(base).ok()?;
    let c = CString::new(rel).ok()?;
    // SAFETY: dir is open, c is NUL-terminated.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd that nothing else owns.
    let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut b = Vec::new();
    f.read_to_end(&mut b).ok()?;
    Some(b)
}

/// One run of a script: the root it works under and what it saw.
struct Ctx<'a> {
    root: PathBuf,
    out: Outcomes,
    probe: Option<Probe<'a>>,
}

impl<'a> Ctx<'a> {
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    fn c(&self, rel: &str) -> CString {
        cpath(&self.p(rel))
    }
    fn note(&mut self, step: &str, what: impl std::fmt::Display) {
        self.out.note(step, what)
    }
    fn io<T: std::fmt::Debug>(&mut self, step: &str, r: io::Result<T>) -> Option<T> {
        self.out.io(step, r)
    }
    fn sys<T: std::fmt::Debug>(&mut self, step: &str, r: Result<T, i32>) -> Option<T> {
        self.out.sys(step, r)
    }
    fn stat(&mut self, step: &str, rel: &str) {
        let p = self.p(rel);
        self.out.lstat(step, &p)
    }
    fn read(&mut self, step: &str, rel: &str) {
        let r = fs::read(self.p(rel)).map(|b| show_bytes(&b));
        self.io(step, r);
    }
    fn write(&mut self, step: &str, rel: &str, data: &[u8]) {
        let r = fs::write(self.p(rel), data);
        self.io(step, r);
    }
    fn open(&mut self, step: &str, rel: &str, flags: i32, mode: u32) -> Option<OwnedFd> {
        let c = self.c(rel);
        // SAFETY: c is a valid path.
        match check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) }) {
            Ok(fd) => {
                self.note(step, "ok");
                // SAFETY: a fresh fd that nothing else owns.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            }
            Err(e) => {
                self.sys::<()>(step, Err(e));
                None
            }
        }
    }

    fn promoting(&mut self) -> Option<&mut Probe<'a>> {
        self.probe.as_mut().filter(|p| p.promoting)
    }

    /// Reads `rel` through the root (on every run, so that all make the same calls; the
    /// outcome is not recorded) and, on a promoting mount, waits until the policy has
    /// published a copy of it with SOURCE's bytes. The wait reads it again now and then:
    /// a promotion the script's previous steps made fail (the file changed while it was
    /// copied) is retried by the policy only on a later read.
    fn promoted(&mut self, rel: &str) {
        let root = self.root.clone();
        let _ = file_below(&root, rel);
        let Some(p) = self.promoting() else { return };
        let end = Instant::now() + PROMOTION_DEADLINE;
        let mut reread = Instant::now() + Duration::from_millis(500);
        loop {
            let src = file_below(&p.source, rel);
            if src.is_some() && file_below(&p.copies, rel) == src {
                p.promoted += 1;
                return;
            }
            let now = Instant::now();
            if now >= end {
                p.fail(format!(
                    "{} was read but not promoted within {PROMOTION_DEADLINE:?}",
                    short(rel)
                ));
            }
            if now >= reread {
                let _ = file_below(&root, rel);
                reread = now + Duration::from_millis(500);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `op`, which opens regular files only to read them; on a promoting mount every
    /// such open must be served from a cached copy: `hits` grows, `misses` does not.
    fn served_from_copy<T>(&mut self, what: &str, op: impl FnOnce(&mut Self) -> T) -> T {
        let before = self.promoting().map(|p| p.counters());
        let r = op(self);
        if let (Some((hits, misses)), Some(p)) = (before, self.promoting()) {
            let (h, m) = p.counters();
            if h <= hits || m != misses {
                p.fail(format!(
                    "{what}: not served from a cached copy (hits {hits} -> {h}, misses \
                     {misses} -> {m})"
                ));
            }
            p.served += 1;
        }
        r
    }

    /// Runs `op`; on a promoting mount none of its opens may be served from a copy (the
    /// copies it could use no longer match their sources).
    fn served_from_source<T>(&mut self, what: &str, op: impl FnOnce(&mut Self) -> T) -> T {
        let before = self.promoting().map(|p| p.counters());
        let r = op(self);
        if let (Some((hits, _)), Some(p)) = (before, self.promoting()) {
            let (h, _) = p.counters();
            if h != hits {
                p.fail(format!(
                    "{what}: served from a copy that no longer matches SOURCE"
                ));
            }
        }
        r
    }

    /// On a promoting mount, after a step that changed or removed `rel` through the
    /// mount: no copy of `rel` holds bytes SOURCE no longer has. The copy was dropped (or
    /// refreshed); where `rel` is no regular file any more, there is none.
    ///
    /// A promotion that was publishing as the change began withdraws its copy itself, on
    /// its own thread, a moment after the change returns (such a copy never matches its
    /// source, so no open serves it meanwhile): the check allows it 5 s to go.
    fn no_stale_copy(&mut self, rel: &str) {
        let Some(p) = self.promoting() else { return };
        let stale = || {
            let copy = file_below(&p.copies, rel);
            copy.is_some() && copy != file_below(&p.source, rel)
        };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stale() && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if stale() {
            p.fail(format!(
                "{}: the cache still holds a copy of bytes SOURCE no longer has",
                short(rel)
            ));
        }
    }
}

/// `b[range] == want`, false (not a panic) when `b` is too short.
fn part_eq(b: &[u8], range: std::ops::Range<usize>, want: &[u8]) -> bool {
    b.get(range).is_some_and(|x| x == want)
}

/// Short contents in full, long ones as length and digest.
fn show_bytes(b: &[u8]) -> String {
    if b.len() <= 64 {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!("{} bytes digest {:016x}", b.len(), digest(b))
    }
}

fn fstat(fd: &OwnedFd) -> Result<libc::stat, i32> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }).map(|_| st)
}

fn lstat_raw(p: &Path) -> Result<libc::stat, i32> {
    let c = cpath(p);
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid path; st is writable.
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) }).map(|_| st)
}

fn pread_all(fd: &OwnedFd, len: usize, off: i64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    // SAFETY: buf has len bytes.
    let n = check_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, off) })?;
    buf.truncate(n);
    Ok(buf)
}

fn pwrite_all(fd: &OwnedFd, data: &[u8], off: i64) -> Result<usize, i32> {
    // SAFETY: data is valid for its length.
    check_size(unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) })
}

/// Run `script` on a fresh mount and on a plain directory; compare the logs. On a
/// `promoting` mount (a file is promoted on its first read) the script must have seen at
/// least one file promoted and one step served from a copy.
fn run_parity(name: &str, script: fn(&mut Ctx<'_>), promoting: bool) {
    run_parity_with(name, script, promoting, None);
}

/// `run_parity` on a mount with `options` added (after `promote_after=0` if promoting).
fn run_parity_with(name: &str, script: fn(&mut Ctx<'_>), promoting: bool, options: Option<&str>) {
    let mut b = TestMount::builder();
    if promoting {
        b = b.option("promote_after=0");
    }
    if let Some(o) = options {
        b = b.option(o);
    }
    let m = b.start();
    let plain = plain_dir(false);
    let run = |base: &Path, probe: Option<Probe<'_>>| {
        let root = base.join("t");
        fs::create_dir(&root).expect("mkdir t");
        let mut ctx = Ctx {
            root,
            out: Outcomes::default(),
            probe,
        };
        script(&mut ctx);
        (ctx.out, ctx.probe.map(|p| (p.promoted, p.served)))
    };
    let probe = Probe {
        m: &m,
        source: m.source.join("t"),
        copies: m.cache.join("data").join("t"),
        promoting,
        promoted: 0,
        served: 0,
    };
    let (on_mount, seen) = run(&m.mnt, Some(probe));
    let (on_plain, _) = run(plain.path(), None);
    if std::env::var_os("CACHEFS_TEST_DUMP").is_some() {
        // For reading what a script observed: CACHEFS_TEST_DUMP=1 cargo test NAME -- --nocapture
        eprintln!("--- {name} on the mount ---\n{}", on_mount.lines.join("\n"));
    }
    assert!(
        !on_plain.lines.is_empty(),
        "{name}: script recorded nothing"
    );
    assert_same(name, &on_mount, &on_plain);
    if promoting {
        let (promoted, served) = seen.unwrap_or_default();
        let s = status(&m);
        assert!(
            promoted > 0 && served > 0 && num(&s, "promotions_done") > 0 && num(&s, "hits") > 0,
            "{name}: {promoted} file(s) seen promoted, {served} step(s) seen served from a \
             copy; status: {s}"
        );
    }
}

macro_rules! parity {
    ($($name:ident => $script:ident;)*) => {
        $(
            #[test]
            fn $name() {
                require_mount!();
                run_parity(stringify!($name), $script, false);
            }
        )*

        /// The same scripts on a mount that promotes a file into the cache on its first
        /// read, so that later opens are served from a cached copy while the script keeps
        /// writing, truncating and renaming: the results must not change, each script
        /// checks that its files were promoted and its reads served from the copies, and
        /// that each change dropped or moved the copy it made stale.
        mod promoting {
            use super::*;
            $(
                #[test]
                fn $name() {
                    require_mount!();
                    run_parity(concat!("promoting::", stringify!($name)), $script, true);
                }
            )*
        }

        /// The promoting scripts again with the metadata cache on (`meta_ttl`): names,
        /// attributes, listings and extended attributes come from memory, and cached
        /// files open without SOURCE, so every change a script makes through the mount
        /// must drop what it changes there, or the script sees the old state.
        mod meta_ttl {
            use super::*;
            $(
                #[test]
                fn $name() {
                    require_mount!();
                    run_parity_with(
                        concat!("meta_ttl::", stringify!($name)),
                        $script,
                        true,
                        Some("meta_ttl=3600"),
                    );
                }
            )*
        }
    };
}

parity! {
    parity_lookup_getattr => s_lookup_getattr;
    parity_setattr_chmod_chown => s_chmod_chown;
    parity_setattr_truncate => s_truncate;
    parity_setattr_utimens => s_utimens;
    parity_readdir => s_readdir;
    parity_readdir_2000 => s_readdir_big;
    parity_open_read_write => s_io;
    parity_mmap => s_mmap;
    parity_create_mknod_mkdir => s_create;
    parity_create_umask_zero => s_umask_zero;
    parity_unlink_rmdir => s_unlink_rmdir;
    parity_unlinked_open_file => s_unlinked_open;
    parity_rename => s_rename;
    parity_rename2 => s_rename2;
    parity_rename_open_file => s_rename_open;
    parity_symlink_readlink => s_symlink;
    parity_hardlink => s_link;
    parity_statfs_access => s_statfs_access;
    parity_xattr => s_xattr;
    parity_posix_acl_xattrs => s_posix_acl;
    parity_create_under_default_acl => s_create_default_acl;
    parity_fallocate => s_fallocate;
    parity_seek_data_hole => s_seek_hole;
    parity_copy_file_range => s_copy_range;
    parity_posix_locks => s_locks;
    parity_errnos => s_errnos;
    parity_long_paths => s_long_paths;
}

// ---------------------------------------------------------------------------------------
// scripts

fn s_lookup_getattr(c: &mut Ctx) {
    c.write("write f", "f", b"hello");
    c.promoted("f");
    c.stat("lstat f", "f");
    c.stat("lstat missing", "missing");
    c.stat("lstat f/x", "f/x");
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.stat("lstat d", "d");
    c.stat("lstat d/.", "d/.");
    c.stat("lstat d/..", "d/..");
    c.stat("lstat d/../f", "d/../f");
    // fstat agrees with lstat, on a descriptor served from the copy: the attributes are
    // SOURCE's, not the copy's.
    if let Some(fd) = c.served_from_copy("open f", |c| c.open("open f", "f", libc::O_RDONLY, 0)) {
        let a = fstat(&fd).map(|s| (s.st_mode, s.st_size, s.st_nlink, s.st_uid));
        let b = lstat_raw(&c.p("f")).map(|s| (s.st_mode, s.st_size, s.st_nlink, s.st_uid));
        c.note("fstat == lstat", a == b);
        c.note(
            "fstat ino == lstat ino",
            fstat(&fd).map(|s| s.st_ino) == lstat_raw(&c.p("f")).map(|s| s.st_ino),
        );
    }
    // Repeated lookups return the same inode.
    let i1 = lstat_raw(&c.p("f")).map(|s| s.st_ino);
    let i2 = lstat_raw(&c.p("d/../f")).map(|s| s.st_ino);
    c.note("same ino via two paths", i1 == i2);
    c.stat("lstat 255-byte name", &"n".repeat(255));
    c.stat("lstat 256-byte name", &"n".repeat(256));
    c.write("write 255-byte name", &"n".repeat(255), b"x");
    c.stat("lstat 255-byte name after create", &"n".repeat(255));
    // Names with odd bytes.
    let odd = "sp ace\ttab\nnl\\";
    c.write("write odd name", odd, b"odd");
    c.read("read odd name", odd);
    c.promoted(odd);
    c.served_from_copy("read odd name", |c| {
        c.read("read odd name from the copy", odd)
    });
}

fn s_chmod_chown(c: &mut Ctx) {
    c.write("write f", "f", b"0123456789");
    c.promoted("f");
    for mode in [0o640, 0o000, 0o777, 0o4755, 0o2755, 0o6711, 0o1644] {
        c.io(
            &format!("chmod {mode:o}"),
            fs::set_permissions(c.p("f"), fs::Permissions::from_mode(mode)),
        );
        c.stat(&format!("lstat after chmod {mode:o}"), "f");
    }
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.io(
        "chmod d 1777",
        fs::set_permissions(c.p("d"), fs::Permissions::from_mode(0o1777)),
    );
    c.stat("lstat d", "d");
    c.io(
        "chmod d 2750",
        fs::set_permissions(c.p("d"), fs::Permissions::from_mode(0o2750)),
    );
    c.stat("lstat d", "d");
    c.io(
        "chown f 1000:1000",
        std::os::unix::fs::chown(c.p("f"), Some(1000), Some(1000)),
    );
    c.stat("lstat f", "f");
    c.io(
        "chown f -1:2000",
        std::os::unix::fs::chown(c.p("f"), None, Some(2000)),
    );
    c.stat("lstat f", "f");
    c.io(
        "chown f 3000:-1",
        std::os::unix::fs::chown(c.p("f"), Some(3000), None),
    );
    c.stat("lstat f", "f");
    // chown of a set-id executable clears the set-id bits, root included.
    c.io(
        "chmod f 6755",
        fs::set_permissions(c.p("f"), fs::Permissions::from_mode(0o6755)),
    );
    c.io(
        "chown f 0:0",
        std::os::unix::fs::chown(c.p("f"), Some(0), Some(0)),
    );
    c.stat("lstat f after chown of set-id file", "f");
    // lchown changes the link, not the target.
    c.io("symlink l -> f", std::os::unix::fs::symlink("f", c.p("l")));
    c.io(
        "lchown l 1234:5678",
        std::os::unix::fs::lchown(c.p("l"), Some(1234), Some(5678)),
    );
    c.stat("lstat l", "l");
    c.stat("lstat f", "f");
    // chown through the link follows it.
    c.io(
        "chown l 42:43",
        std::os::unix::fs::chown(c.p("l"), Some(42), Some(43)),
    );
    c.stat("lstat l", "l");
    c.stat("lstat f", "f");
    // Modes and owners changed, the bytes did not: the copy still serves.
    c.served_from_copy("read after chmod and chown", |c| c.read("read f", "f"));
    // fchmod / fchown on an open descriptor.
    if let Some(fd) = c.open("open f", "f", libc::O_RDWR, 0) {
        // SAFETY: fd is open.
        c.sys(
            "fchmod 600",
            check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) }),
        );
        // SAFETY: fd is open.
        c.sys(
            "fchown 7:8",
            check(unsafe { libc::fchown(fd.as_raw_fd(), 7, 8) }),
        );
        c.note(
            "fstat mode/uid/gid",
            format!(
                "{:?}",
                fstat(&fd).map(|s| (s.st_mode & 0o7777, s.st_uid, s.st_gid))
            ),
        );
    }
    c.stat("lstat f", "f");
    c.io(
        "chmod missing",
        fs::set_permissions(c.p("missing"), fs::Permissions::from_mode(0o644)),
    );
}

fn s_truncate(c: &mut Ctx) {
    c.write("write f", "f", b"0123456789");
    c.promoted("f");
    let f = c.p("f");
    c.io(
        "truncate 4",
        OpenOptions::new()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_len(4)),
    );
    c.no_stale_copy("f");
    c.read("read", "f");
    c.promoted("f");
    c.io("truncate(2) to 100", {
        let cp = cpath(&f);
        // SAFETY: valid path.
        let r = unsafe { libc::truncate(cp.as_ptr(), 100) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    });
    c.no_stale_copy("f");
    c.stat("lstat", "f");
    c.promoted("f");
    c.served_from_copy("read after truncate(2)", |c| c.read("read", "f"));
    c.io(
        "ftruncate 0",
        OpenOptions::new()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_len(0)),
    );
    c.no_stale_copy("f");
    c.stat("lstat", "f");
    c.io(
        "truncate grow 3 MiB",
        OpenOptions::new()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_len(3 << 20)),
    );
    c.promoted("f");
    c.served_from_copy("read after growing", |c| c.read("read", "f"));
    // Truncate while another descriptor has it open: the open one sees the new size.
    if let Some(fd) = c.open("open rw", "f", libc::O_RDWR, 0) {
        c.sys("pwrite at 10", pwrite_all(&fd, b"abc", 10));
        c.io(
            "truncate 11 via path",
            OpenOptions::new()
                .write(true)
                .open(&f)
                .and_then(|h| h.set_len(11)),
        );
        c.note("fstat size", format!("{:?}", fstat(&fd).map(|s| s.st_size)));
        c.sys("pread", pread_all(&fd, 100, 0).map(|b| show_bytes(&b)));
    }
    c.no_stale_copy("f");
    c.io("truncate dir", {
        fs::create_dir(c.p("d")).and_then(|_| {
            let cp = c.c("d");
            // SAFETY: valid path.
            let r = unsafe { libc::truncate(cp.as_ptr(), 0) };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    });
    c.io("truncate missing", {
        let cp = c.c("missing");
        // SAFETY: valid path.
        let r = unsafe { libc::truncate(cp.as_ptr(), 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    });
    // O_TRUNC
    c.write("write g", "g", b"abcdef");
    c.promoted("g");
    if let Some(_fd) = c.open("open g O_TRUNC", "g", libc::O_WRONLY | libc::O_TRUNC, 0) {}
    c.no_stale_copy("g");
    c.stat("lstat g", "g");
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

fn utimens(p: &Path, times: [libc::timespec; 2], flags: i32) -> Result<(), i32> {
    let c = cpath(p);
    // SAFETY: valid path and a two-element array.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) }).map(|_| ())
}

/// (seconds, nanoseconds) of atime and mtime.
type Times = ((i64, i64), (i64, i64));

fn times_of(p: &Path) -> Result<Times, i32> {
    lstat_raw(p).map(|s| ((s.st_atime, s.st_atime_nsec), (s.st_mtime, s.st_mtime_nsec)))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn s_utimens(c: &mut Ctx) {
    c.write("write f", "f", b"x");
    let f = c.p("f");
    c.sys(
        "utimensat explicit",
        utimens(
            &f,
            [ts(1_000_000_000, 111), ts(1_100_000_000, 222_333_444)],
            0,
        ),
    );
    c.sys("times", times_of(&f));
    c.sys(
        "utimensat atime OMIT",
        utimens(&f, [ts(0, libc::UTIME_OMIT), ts(1_200_000_000, 5)], 0),
    );
    c.sys("times", times_of(&f));
    // Promoted here, where the next step sets the atime its reads moved.
    c.promoted("f");
    let t0 = now();
    c.sys(
        "utimensat atime NOW, mtime OMIT",
        utimens(&f, [ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)], 0),
    );
    let t1 = now();
    match times_of(&f) {
        Ok(((a, _), m)) => {
            c.note("atime is now", a >= t0 - 1 && a <= t1 + 1);
            c.note("mtime kept", format!("{m:?}"));
        }
        Err(e) => c.sys::<()>("times", Err(e)).unwrap_or(()),
    }
    // An atime change keeps the copy; the next step sets the atime again.
    c.served_from_copy("read after an atime change", |c| c.read("read f", "f"));
    let t0 = now();
    c.sys(
        "utimensat both NOW",
        utimens(&f, [ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_NOW)], 0),
    );
    let t1 = now();
    match times_of(&f) {
        Ok(((a, _), (m, _))) => {
            c.note("atime is now", a >= t0 - 1 && a <= t1 + 1);
            c.note("mtime is now", m >= t0 - 1 && m <= t1 + 1);
        }
        Err(e) => c.sys::<()>("times", Err(e)).unwrap_or(()),
    }
    // A new mtime: the copy no longer matches its source (same bytes or not) and is
    // not used. The next step sets the atime this read moves.
    c.served_from_source("read after an mtime change", |c| c.read("read f", "f"));
    // NULL times = both now.
    let cf = cpath(&f);
    c.sys(
        "utimensat explicit again",
        utimens(&f, [ts(5, 0), ts(6, 0)], 0),
    );
    // SAFETY: valid path; NULL times is allowed.
    c.sys(
        "utimensat NULL",
        check(unsafe { libc::utimensat(libc::AT_FDCWD, cf.as_ptr(), std::ptr::null(), 0) }),
    );
    c.note(
        "mtime moved from 6",
        times_of(&f).map(|(_, (m, _))| m > 6).unwrap_or(false),
    );
    // Both OMIT changes nothing.
    c.sys("utimensat explicit", utimens(&f, [ts(7, 7), ts(8, 8)], 0));
    c.sys(
        "utimensat both OMIT",
        utimens(&f, [ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_OMIT)], 0),
    );
    c.sys("times", times_of(&f));
    // futimens on an open fd.
    if let Some(fd) = c.open("open f", "f", libc::O_RDWR, 0) {
        let t = [ts(1_300_000_000, 1), ts(1_300_000_001, 2)];
        // SAFETY: fd open, array of two.
        c.sys(
            "futimens",
            check(unsafe { libc::futimens(fd.as_raw_fd(), t.as_ptr()) }),
        );
        c.sys("times", times_of(&f));
        // A write moves mtime.
        c.sys("pwrite", pwrite_all(&fd, b"y", 0));
        drop(fd);
        c.note(
            "mtime moved by write",
            times_of(&f)
                .map(|(_, (m, _))| m > 1_300_000_001)
                .unwrap_or(false),
        );
    }
    // On a symlink itself, and on a directory.
    c.io("symlink l", std::os::unix::fs::symlink("f", c.p("l")));
    c.sys(
        "utimensat l NOFOLLOW",
        utimens(
            &c.p("l"),
            [ts(2_000_000_000, 9), ts(2_000_000_001, 10)],
            libc::AT_SYMLINK_NOFOLLOW,
        ),
    );
    c.sys("times l", times_of(&c.p("l")));
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.sys("utimensat d", utimens(&c.p("d"), [ts(3, 4), ts(5, 6)], 0));
    c.sys("times d", times_of(&c.p("d")));
    c.sys(
        "utimensat missing",
        utimens(&c.p("missing"), [ts(3, 4), ts(5, 6)], 0),
    );
    c.sys(
        "utimensat bad nsec",
        utimens(&f, [ts(3, 2_000_000_000), ts(5, 6)], 0),
    );
}

/// (name, d_type) of every entry, `.` and `..` included, sorted.
fn readdir_raw(p: &Path) -> Result<Vec<(String, u8)>, i32> {
    let c = cpath(p);
    // SAFETY: valid path.
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    if dir.is_null() {
        return Err(errno());
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: dir is an open DIR*.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
        let (name, ty) = unsafe {
            let e = &*ent;
            (
                std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                e.d_type,
            )
        };
        out.push((name, ty));
    }
    // SAFETY: dir is open and closed once.
    unsafe { libc::closedir(dir) };
    out.sort();
    Ok(out)
}

fn s_readdir(c: &mut Ctx) {
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.sys("readdir empty", readdir_raw(&c.p("d")));
    c.write("write d/a", "d/a", b"a");
    c.promoted("d/a");
    c.io("mkdir d/b", fs::create_dir(c.p("d/b")));
    c.io("symlink d/c", std::os::unix::fs::symlink("a", c.p("d/c")));
    let fifo = c.c("d/e");
    // SAFETY: valid path.
    c.sys(
        "mkfifo d/e",
        check(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }),
    );
    c.io("hard link d/h", fs::hard_link(c.p("d/a"), c.p("d/h")));
    c.sys("readdir d", readdir_raw(&c.p("d")));
    // std's iterator (no . and ..), with file types.
    let r = fs::read_dir(c.p("d")).and_then(|it| {
        let mut v: Vec<(String, String)> = Vec::new();
        for e in it {
            let e = e?;
            v.push((
                e.file_name().to_string_lossy().into_owned(),
                format!("{:?}", e.file_type()?),
            ));
        }
        v.sort();
        Ok(v)
    });
    c.io("read_dir d", r);
    // Listing a directory leaves its copies in place.
    c.served_from_copy("read d/a after listing", |c| c.read("read d/a", "d/a"));
    c.io("remove d/a", fs::remove_file(c.p("d/a")));
    c.no_stale_copy("d/a");
    c.sys("readdir d after unlink", readdir_raw(&c.p("d")));
    c.sys("opendir file", readdir_raw(&c.p("d/h")));
    c.sys("opendir missing", readdir_raw(&c.p("nope")));
    // Directory link counts.
    c.stat("lstat d", "d");
    // Entries appear in the parent: readdir of the script root.
    c.sys("readdir root", readdir_raw(&c.root.clone()));
}

fn s_readdir_big(c: &mut Ctx) {
    c.io("mkdir big", fs::create_dir(c.p("big")));
    let mut made = 0;
    for i in 0..2000 {
        // Varying name lengths so entries straddle readdir buffer boundaries.
        let name = format!("big/f{i:04}{}", "x".repeat(i % 37));
        if File::create(c.p(&name)).is_ok() {
            made += 1;
        }
    }
    c.note("created", made);
    // One of them gets bytes, to be promoted: a read of an empty file never reaches the
    // daemon.
    c.write("write big/f0000", "big/f0000", b"first");
    c.promoted("big/f0000");
    match readdir_raw(&c.p("big")) {
        Ok(v) => {
            let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
            let uniq: std::collections::BTreeSet<&str> = names.iter().copied().collect();
            c.note("entries", v.len());
            c.note("unique", uniq.len());
            c.note(
                "digest",
                format!("{:016x}", digest(names.join("/").as_bytes())),
            );
            c.note(
                "all regular",
                v.iter()
                    .filter(|(n, _)| n != "." && n != "..")
                    .all(|(_, t)| *t == libc::DT_REG),
            );
        }
        Err(e) => c.sys::<()>("readdir big", Err(e)).unwrap_or(()),
    }
    c.served_from_copy("read big/f0000 after listing", |c| {
        c.read("read big/f0000", "big/f0000")
    });
    // Remove every other entry and list again.
    for i in (0..2000).step_by(2) {
        let name = format!("big/f{i:04}{}", "x".repeat(i % 37));
        let _ = fs::remove_file(c.p(&name));
    }
    c.no_stale_copy("big/f0000");
    match readdir_raw(&c.p("big")) {
        Ok(v) => {
            c.note("entries after removing half", v.len());
            let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
            c.note(
                "digest",
                format!("{:016x}", digest(names.join("/").as_bytes())),
            );
        }
        Err(e) => c.sys::<()>("readdir big", Err(e)).unwrap_or(()),
    }
}

fn s_io(c: &mut Ctx) {
    let f = c.p("f");
    let r = (|| -> io::Result<()> {
        let mut h = OpenOptions::new().write(true).create_new(true).open(&f)?;
        h.write_all(b"hello world")?;
        h.flush()?;
        h.sync_data()?;
        h.sync_all()?;
        Ok(())
    })();
    c.io("create+write+fsync", r);
    c.read("read back", "f");
    c.promoted("f");
    // Seek, overwrite, seek back, read.
    let r = (|| -> io::Result<String> {
        let mut h = OpenOptions::new().read(true).write(true).open(&f)?;
        h.seek(SeekFrom::Start(6))?;
        h.write_all(b"WORLD")?;
        let pos = h.stream_position()?;
        h.seek(SeekFrom::Start(0))?;
        let mut s = String::new();
        h.read_to_string(&mut s)?;
        Ok(format!("pos {pos} read {s:?}"))
    })();
    c.io("seek+write+read on one fd", r);
    c.no_stale_copy("f");
    // Reads past EOF, at EOF, a hole in the middle.
    if let Some(fd) = c.open("open rw", "f", libc::O_RDWR, 0) {
        c.sys(
            "pread past EOF",
            pread_all(&fd, 10, 100).map(|b| show_bytes(&b)),
        );
        c.sys("pwrite at 20", pwrite_all(&fd, b"tail", 20));
        c.sys("pread all", pread_all(&fd, 100, 0).map(|b| show_bytes(&b)));
        c.sys(
            "pread negative offset",
            pread_all(&fd, 1, -1).map(|b| show_bytes(&b)),
        );
        // SAFETY: fd is open.
        c.sys("fsync", check(unsafe { libc::fsync(fd.as_raw_fd()) }));
        // SAFETY: fd is open.
        c.sys(
            "fdatasync",
            check(unsafe { libc::fdatasync(fd.as_raw_fd()) }),
        );
        // SAFETY: fd is open.
        c.sys(
            "lseek END",
            check_size(unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_END) } as isize),
        );
    }
    // O_APPEND: every write goes to the end whatever the offset.
    let r = (|| -> io::Result<(u64, String)> {
        let mut h = OpenOptions::new().append(true).open(&f)?;
        h.seek(SeekFrom::Start(0))?;
        h.write_all(b"APP")?;
        let pos = h.stream_position()?;
        Ok((pos, show_bytes(&fs::read(&f)?)))
    })();
    c.io("O_APPEND write", r);
    if let Some(fd) = c.open(
        "open O_APPEND|O_RDWR",
        "f",
        libc::O_RDWR | libc::O_APPEND,
        0,
    ) {
        c.sys("pwrite(…, 0) with O_APPEND", pwrite_all(&fd, b"P", 0));
        c.read("read", "f");
    }
    c.no_stale_copy("f");
    // Wrong-mode descriptors; the read-only one served from the copy.
    c.promoted("f");
    if let Some(fd) = c.served_from_copy("open O_RDONLY", |c| {
        c.open("open O_RDONLY", "f", libc::O_RDONLY, 0)
    }) {
        c.sys("write on O_RDONLY", pwrite_all(&fd, b"x", 0));
    }
    if let Some(fd) = c.open("open O_WRONLY", "f", libc::O_WRONLY, 0) {
        c.sys(
            "read on O_WRONLY",
            pread_all(&fd, 1, 0).map(|b| show_bytes(&b)),
        );
    }
    // A big write and read back, crossing many pages and a partial last page.
    let data = pattern((3 << 20) + 123, 7);
    c.io("write 3 MiB", fs::write(c.p("big"), &data));
    c.io(
        "read 3 MiB",
        fs::read(c.p("big")).map(|b| (b.len(), b == data)),
    );
    c.promoted("big");
    // Unaligned overwrite in the middle, read through a second descriptor that was open
    // first, on the copy: it sees the new bytes as on a plain directory.
    let r = c.served_from_copy("open big ro", |c| {
        c.open("open big ro", "big", libc::O_RDONLY, 0)
    });
    let w = c.open("open big rw", "big", libc::O_RDWR, 0);
    if let (Some(w), Some(r)) = (w, r) {
        c.sys(
            "pwrite 5000 @ 100001",
            pwrite_all(&w, &[0xAB; 5000], 100_001),
        );
        c.sys(
            "pread via other fd",
            pread_all(&r, 5002, 100_000).map(|b| {
                (
                    part_eq(&b, 0..1, &data[100_000..100_001]),
                    part_eq(&b, 1..5001, &[0xAB; 5000]),
                    part_eq(&b, 5001..5002, &data[105_001..105_002]),
                )
            }),
        );
    }
    c.no_stale_copy("big");
    // Two descriptors write, both closed: contents are the last writes.
    if let (Some(a), Some(b)) = (
        c.open("open f2 a", "f2", libc::O_RDWR | libc::O_CREAT, 0o644),
        c.open("open f2 b", "f2", libc::O_RDWR, 0),
    ) {
        c.sys("write a", pwrite_all(&a, b"aaaa", 0));
        c.sys("write b", pwrite_all(&b, b"bb", 1));
        drop(a);
        drop(b);
        c.read("read f2", "f2");
    }
    // dup'd descriptors: each close is a flush.
    if let Some(fd) = c.open("open f2", "f2", libc::O_RDWR, 0) {
        let d = fd.try_clone();
        c.io(
            "dup",
            d.as_ref()
                .map(|_| ())
                .map_err(|e| io::Error::new(e.kind(), e.to_string())),
        );
        drop(d);
        c.sys("write after closing dup", pwrite_all(&fd, b"Z", 0));
    }
    c.read("read f2", "f2");
    c.promoted("f2");
    c.served_from_copy("read f2 again", |c| c.read("read f2 again", "f2"));
}

/// A shared mapping of the first `len` bytes of `fd`, or the errno.
fn mmap_shared(fd: &OwnedFd, len: usize, prot: i32) -> Result<*mut libc::c_void, i32> {
    // SAFETY: mapping an open fd; MAP_FAILED is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p)
    }
}

fn s_mmap(c: &mut Ctx) {
    let data = pattern(20_000, 3);
    c.io("write f", fs::write(c.p("f"), &data));
    c.promoted("f");
    // A read-only shared mapping of the copy, its descriptor kept open while another one
    // writes through a mapping of its own.
    let ro = c.served_from_copy("open f ro", |c| c.open("open f ro", "f", libc::O_RDONLY, 0));
    if let Some(ro) = &ro {
        let len = data.len();
        match mmap_shared(ro, len, libc::PROT_READ) {
            Err(e) => c.note("mmap ro", format!("ERR {}", crate::common::errno_name(e))),
            Ok(p) => {
                // SAFETY: p maps len readable bytes until munmap.
                let s = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
                c.note("ro mapped bytes equal", s == &data[..]);
                // SAFETY: p/len as mapped; unmapped once.
                unsafe { libc::munmap(p, len) };
            }
        }
    }
    if let Some(fd) = c.open("open f rw", "f", libc::O_RDWR, 0) {
        let len = data.len();
        let p = match mmap_shared(&fd, len, libc::PROT_READ | libc::PROT_WRITE) {
            Ok(p) => p,
            Err(e) => {
                c.note("mmap", format!("ERR {}", crate::common::errno_name(e)));
                return;
            }
        };
        c.note("mmap", "ok");
        // SAFETY: p maps len readable and writable bytes until munmap.
        let s = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
        c.note("mapped bytes equal", s == &data[..]);
        s[10..15].copy_from_slice(b"MMAP!");
        // SAFETY: p/len as mapped.
        c.sys(
            "msync",
            check(unsafe { libc::msync(p, len, libc::MS_SYNC) }),
        );
        // SAFETY: p/len as mapped; unmapped once.
        unsafe { libc::munmap(p, len) };
        c.sys(
            "pread after msync",
            pread_all(&fd, 5, 10).map(|b| show_bytes(&b)),
        );
        if let Some(ro) = &ro {
            c.sys(
                "pread ro fd after msync",
                pread_all(ro, 5, 10).map(|b| show_bytes(&b)),
            );
        }
    }
    drop(ro);
    c.no_stale_copy("f");
    c.io(
        "read whole",
        fs::read(c.p("f")).map(|b| (b.len(), part_eq(&b, 10..15, b"MMAP!"))),
    );
}

fn s_create(c: &mut Ctx) {
    let excl = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    drop(c.open("create O_EXCL 0640", "f", excl, 0o640));
    c.stat("lstat f", "f");
    drop(c.open("create O_EXCL again", "f", excl, 0o640));
    // Bytes to promote (an empty file's reads never reach the daemon), then an O_CREAT
    // open of it for writing.
    c.write("write f", "f", b"data");
    c.promoted("f");
    c.served_from_copy("read f", |c| c.read("read f", "f"));
    drop(c.open(
        "O_CREAT without O_EXCL on existing",
        "f",
        libc::O_WRONLY | libc::O_CREAT,
        0o600,
    ));
    // An open for writing drops the copy: none may outlive it.
    c.served_from_source("read f after O_CREAT", |c| c.read("read f", "f"));
    c.stat("lstat f (mode unchanged)", "f");
    drop(c.open("create 0777 (umask applies)", "g", excl, 0o777));
    c.stat("lstat g", "g");
    drop(c.open("create 04755", "suid", excl, 0o4755));
    c.stat("lstat suid", "suid");
    drop(c.open(
        "create O_RDONLY|O_CREAT",
        "ro",
        libc::O_RDONLY | libc::O_CREAT,
        0o444,
    ));
    c.stat("lstat ro", "ro");
    drop(c.open("create in missing dir", "nodir/f", excl, 0o644));
    drop(c.open("create under a file", "f/x", excl, 0o644));
    // O_CREAT|O_EXCL on a dangling symlink does not follow it.
    c.io(
        "symlink dangling",
        std::os::unix::fs::symlink("target", c.p("dl")),
    );
    drop(c.open("O_EXCL on dangling symlink", "dl", excl, 0o644));
    drop(c.open(
        "O_CREAT via dangling symlink",
        "dl",
        libc::O_WRONLY | libc::O_CREAT,
        0o644,
    ));
    c.stat("lstat target", "target");
    // mknod: fifo, regular, socket, char device.
    for (name, mode, dev) in [
        ("fifo", libc::S_IFIFO | 0o644, 0),
        ("reg", libc::S_IFREG | 0o600, 0),
        ("sock", libc::S_IFSOCK | 0o755, 0),
        ("null", libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
    ] {
        let p = c.c(name);
        // SAFETY: valid path.
        c.sys(
            &format!("mknod {name}"),
            check(unsafe { libc::mknod(p.as_ptr(), mode, dev) }),
        );
        c.stat(&format!("lstat {name}"), name);
    }
    let p = c.c("fifo");
    // SAFETY: valid path.
    c.sys(
        "mkfifo existing",
        check(unsafe { libc::mkfifo(p.as_ptr(), 0o644) }),
    );
    // A fifo on the mount is a real fifo: open both ends (non-blocking reader first).
    if let Some(r) = c.open(
        "open fifo reader",
        "fifo",
        libc::O_RDONLY | libc::O_NONBLOCK,
        0,
    ) && let Some(w) = c.open(
        "open fifo writer",
        "fifo",
        libc::O_WRONLY | libc::O_NONBLOCK,
        0,
    ) {
        {
            // SAFETY: w is open.
            c.sys(
                "write fifo",
                check_size(unsafe { libc::write(w.as_raw_fd(), b"ping".as_ptr().cast(), 4) }),
            );
            let mut buf = [0u8; 8];
            // SAFETY: r is open; buf is writable.
            c.sys(
                "read fifo",
                check_size(unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), 8) })
                    .map(|n| show_bytes(&buf[..n])),
            );
        }
    }
    // mkdir
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.stat("lstat d", "d");
    c.io("mkdir d again", fs::create_dir(c.p("d")));
    c.io("mkdir under file", fs::create_dir(c.p("f/x")));
    c.io("mkdir in missing", fs::create_dir(c.p("missing/x")));
    let p = c.c("d700");
    // SAFETY: valid path.
    c.sys(
        "mkdir 0700",
        check(unsafe { libc::mkdir(p.as_ptr(), 0o700) }),
    );
    c.stat("lstat d700", "d700");
    let p = c.c("dsticky");
    // SAFETY: valid path.
    c.sys(
        "mkdir 01777",
        check(unsafe { libc::mkdir(p.as_ptr(), 0o1777) }),
    );
    c.stat("lstat dsticky", "dsticky");
    c.io("mkdir nested", fs::create_dir_all(c.p("a/b/c/d/e")));
    c.stat("lstat a (nlink)", "a");
    // setgid directory: new entries inherit its group, subdirectories its setgid bit.
    c.io("mkdir sg", fs::create_dir(c.p("sg")));
    c.io(
        "chown sg :2000",
        std::os::unix::fs::chown(c.p("sg"), None, Some(2000)),
    );
    c.io(
        "chmod sg 2775",
        fs::set_permissions(c.p("sg"), fs::Permissions::from_mode(0o2775)),
    );
    c.write("create sg/f", "sg/f", b"");
    c.stat("lstat sg/f", "sg/f");
    c.io("mkdir sg/d", fs::create_dir(c.p("sg/d")));
    c.stat("lstat sg/d", "sg/d");
}

fn s_umask_zero(c: &mut Ctx) {
    // The umask is per process, and the test threads share one; set it in a child.
    let f = c.c("f");
    let d = c.c("d");
    let n = c.c("n");
    let code = in_child(None, move || {
        // SAFETY: async-signal-safe calls on prepared paths.
        unsafe {
            libc::umask(0);
            let fd = libc::open(
                f.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
                0o666,
            );
            if fd < 0 {
                return errno();
            }
            libc::close(fd);
            if libc::mkdir(d.as_ptr(), 0o777) != 0 {
                return errno();
            }
            if libc::mknod(n.as_ptr(), libc::S_IFIFO | 0o666, 0) != 0 {
                return errno();
            }
        }
        0
    });
    c.out.code("create/mkdir/mknod under umask 0", code);
    c.stat("lstat f", "f");
    // The file made under umask 0, served from its copy.
    c.write("write f", "f", b"umask");
    c.promoted("f");
    c.served_from_copy("read f", |c| c.read("read f", "f"));
    c.stat("lstat d", "d");
    c.stat("lstat n", "n");
    let g = c.c("g");
    let code = in_child(None, move || {
        // SAFETY: as above.
        unsafe {
            libc::umask(0o077);
            let fd = libc::open(
                g.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
                0o666,
            );
            if fd < 0 {
                return errno();
            }
            libc::close(fd);
        }
        0
    });
    c.out.code("create under umask 077", code);
    c.stat("lstat g", "g");
}

fn s_unlink_rmdir(c: &mut Ctx) {
    c.write("write f", "f", b"x");
    c.promoted("f");
    c.io("unlink f", fs::remove_file(c.p("f")));
    c.no_stale_copy("f");
    c.stat("lstat f", "f");
    c.io("unlink f again", fs::remove_file(c.p("f")));
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.write("write d/x", "d/x", b"x");
    c.promoted("d/x");
    c.io("unlink dir", fs::remove_file(c.p("d")));
    c.io("rmdir non-empty", fs::remove_dir(c.p("d")));
    c.io("rmdir file", fs::remove_dir(c.p("d/x")));
    c.io("unlink d/x", fs::remove_file(c.p("d/x")));
    c.no_stale_copy("d/x");
    let dot = c.c("d/.");
    // SAFETY: valid path.
    c.sys("rmdir d/.", check(unsafe { libc::rmdir(dot.as_ptr()) }));
    c.io("rmdir d", fs::remove_dir(c.p("d")));
    c.stat("lstat d", "d");
    c.io("rmdir missing", fs::remove_dir(c.p("d")));
    c.io("unlink under file", fs::remove_file(c.p("d/x/y")));
    // Recreate with the same name: a fresh inode, old attributes gone.
    c.write("write f", "f", b"first");
    c.promoted("f");
    c.io(
        "chmod f 600",
        fs::set_permissions(c.p("f"), fs::Permissions::from_mode(0o600)),
    );
    c.served_from_copy("read f after chmod", |c| c.read("read f", "f"));
    c.io("unlink f", fs::remove_file(c.p("f")));
    c.no_stale_copy("f");
    c.write("write f again", "f", b"second!");
    c.stat("lstat new f", "f");
    // Not the old file's copy: a miss, then the new file's own copy.
    c.served_from_source("read new f", |c| c.read("read new f", "f"));
    c.promoted("f");
    c.served_from_copy("read new f again", |c| c.read("read new f again", "f"));
    c.io(
        "mkdir f2 then file",
        fs::create_dir(c.p("f2"))
            .and_then(|_| fs::remove_dir(c.p("f2")))
            .and_then(|_| fs::write(c.p("f2"), b"now a file")),
    );
    c.stat("lstat f2", "f2");
    c.io(
        "remove_dir_all tree",
        fs::create_dir_all(c.p("t/a/b"))
            .and_then(|_| fs::write(c.p("t/a/b/f"), b"x"))
            .and_then(|_| fs::remove_dir_all(c.p("t"))),
    );
    c.stat("lstat t", "t");
}

fn s_unlinked_open(c: &mut Ctx) {
    c.write("write f", "f", b"contents");
    c.promoted("f");
    // A reader on the copy, open before the writer: it follows every change, unlinked.
    let ro = c.served_from_copy("open f ro", |c| c.open("open f ro", "f", libc::O_RDONLY, 0));
    let ro_pread = |c: &mut Ctx, step: &str| {
        if let Some(ro) = &ro {
            c.sys(step, pread_all(ro, 100, 0).map(|b| show_bytes(&b)));
        }
    };
    if let Some(fd) = c.open("open f rw", "f", libc::O_RDWR, 0) {
        c.io("unlink f", fs::remove_file(c.p("f")));
        c.no_stale_copy("f");
        c.stat("lstat f", "f");
        ro_pread(c, "pread ro fd, unlinked");
        c.note(
            "fstat nlink",
            format!("{:?}", fstat(&fd).map(|s| (s.st_nlink, s.st_size))),
        );
        c.sys(
            "pread unlinked",
            pread_all(&fd, 100, 0).map(|b| show_bytes(&b)),
        );
        c.sys("pwrite unlinked", pwrite_all(&fd, b"MORE", 8));
        c.sys(
            "pread unlinked",
            pread_all(&fd, 100, 0).map(|b| show_bytes(&b)),
        );
        ro_pread(c, "pread ro fd after pwrite");
        // SAFETY: fd is open.
        c.sys(
            "ftruncate unlinked",
            check(unsafe { libc::ftruncate(fd.as_raw_fd(), 3) }),
        );
        c.note("fstat size", format!("{:?}", fstat(&fd).map(|s| s.st_size)));
        ro_pread(c, "pread ro fd after ftruncate");
        // SAFETY: fd is open.
        c.sys(
            "fchmod unlinked",
            check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) }),
        );
        c.note(
            "fstat mode",
            format!("{:?}", fstat(&fd).map(|s| s.st_mode & 0o7777)),
        );
        // A new file under the old name is a different file.
        c.write("create f again", "f", b"new");
        c.sys(
            "pread old fd",
            pread_all(&fd, 100, 0).map(|b| show_bytes(&b)),
        );
        c.read("read new f", "f");
    }
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), i32> {
    let a = cpath(from);
    let b = cpath(to);
    // SAFETY: valid paths; the raw syscall avoids depending on the libc wrapper.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == -1 { Err(errno()) } else { Ok(()) }
}

fn s_rename(c: &mut Ctx) {
    // A copy follows its file through renames.
    c.write("write a", "a", b"AAA");
    c.promoted("a");
    c.io("rename a -> b", fs::rename(c.p("a"), c.p("b")));
    c.no_stale_copy("a");
    c.stat("lstat a", "a");
    c.served_from_copy("read b", |c| c.read("read b", "b"));
    c.write("write c", "c", b"CCCCCC");
    c.promoted("c");
    c.io("rename b over c", fs::rename(c.p("b"), c.p("c")));
    c.no_stale_copy("c");
    c.served_from_copy("read c", |c| c.read("read c", "c"));
    c.stat("lstat b", "b");
    c.io("rename missing", fs::rename(c.p("missing"), c.p("x")));
    c.io("mkdir d1", fs::create_dir(c.p("d1")));
    c.io("mkdir d2", fs::create_dir(c.p("d2")));
    c.write("write d2/x", "d2/x", b"x");
    c.promoted("d2/x");
    c.io(
        "rename dir over non-empty dir",
        fs::rename(c.p("d1"), c.p("d2")),
    );
    c.io("rename dir over file", fs::rename(c.p("d1"), c.p("c")));
    c.io("rename file over dir", fs::rename(c.p("c"), c.p("d1")));
    c.io(
        "rename dir into itself",
        fs::rename(c.p("d1"), c.p("d1/sub")),
    );
    c.io("mkdir d3", fs::create_dir(c.p("d3")));
    c.io(
        "rename dir over empty dir",
        fs::rename(c.p("d1"), c.p("d3")),
    );
    c.stat("lstat d1", "d1");
    c.stat("lstat d3", "d3");
    c.io("rename across dirs", fs::rename(c.p("c"), c.p("d3/c")));
    c.served_from_copy("read d3/c", |c| c.read("read d3/c", "d3/c"));
    c.io(
        "rename dir with contents",
        fs::rename(c.p("d2"), c.p("d3/d2")),
    );
    c.no_stale_copy("d2/x");
    c.served_from_copy("read d3/d2/x", |c| c.read("read d3/d2/x", "d3/d2/x"));
    c.stat("lstat d3 (nlink)", "d3");
    c.io("rename to same name", fs::rename(c.p("d3/c"), c.p("d3/c")));
    c.io("hard link pair", fs::hard_link(c.p("d3/c"), c.p("d3/c2")));
    c.io(
        "rename onto own hard link",
        fs::rename(c.p("d3/c"), c.p("d3/c2")),
    );
    c.stat("lstat d3/c", "d3/c");
    c.stat("lstat d3/c2", "d3/c2");
    c.io(
        "rename into missing dir",
        fs::rename(c.p("d3/c"), c.p("nodir/c")),
    );
    // Rename a symlink: the link moves, the target stays.
    c.io(
        "symlink s -> d3/c",
        std::os::unix::fs::symlink("d3/c", c.p("s")),
    );
    c.io("rename symlink", fs::rename(c.p("s"), c.p("s2")));
    c.io("readlink s2", fs::read_link(c.p("s2")));
    c.read("read via s2", "s2");
    // A renamed file's new name works for every operation.
    c.io(
        "chmod after rename",
        fs::set_permissions(c.p("d3/d2/x"), fs::Permissions::from_mode(0o600)),
    );
    c.stat("lstat d3/d2/x", "d3/d2/x");
    c.served_from_copy("read d3/d2/x after chmod", |c| {
        c.read("read d3/d2/x after chmod", "d3/d2/x")
    });
    c.sys("readdir d3", readdir_raw(&c.p("d3")));
}

fn s_rename2(c: &mut Ctx) {
    c.write("write x", "x", b"xxx");
    c.write("write y", "y", b"yy");
    c.promoted("x");
    c.promoted("y");
    c.sys(
        "NOREPLACE onto existing",
        renameat2(&c.p("x"), &c.p("y"), libc::RENAME_NOREPLACE),
    );
    c.served_from_copy("read x, y after a failed rename", |c| {
        c.read("read x", "x");
        c.read("read y", "y");
    });
    c.sys(
        "NOREPLACE onto new",
        renameat2(&c.p("x"), &c.p("z"), libc::RENAME_NOREPLACE),
    );
    c.no_stale_copy("x");
    c.stat("lstat x", "x");
    c.served_from_copy("read z", |c| c.read("read z", "z"));
    c.sys(
        "EXCHANGE z <-> y",
        renameat2(&c.p("z"), &c.p("y"), libc::RENAME_EXCHANGE),
    );
    c.no_stale_copy("z");
    c.no_stale_copy("y");
    c.read("read z", "z");
    c.read("read y", "y");
    c.sys(
        "EXCHANGE with missing",
        renameat2(&c.p("z"), &c.p("missing"), libc::RENAME_EXCHANGE),
    );
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.write("write d/in", "d/in", b"inside");
    c.promoted("d/in");
    c.sys(
        "EXCHANGE file <-> dir",
        renameat2(&c.p("z"), &c.p("d"), libc::RENAME_EXCHANGE),
    );
    for rel in ["z", "d", "z/in", "d/in"] {
        c.no_stale_copy(rel);
    }
    c.stat("lstat z", "z");
    c.stat("lstat d", "d");
    c.read("read z/in", "z/in");
    c.read("read d", "d");
    c.sys(
        "NOREPLACE|EXCHANGE",
        renameat2(
            &c.p("z"),
            &c.p("d"),
            libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE,
        ),
    );
    // Lookups after the exchange see the new objects (no stale name cache).
    c.write("write z/new", "z/new", b"n");
    c.sys("readdir z", readdir_raw(&c.p("z")));
}

fn s_rename_open(c: &mut Ctx) {
    c.io("mkdir d1", fs::create_dir(c.p("d1")));
    c.write("write d1/f", "d1/f", b"12345");
    c.promoted("d1/f");
    // A reader on the copy, open before the writer, follows the file's writes through
    // both renames.
    let ro = c.served_from_copy("open d1/f ro", |c| {
        c.open("open d1/f ro", "d1/f", libc::O_RDONLY, 0)
    });
    let ro_pread = |c: &mut Ctx, step: &str| {
        if let Some(ro) = &ro {
            c.sys(step, pread_all(ro, 100, 0).map(|b| show_bytes(&b)));
        }
    };
    if let Some(fd) = c.open("open d1/f", "d1/f", libc::O_RDWR, 0) {
        c.io("rename d1 -> d2", fs::rename(c.p("d1"), c.p("d2")));
        c.sys("pwrite through old fd", pwrite_all(&fd, b"AB", 5));
        // SAFETY: fd is open.
        c.sys("fsync", check(unsafe { libc::fsync(fd.as_raw_fd()) }));
        ro_pread(c, "pread ro fd");
        c.read("read d2/f", "d2/f");
        c.note("fstat size", format!("{:?}", fstat(&fd).map(|s| s.st_size)));
        c.io("rename d2/f -> top", fs::rename(c.p("d2/f"), c.p("top")));
        c.sys("pwrite again", pwrite_all(&fd, b"C", 7));
        drop(fd);
        ro_pread(c, "pread ro fd again");
        c.read("read top", "top");
        c.stat("lstat top", "top");
    }
    // A file renamed over while open keeps its contents for the open descriptor.
    c.write("write a", "a", b"old a");
    c.write("write b", "b", b"new b");
    c.promoted("a");
    c.promoted("b");
    if let Some(fd) = c.served_from_copy("open a", |c| c.open("open a", "a", libc::O_RDONLY, 0)) {
        c.io("rename b over a", fs::rename(c.p("b"), c.p("a")));
        c.no_stale_copy("a");
        c.no_stale_copy("b");
        c.sys(
            "pread old a",
            pread_all(&fd, 100, 0).map(|b| show_bytes(&b)),
        );
        // The name now holds b, and b's copy moved with it.
        c.served_from_copy("read a", |c| c.read("read a", "a"));
    }
}

fn s_symlink(c: &mut Ctx) {
    c.write("write f", "f", b"target data");
    c.promoted("f");
    c.io("symlink l -> f", std::os::unix::fs::symlink("f", c.p("l")));
    c.io("readlink l", fs::read_link(c.p("l")));
    c.stat("lstat l", "l");
    c.io(
        "stat l (follows)",
        fs::metadata(c.p("l")).map(|m| crate::common::describe_meta(&m)),
    );
    c.served_from_copy("read via l", |c| c.read("read via l", "l"));
    c.io(
        "symlink existing",
        std::os::unix::fs::symlink("f", c.p("l")),
    );
    c.io("readlink regular", fs::read_link(c.p("f")));
    c.io("readlink missing", fs::read_link(c.p("missing")));
    c.io(
        "symlink dangling",
        std::os::unix::fs::symlink("nowhere/x", c.p("dl")),
    );
    c.stat("lstat dl", "dl");
    c.io("stat dl", fs::metadata(c.p("dl")).map(|_| ()));
    c.io(
        "symlink absolute",
        std::os::unix::fs::symlink("/etc/hostname", c.p("abs")),
    );
    c.io("readlink abs", fs::read_link(c.p("abs")));
    let long = "a/".repeat(2047) + "z"; // 4095 bytes: the longest a symlink may hold
    c.io(
        "symlink 4095-byte target",
        std::os::unix::fs::symlink(&long, c.p("long")),
    );
    c.io(
        "readlink long",
        fs::read_link(c.p("long")).map(|p| {
            (
                p.as_os_str().len(),
                p.as_os_str().as_bytes() == long.as_bytes(),
            )
        }),
    );
    let too_long = "b".repeat(4096);
    c.io(
        "symlink 4096-byte target",
        std::os::unix::fs::symlink(&too_long, c.p("toolong")),
    );
    c.io(
        "symlink weird bytes",
        std::os::unix::fs::symlink("sp ace\n\\t", c.p("weird")),
    );
    c.io("readlink weird", fs::read_link(c.p("weird")));
    // Through a symlinked directory.
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.write("write d/x", "d/x", b"in d");
    c.promoted("d/x");
    c.io(
        "symlink ld -> d",
        std::os::unix::fs::symlink("d", c.p("ld")),
    );
    c.served_from_copy("read ld/x", |c| c.read("read ld/x", "ld/x"));
    c.write("write ld/y", "ld/y", b"via link");
    c.read("read d/y", "d/y");
    c.io(
        "readdir via ld",
        fs::read_dir(c.p("ld")).map(|it| {
            let mut v: Vec<String> = it
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }),
    );
    // O_NOFOLLOW on a link; loops.
    drop(c.open(
        "open l O_NOFOLLOW",
        "l",
        libc::O_RDONLY | libc::O_NOFOLLOW,
        0,
    ));
    drop(c.open(
        "open l O_PATH|O_NOFOLLOW",
        "l",
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    ));
    c.io(
        "symlink loop1 -> loop2",
        std::os::unix::fs::symlink("loop2", c.p("loop1")),
    );
    c.io(
        "symlink loop2 -> loop1",
        std::os::unix::fs::symlink("loop1", c.p("loop2")),
    );
    c.read("read loop", "loop1");
    // Unlinking the link leaves the target.
    c.io("unlink l", fs::remove_file(c.p("l")));
    c.served_from_copy("read f", |c| c.read("read f", "f"));
    // Removing a symlink to a dir with rmdir fails.
    c.io("rmdir symlink", fs::remove_dir(c.p("ld")));
}

fn s_link(c: &mut Ctx) {
    c.write("write f", "f", b"shared");
    c.promoted("f");
    c.served_from_copy("read f", |c| c.read("read f before link", "f"));
    c.io("link f -> h", fs::hard_link(c.p("f"), c.p("h")));
    c.stat("lstat f", "f");
    c.stat("lstat h", "h");
    let ino = |p: PathBuf| lstat_raw(&p).map(|s| s.st_ino);
    c.note(
        "same st_ino",
        ino(c.p("f")) == ino(c.p("h")) && ino(c.p("f")).is_ok(),
    );
    // A write through the other name: the copy made under f is not served again. (It
    // is not dropped either: copies are kept under the name the daemon last saw the
    // file under, here h. The next open that finds it under f drops it.)
    c.io("write via h", fs::write(c.p("h"), b"changed via h"));
    c.no_stale_copy("h");
    c.served_from_source("read f after a write via h", |c| c.read("read f", "f"));
    c.io(
        "chmod via f",
        fs::set_permissions(c.p("f"), fs::Permissions::from_mode(0o600)),
    );
    c.stat("lstat h after chmod f", "h");
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.io("link into subdir", fs::hard_link(c.p("f"), c.p("d/h2")));
    c.stat("lstat f (nlink 3)", "f");
    c.note("same st_ino in subdir", ino(c.p("f")) == ino(c.p("d/h2")));
    c.io("link dir", fs::hard_link(c.p("d"), c.p("dl")));
    c.io("link onto existing", fs::hard_link(c.p("f"), c.p("h")));
    c.io("link missing", fs::hard_link(c.p("missing"), c.p("m2")));
    c.io("unlink f", fs::remove_file(c.p("f")));
    c.no_stale_copy("f");
    c.stat("lstat h (nlink 2)", "h");
    c.promoted("h");
    c.served_from_copy("read h", |c| c.read("read h", "h"));
    c.io("unlink d/h2", fs::remove_file(c.p("d/h2")));
    c.stat("lstat h (nlink 1)", "h");
    // A hard link to a symlink is a link to the symlink itself.
    c.io("symlink s", std::os::unix::fs::symlink("h", c.p("s")));
    c.io("link s -> s2", fs::hard_link(c.p("s"), c.p("s2")));
    c.stat("lstat s2", "s2");
    c.io("readlink s2", fs::read_link(c.p("s2")));
    // Both names of an open file.
    if let Some(fd) = c.open("open h", "h", libc::O_RDWR, 0) {
        c.io(
            "link h -> h3 while open",
            fs::hard_link(c.p("h"), c.p("h3")),
        );
        c.note(
            "fstat nlink",
            format!("{:?}", fstat(&fd).map(|s| s.st_nlink)),
        );
        c.note(
            "fd ino == h3 ino",
            fstat(&fd).map(|s| s.st_ino) == ino(c.p("h3")),
        );
    }
}

fn s_statfs_access(c: &mut Ctx) {
    let p = cpath(&c.root);
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    match check(unsafe { libc::statvfs(p.as_ptr(), &mut sv) }) {
        Ok(_) => {
            c.note("statvfs bsize", sv.f_bsize);
            c.note("statvfs namemax", sv.f_namemax);
            c.note("statvfs blocks", sv.f_blocks);
            c.note("statvfs files", sv.f_files);
        }
        Err(e) => c.sys::<()>("statvfs", Err(e)).unwrap_or(()),
    }
    for (name, mode) in [("r", 0o644), ("x", 0o755), ("none", 0o000), ("xo", 0o001)] {
        c.write(&format!("write {name}"), name, b"#!/bin/sh\n");
        c.io(
            &format!("chmod {name}"),
            fs::set_permissions(c.p(name), fs::Permissions::from_mode(mode)),
        );
        let cp = c.c(name);
        for (what, m) in [
            ("F_OK", libc::F_OK),
            ("R_OK", libc::R_OK),
            ("W_OK", libc::W_OK),
            ("X_OK", libc::X_OK),
            ("RWX", libc::R_OK | libc::W_OK | libc::X_OK),
        ] {
            // SAFETY: valid path.
            c.sys(
                &format!("access {name} {what}"),
                check(unsafe { libc::access(cp.as_ptr(), m) }),
            );
            // SAFETY: valid path.
            c.sys(
                &format!("faccessat {name} {what} AT_EACCESS"),
                check(unsafe { libc::faccessat(libc::AT_FDCWD, cp.as_ptr(), m, libc::AT_EACCESS) }),
            );
        }
    }
    c.io("mkdir d", fs::create_dir(c.p("d")));
    let cp = c.c("d");
    // SAFETY: valid path.
    c.sys(
        "access dir X_OK",
        check(unsafe { libc::access(cp.as_ptr(), libc::X_OK) }),
    );
    let cp = c.c("missing");
    // SAFETY: valid path.
    c.sys(
        "access missing",
        check(unsafe { libc::access(cp.as_ptr(), libc::F_OK) }),
    );
    let cp = c.c("r/x");
    // SAFETY: valid path.
    c.sys(
        "access under file",
        check(unsafe { libc::access(cp.as_ptr(), libc::F_OK) }),
    );
    // Executing a file with an x bit works through the mount (no noexec), from its copy.
    c.promoted("x");
    c.io(
        "chmod x 755",
        fs::set_permissions(c.p("x"), fs::Permissions::from_mode(0o755)),
    );
    c.served_from_copy("exec x", |c| {
        let p = c.p("x");
        c.io("exec x", run_retrying_etxtbsy(&p))
    });
}

/// Run an executable; another test thread's fork can briefly hold a writable descriptor
/// of it (until that child execs), so ETXTBSY is retried.
fn run_retrying_etxtbsy(p: &Path) -> io::Result<Option<i32>> {
    let mut tries = 0;
    loop {
        match std::process::Command::new(p).status() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.map(|s| s.code()),
        }
    }
}

fn getxattr(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let cp = cpath(p);
    let cn = CString::new(name).expect("name");
    let mut buf = vec![0u8; size];
    // SAFETY: valid strings; buf has size bytes (NULL when size is 0).
    let n = check_size(unsafe {
        libc::getxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            if size == 0 {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            size,
        )
    })?;
    if size == 0 {
        return Ok(n.to_string().into_bytes());
    }
    buf.truncate(n);
    Ok(buf)
}

fn setxattr(p: &Path, name: &str, val: &[u8], flags: i32, nofollow: bool) -> Result<(), i32> {
    let cp = cpath(p);
    let cn = CString::new(name).expect("name");
    // SAFETY: valid strings and value buffer.
    let r = unsafe {
        if nofollow {
            libc::lsetxattr(
                cp.as_ptr(),
                cn.as_ptr(),
                val.as_ptr().cast(),
                val.len(),
                flags,
            )
        } else {
            libc::setxattr(
                cp.as_ptr(),
                cn.as_ptr(),
                val.as_ptr().cast(),
                val.len(),
                flags,
            )
        }
    };
    check(r).map(|_| ())
}

fn removexattr(p: &Path, name: &str) -> Result<(), i32> {
    let cp = cpath(p);
    let cn = CString::new(name).expect("name");
    // SAFETY: valid strings.
    check(unsafe { libc::removexattr(cp.as_ptr(), cn.as_ptr()) }).map(|_| ())
}

/// The user.* and trusted.* names, sorted (security.* differs with LSMs; ignore it).
fn listxattr(p: &Path) -> Result<Vec<String>, i32> {
    let cp = cpath(p);
    // SAFETY: size query with a NULL buffer.
    let n = check_size(unsafe { libc::listxattr(cp.as_ptr(), std::ptr::null_mut(), 0) })?;
    let mut buf = vec![0u8; n];
    // SAFETY: buf has n bytes.
    let n = check_size(unsafe { libc::listxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), n) })?;
    buf.truncate(n);
    let mut v: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| s.starts_with("user.") || s.starts_with("trusted."))
        .collect();
    v.sort();
    Ok(v)
}

fn s_xattr(c: &mut Ctx) {
    c.write("write f", "f", b"x");
    c.promoted("f");
    let f = c.p("f");
    c.sys("list empty", listxattr(&f));
    c.sys("set user.a", setxattr(&f, "user.a", b"1", 0, false));
    c.sys(
        "get user.a",
        getxattr(&f, "user.a", 100).map(|b| show_bytes(&b)),
    );
    c.sys(
        "get user.a size",
        getxattr(&f, "user.a", 0).map(|b| show_bytes(&b)),
    );
    c.sys(
        "get user.a small buffer",
        getxattr(&f, "user.a", 0)
            .and_then(|_| {
                setxattr(&f, "user.big", &[b'v'; 100], 0, false)?;
                getxattr(&f, "user.big", 10)
            })
            .map(|b| b.len()),
    );
    c.sys(
        "get missing",
        getxattr(&f, "user.missing", 100).map(|b| show_bytes(&b)),
    );
    c.sys("set empty value", setxattr(&f, "user.empty", b"", 0, false));
    c.sys(
        "get empty value",
        getxattr(&f, "user.empty", 100).map(|b| show_bytes(&b)),
    );
    c.sys(
        "set binary value",
        setxattr(&f, "user.bin", &[0, 1, 2, 255, 0], 0, false),
    );
    c.sys("get binary value", getxattr(&f, "user.bin", 100));
    let big = pattern(2000, 9);
    c.sys(
        "set 2000-byte value",
        setxattr(&f, "user.large", &big, 0, false),
    );
    c.sys(
        "get 2000-byte value",
        getxattr(&f, "user.large", 65536).map(|b| b == big),
    );
    c.sys(
        "CREATE existing",
        setxattr(&f, "user.a", b"2", libc::XATTR_CREATE, false),
    );
    c.sys(
        "REPLACE missing",
        setxattr(&f, "user.nope", b"2", libc::XATTR_REPLACE, false),
    );
    c.sys(
        "REPLACE existing",
        setxattr(&f, "user.a", b"22", libc::XATTR_REPLACE, false),
    );
    c.sys(
        "get user.a",
        getxattr(&f, "user.a", 100).map(|b| show_bytes(&b)),
    );
    c.sys("list", listxattr(&f));
    c.sys("remove user.a", removexattr(&f, "user.a"));
    c.sys("remove user.a again", removexattr(&f, "user.a"));
    c.sys(
        "get removed",
        getxattr(&f, "user.a", 100).map(|b| show_bytes(&b)),
    );
    c.sys("list", listxattr(&f));
    c.sys(
        "set trusted.t (root)",
        setxattr(&f, "trusted.t", b"tt", 0, false),
    );
    c.sys(
        "get trusted.t",
        getxattr(&f, "trusted.t", 100).map(|b| show_bytes(&b)),
    );
    c.sys(
        "set bogus namespace",
        setxattr(&f, "bogus.x", b"1", 0, false),
    );
    c.sys(
        "set 256-byte name",
        setxattr(&f, &format!("user.{}", "n".repeat(251)), b"1", 0, false),
    );
    c.sys(
        "get on missing file",
        getxattr(&c.p("missing"), "user.a", 10).map(|b| show_bytes(&b)),
    );
    c.io("mkdir d", fs::create_dir(c.p("d")));
    c.sys(
        "set on dir",
        setxattr(&c.p("d"), "user.d", b"dir", 0, false),
    );
    c.sys(
        "get on dir",
        getxattr(&c.p("d"), "user.d", 100).map(|b| show_bytes(&b)),
    );
    c.io("symlink l", std::os::unix::fs::symlink("f", c.p("l")));
    c.sys(
        "lsetxattr user.* on symlink",
        setxattr(&c.p("l"), "user.l", b"1", 0, true),
    );
    c.sys(
        "setxattr via symlink (follows)",
        setxattr(&c.p("l"), "user.vial", b"1", 0, false),
    );
    c.sys("list f", listxattr(&f));
    // Extended attributes live in SOURCE; changing them leaves the bytes, and the copy.
    c.served_from_copy("read f after xattr changes", |c| c.read("read f", "f"));
    // Attributes survive a rename and are shared by hard links.
    c.io("rename f -> g", fs::rename(&f, c.p("g")));
    c.sys("list g", listxattr(&c.p("g")));
    c.io("link g -> h", fs::hard_link(c.p("g"), c.p("h")));
    c.sys("set via h", setxattr(&c.p("h"), "user.h", b"h", 0, false));
    c.sys(
        "get via g",
        getxattr(&c.p("g"), "user.h", 10).map(|b| show_bytes(&b)),
    );
    // fsetxattr/fgetxattr on an open fd.
    if let Some(fd) = c.open("open g", "g", libc::O_RDONLY, 0) {
        let n = CString::new("user.fd").expect("name");
        // SAFETY: fd open, valid strings.
        c.sys(
            "fsetxattr",
            check(unsafe {
                libc::fsetxattr(fd.as_raw_fd(), n.as_ptr(), b"F".as_ptr().cast(), 1, 0)
            }),
        );
        let mut b = [0u8; 8];
        // SAFETY: fd open; b has 8 bytes.
        c.sys(
            "fgetxattr",
            check_size(unsafe {
                libc::fgetxattr(fd.as_raw_fd(), n.as_ptr(), b.as_mut_ptr().cast(), 8)
            })
            .map(|k| show_bytes(&b[..k])),
        );
    }
}

fn fallocate(fd: &OwnedFd, mode: i32, off: i64, len: i64) -> Result<(), i32> {
    // SAFETY: fd is open.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off, len) }).map(|_| ())
}

fn s_fallocate(c: &mut Ctx) {
    let Some(fd) = c.open(
        "create f",
        "f",
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        0o644,
    ) else {
        return;
    };
    c.sys("fallocate 0..64K", fallocate(&fd, 0, 0, 65536));
    c.note("size", format!("{:?}", fstat(&fd).map(|s| s.st_size)));
    c.sys(
        "fallocate KEEP_SIZE past end",
        fallocate(&fd, libc::FALLOC_FL_KEEP_SIZE, 65536, 65536),
    );
    c.note("size", format!("{:?}", fstat(&fd).map(|s| s.st_size)));
    let data = pattern(65536, 11);
    c.sys("pwrite 64K", pwrite_all(&fd, &data, 0));
    c.sys(
        "PUNCH_HOLE|KEEP_SIZE 4K..12K",
        fallocate(
            &fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            8192,
        ),
    );
    c.note("size", format!("{:?}", fstat(&fd).map(|s| s.st_size)));
    c.sys(
        "read after punch",
        pread_all(&fd, 65536, 0).map(|b| {
            (
                part_eq(&b, 0..4096, &data[..4096]),
                part_eq(&b, 4096..12288, &[0; 8192]),
                part_eq(&b, 12288..65536, &data[12288..]),
            )
        }),
    );
    c.sys(
        "PUNCH_HOLE without KEEP_SIZE",
        fallocate(&fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096),
    );
    c.sys(
        "ZERO_RANGE 20000..30000",
        fallocate(&fd, libc::FALLOC_FL_ZERO_RANGE, 20000, 10000),
    );
    c.sys(
        "read after zero range",
        pread_all(&fd, 65536, 0).map(|b| digest(&b)),
    );
    c.sys("fallocate extend 100000", fallocate(&fd, 0, 90000, 10000));
    c.note("size", format!("{:?}", fstat(&fd).map(|s| s.st_size)));
    c.sys("fallocate bad len", fallocate(&fd, 0, 0, 0));
    c.sys("fallocate negative offset", fallocate(&fd, 0, -1, 10));
    // SAFETY: fd is open.
    c.sys("posix_fallocate", {
        let r = unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, 200_000) };
        if r == 0 { Ok(()) } else { Err(r) }
    });
    c.note("size", format!("{:?}", fstat(&fd).map(|s| s.st_size)));
    // No copy is made while a writer has the file open: it is promoted once closed.
    drop(fd);
    c.promoted("f");
    if let Some(ro) = c.served_from_copy("open f O_RDONLY", |c| {
        c.open("open f O_RDONLY", "f", libc::O_RDONLY, 0)
    }) {
        c.sys("fallocate on O_RDONLY fd", fallocate(&ro, 0, 0, 10));
        let Some(fd) = c.open("open f O_RDWR beside a reader", "f", libc::O_RDWR, 0) else {
            return;
        };
        // A hole punched through the writer while a reader is on the copy: the reader
        // sees it, and the copy goes.
        c.sys(
            "PUNCH_HOLE|KEEP_SIZE 40K..44K beside a reader",
            fallocate(
                &fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                40960,
                4096,
            ),
        );
        c.no_stale_copy("f");
        c.sys(
            "reader sees the hole",
            pread_all(&ro, 4096, 40960).map(|b| b.iter().all(|x| *x == 0)),
        );
    }
}

fn lseek(fd: &OwnedFd, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: fd is open.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn s_seek_hole(c: &mut Ctx) {
    let Some(fd) = c.open(
        "create sparse",
        "sparse",
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        0o644,
    ) else {
        return;
    };
    let mib = 1 << 20;
    c.sys("pwrite 4K at 0", pwrite_all(&fd, &[1u8; 4096], 0));
    c.sys("pwrite 4K at 1 MiB", pwrite_all(&fd, &[2u8; 4096], mib));
    c.sys("pwrite 4K at 3 MiB", pwrite_all(&fd, &[3u8; 4096], 3 * mib));
    // SAFETY: fd is open.
    c.sys("fsync", check(unsafe { libc::fsync(fd.as_raw_fd()) }));
    let size = 3 * mib + 4096;
    for (name, off, whence) in [
        ("SEEK_DATA 0", 0, libc::SEEK_DATA),
        ("SEEK_HOLE 0", 0, libc::SEEK_HOLE),
        ("SEEK_DATA 4096", 4096, libc::SEEK_DATA),
        ("SEEK_HOLE 1 MiB", mib, libc::SEEK_HOLE),
        ("SEEK_DATA 1 MiB + 8K", mib + 8192, libc::SEEK_DATA),
        ("SEEK_HOLE 3 MiB", 3 * mib, libc::SEEK_HOLE),
        ("SEEK_DATA at size", size, libc::SEEK_DATA),
        ("SEEK_HOLE at size", size, libc::SEEK_HOLE),
        ("SEEK_DATA past size", size + 10, libc::SEEK_DATA),
        ("SEEK_SET", 1234, libc::SEEK_SET),
        ("SEEK_CUR +10", 10, libc::SEEK_CUR),
        ("SEEK_END -1", -1, libc::SEEK_END),
        ("SEEK_SET negative", -5, libc::SEEK_SET),
    ] {
        c.sys(name, lseek(&fd, off, whence));
    }
    c.sys(
        "hole reads as zeros",
        pread_all(&fd, 8192, 8192).map(|b| b.iter().all(|x| *x == 0)),
    );
    // A file that is all hole.
    if let Some(h) = c.open(
        "create hole-only",
        "hole",
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        0o644,
    ) {
        // SAFETY: h is open.
        c.sys(
            "ftruncate 1 MiB",
            check(unsafe { libc::ftruncate(h.as_raw_fd(), mib) }),
        );
        c.sys("SEEK_DATA 0 in hole-only", lseek(&h, 0, libc::SEEK_DATA));
        c.sys("SEEK_HOLE 0 in hole-only", lseek(&h, 0, libc::SEEK_HOLE));
    }
    // A descriptor served from the copy reports SOURCE's holes, not the copy's.
    drop(fd);
    c.promoted("sparse");
    if let Some(ro) = c.served_from_copy("open sparse O_RDONLY", |c| {
        c.open("open sparse O_RDONLY", "sparse", libc::O_RDONLY, 0)
    }) {
        for (name, off, whence) in [
            ("copy: SEEK_HOLE 0", 0, libc::SEEK_HOLE),
            ("copy: SEEK_DATA 4096", 4096, libc::SEEK_DATA),
            ("copy: SEEK_HOLE 1 MiB", mib, libc::SEEK_HOLE),
            ("copy: SEEK_DATA past size", size + 10, libc::SEEK_DATA),
        ] {
            c.sys(name, lseek(&ro, off, whence));
        }
        c.sys(
            "copy: hole reads as zeros",
            pread_all(&ro, 8192, 8192).map(|b| b.iter().all(|x| *x == 0)),
        );
    }
}

fn copy_range(
    src: &OwnedFd,
    soff: i64,
    dst: &OwnedFd,
    doff: i64,
    len: usize,
) -> Result<usize, i32> {
    let mut so = soff;
    let mut dof = doff;
    let mut total = 0;
    while total < len {
        // SAFETY: both fds open; offsets are valid pointers to locals.
        let n = check_size(unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut so,
                dst.as_raw_fd(),
                &mut dof,
                len - total,
                0,
            ) as isize
        })?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total)
}

fn s_copy_range(c: &mut Ctx) {
    let data = pattern(300_000, 5);
    c.io("write src", fs::write(c.p("src"), &data));
    c.promoted("src");
    let (Some(s), Some(d)) = (
        c.served_from_copy("open src", |c| c.open("open src", "src", libc::O_RDONLY, 0)),
        c.open(
            "create dst",
            "dst",
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o644,
        ),
    ) else {
        return;
    };
    c.sys(
        "copy 200000 from 1000 to 0",
        copy_range(&s, 1000, &d, 0, 200_000),
    );
    c.io(
        "dst content",
        fs::read(c.p("dst")).map(|b| (b.len(), b[..] == data[1000..201_000])),
    );
    // dst is promoted once its writer closes; a reader of the copy then sees a copy made
    // into it through a write-only descriptor opened beside it.
    drop(d);
    c.promoted("dst");
    let (Some(reader), Some(d)) = (
        c.served_from_copy("open dst", |c| c.open("open dst", "dst", libc::O_RDONLY, 0)),
        c.open("open dst O_WRONLY", "dst", libc::O_WRONLY, 0),
    ) else {
        return;
    };
    c.sys(
        "copy into the middle at 50000",
        copy_range(&s, 0, &d, 50_000, 10),
    );
    c.no_stale_copy("dst");
    c.sys(
        "the reader of dst sees the copied bytes",
        pread_all(&reader, 10, 50_000).map(|b| b == data[..10]),
    );
    c.io(
        "dst content",
        fs::read(c.p("dst")).map(|b| {
            (
                b.len(),
                part_eq(&b, 50_000..50_010, &data[..10]),
                part_eq(&b, 50_010..200_000, &data[51_010..201_000]),
            )
        }),
    );
    c.sys("copy past EOF (short)", copy_range(&s, 299_990, &d, 0, 100));
    c.sys("copy from EOF", copy_range(&s, 300_000, &d, 0, 100));
    c.sys("copy to a read-only fd", copy_range(&d, 0, &s, 0, 10));
    if let Some(s2) = c.open("open src rw", "src", libc::O_RDWR, 0) {
        c.sys(
            "copy overlapping within one file",
            copy_range(&s, 0, &s2, 10, 100),
        );
        c.sys(
            "copy non-overlapping within one file",
            copy_range(&s, 0, &s2, 300_000, 100),
        );
    }
    c.no_stale_copy("src");
    c.io(
        "src content",
        fs::read(c.p("src")).map(|b| (b.len(), digest(&b))),
    );
}

/// In a child process (another lock owner), `fcntl(cmd)` with a write lock on `range`.
/// F_SETLK: 0 or the errno. F_GETLK: 0 when it reports a write lock held by our pid,
/// 100 + l_type for anything else, 200 for a foreign pid, or the errno.
fn child_lock(path: &Path, cmd: i32, start: i64, len: i64) -> i32 {
    child_lock_as(path, libc::O_RDWR, cmd, start, len)
}

/// `child_lock` through a descriptor opened with `open_flags`.
fn child_lock_as(path: &Path, open_flags: i32, cmd: i32, start: i64, len: i64) -> i32 {
    let c = cpath(path);
    in_child(None, move || {
        // SAFETY: async-signal-safe calls; fl is a local.
        unsafe {
            let fd = libc::open(c.as_ptr(), open_flags);
            if fd < 0 {
                return errno();
            }
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = start;
            fl.l_len = len;
            if libc::fcntl(fd, cmd, &mut fl) != 0 {
                return errno();
            }
            if cmd != libc::F_GETLK {
                return 0;
            }
            if fl.l_type as i32 != libc::F_WRLCK {
                return 100 + fl.l_type as i32;
            }
            if fl.l_pid != libc::getppid() {
                return 200;
            }
            0
        }
    })
}

fn child_getlk(path: &Path, start: i64, len: i64) -> i32 {
    child_lock(path, libc::F_GETLK, start, len)
}

fn child_setlk(path: &Path, start: i64, len: i64) -> i32 {
    child_lock(path, libc::F_SETLK, start, len)
}

/// What `child_getlk` saw, in words.
fn getlk_desc(code: i32) -> String {
    match code {
        0 => "write lock held by the parent".into(),
        200 => "write lock held by another pid".into(),
        c if c == 100 + libc::F_RDLCK => "read lock".into(),
        c if c == 100 + libc::F_UNLCK => "unlocked".into(),
        c => format!("ERR {}", crate::common::errno_name(c)),
    }
}

fn child_flock(path: &Path) -> i32 {
    let c = cpath(path);
    in_child(None, move || {
        // SAFETY: as above.
        unsafe {
            let fd = libc::open(c.as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return errno();
            }
            rc(libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB))
        }
    })
}

fn setlk(fd: &OwnedFd, ty: i32, start: i64, len: i64) -> Result<(), i32> {
    // SAFETY: zeroed flock is valid; fd is open.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fd open, fl valid.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLK, &mut fl) }).map(|_| ())
}

fn s_locks(c: &mut Ctx) {
    c.write("write f", "f", &[0u8; 1000]);
    let f = c.p("f");
    let Some(fd) = c.open("open f", "f", libc::O_RDWR, 0) else {
        return;
    };
    c.sys("F_SETLK write 0..100", setlk(&fd, libc::F_WRLCK, 0, 100));
    c.note("child F_GETLK 0..10", getlk_desc(child_getlk(&f, 0, 10)));
    c.note(
        "child F_GETLK 200..300",
        getlk_desc(child_getlk(&f, 200, 100)),
    );
    c.out.code("child F_SETLK 50..60", child_setlk(&f, 50, 10));
    c.out
        .code("child F_SETLK 500..510", child_setlk(&f, 500, 10));
    c.sys(
        "F_SETLK read 0..100 (downgrade)",
        setlk(&fd, libc::F_RDLCK, 0, 100),
    );
    c.note(
        "child F_GETLK over our read lock",
        getlk_desc(child_getlk(&f, 0, 10)),
    );
    c.sys("F_UNLCK", setlk(&fd, libc::F_UNLCK, 0, 100));
    c.out
        .code("child F_SETLK 50..60 after unlock", child_setlk(&f, 50, 10));
    // Locks are per process and released when any fd of the file is closed.
    c.sys("F_SETLK write whole file", setlk(&fd, libc::F_WRLCK, 0, 0));
    c.out
        .code("child F_SETLK 999..1000", child_setlk(&f, 999, 1));
    if let Some(other) = c.open("open f again", "f", libc::O_RDONLY, 0) {
        drop(other);
    }
    c.out.code(
        "child F_SETLK after closing another fd",
        child_setlk(&f, 999, 1),
    );
    // flock: whole-file locks between two open file descriptions.
    if let Some(fl) = c.open("open for flock", "f", libc::O_RDONLY, 0) {
        // SAFETY: fd is open.
        c.sys(
            "flock LOCK_EX",
            check(unsafe { libc::flock(fl.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }),
        );
        c.out.code("child flock LOCK_EX|LOCK_NB", child_flock(&f));
        // SAFETY: fd is open.
        c.sys(
            "flock LOCK_UN",
            check(unsafe { libc::flock(fl.as_raw_fd(), libc::LOCK_UN) }),
        );
        c.out.code("child flock after unlock", child_flock(&f));
    }
    // A read lock on a write-only fd fails.
    if let Some(w) = c.open("open O_WRONLY", "f", libc::O_WRONLY, 0) {
        c.sys("F_RDLCK on O_WRONLY", setlk(&w, libc::F_RDLCK, 0, 1));
    }
    drop(fd);
    // Locks on a descriptor served from the copy hold against other readers (and
    // against a writer opened beside it: regress::locks_hold_between_a_passthrough_
    // reader_and_a_later_writer).
    c.promoted("f");
    if let Some(ro) = c.served_from_copy("open f on the copy", |c| {
        c.open("open f on the copy", "f", libc::O_RDONLY, 0)
    }) {
        c.sys(
            "F_SETLK read 0..100 on the copy",
            setlk(&ro, libc::F_RDLCK, 0, 100),
        );
        c.note(
            "child F_GETLK (read-only) over the copy's read lock",
            getlk_desc(child_lock_as(&f, libc::O_RDONLY, libc::F_GETLK, 0, 10)),
        );
        c.sys("F_UNLCK on the copy", setlk(&ro, libc::F_UNLCK, 0, 100));
        // SAFETY: ro is open.
        c.sys(
            "flock LOCK_EX on the copy",
            check(unsafe { libc::flock(ro.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }),
        );
        c.out
            .code("child flock over the copy's lock", child_flock(&f));
    }
}

fn s_errnos(c: &mut Ctx) {
    c.write("write f", "f", b"x");
    c.io("mkdir d", fs::create_dir(c.p("d")));
    drop(c.open("open missing", "missing", libc::O_RDONLY, 0));
    drop(c.open("open missing/x", "missing/x", libc::O_RDONLY, 0));
    drop(c.open("open f/x (ENOTDIR)", "f/x", libc::O_RDONLY, 0));
    drop(c.open("open f/ (trailing slash)", "f/", libc::O_RDONLY, 0));
    drop(c.open("open dir O_WRONLY (EISDIR)", "d", libc::O_WRONLY, 0));
    drop(c.open("open dir O_RDWR", "d", libc::O_RDWR, 0));
    drop(c.open(
        "open dir O_CREAT",
        "d",
        libc::O_RDONLY | libc::O_CREAT,
        0o644,
    ));
    drop(c.open(
        "open file O_DIRECTORY",
        "f",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    ));
    drop(c.open(
        "create O_EXCL existing (EEXIST)",
        "f",
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o644,
    ));
    drop(c.open(
        "create O_EXCL over dir",
        "d",
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o644,
    ));
    c.io("mkdir existing (EEXIST)", fs::create_dir(c.p("d")));
    c.io("mkdir over file (EEXIST)", fs::create_dir(c.p("f")));
    c.io("read dir", fs::read(c.p("d")));
    if let Some(fd) = c.open(
        "open dir O_RDONLY",
        "d",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    ) {
        c.sys("read(2) on dir fd", pread_all(&fd, 10, 0).map(|b| b.len()));
    }
    // A descriptor served from the copy fails as the plain file's would.
    c.promoted("f");
    if let Some(fd) = c.served_from_copy("open f O_RDONLY", |c| {
        c.open("open f O_RDONLY", "f", libc::O_RDONLY, 0)
    }) {
        c.sys(
            "pread negative offset",
            pread_all(&fd, 1, -1).map(|b| b.len()),
        );
        c.sys("pwrite on O_RDONLY", pwrite_all(&fd, b"y", 0));
        c.sys("SEEK_DATA past EOF", lseek(&fd, 10, libc::SEEK_DATA));
        // SAFETY: fd is open.
        c.sys(
            "ftruncate on O_RDONLY",
            check(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }),
        );
    }
    c.stat("lstat 256-byte name (ENAMETOOLONG)", &"y".repeat(256));
    drop(c.open(
        "create 256-byte name",
        &"y".repeat(256),
        libc::O_WRONLY | libc::O_CREAT,
        0o644,
    ));
    c.io("mkdir 256-byte name", fs::create_dir(c.p(&"y".repeat(256))));
    c.io(
        "rename to 256-byte name",
        fs::rename(c.p("f"), c.p(&"y".repeat(256))),
    );
    c.io(
        "symlink loop",
        std::os::unix::fs::symlink("loop", c.p("loop")),
    );
    drop(c.open("open loop (ELOOP)", "loop", libc::O_RDONLY, 0));
    c.stat("lstat loop/x", "loop/x");
    c.io("unlink dir (EISDIR)", fs::remove_file(c.p("d")));
    c.io("rmdir file (ENOTDIR)", fs::remove_dir(c.p("f")));
    c.io(
        "link to missing dir",
        fs::hard_link(c.p("f"), c.p("missing/f")),
    );
    c.io("mkdir .", fs::create_dir(c.p(".")));
    c.io("rmdir ..", fs::remove_dir(c.p("d/..")));
    c.io("rename .", fs::rename(c.p("d/."), c.p("e")));
    c.io("create empty name", File::create(c.p("d/")));
}

/// `openat(dir, rel, flags)` as an owned descriptor, or the errno.
fn openat_fd(dir: &OwnedFd, rel: &str, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    let c = CString::new(rel).expect("rel");
    // SAFETY: dir is open, c is NUL-terminated.
    let fd =
        check(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn s_long_paths(c: &mut Ctx) {
    // A file whose path below the script's root is PATH_MAX - 1 bytes, the longest a
    // caller can pass, reached relative to a directory descriptor: each name is short,
    // but SOURCE's prefix plus the whole path is far past PATH_MAX, so a daemon that
    // joined SOURCE and the path into one string would fail every call below.
    let path_max = libc::PATH_MAX as usize;
    let mut levels = vec!["d".repeat(250); 16];
    // 16 names of 250 bytes and their slashes are 4015 bytes; one more name brings the
    // directory to 4093, and "/f" the file to 4095.
    levels.push("e".repeat(path_max - 3 - (16 * 251)));
    let rootfd: OwnedFd = match File::open(&c.root) {
        Ok(f) => f.into(),
        Err(e) => {
            c.io::<()>("open root", Err(e));
            return;
        }
    };
    let mut rel = String::new();
    let mut ok = 0;
    for name in &levels {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(name);
        let cr = CString::new(rel.clone()).expect("rel");
        // SAFETY: rootfd open, valid path.
        if unsafe { libc::mkdirat(rootfd.as_raw_fd(), cr.as_ptr(), 0o755) } == 0 {
            ok += 1;
        } else {
            c.note(
                &format!("mkdirat depth {}", ok + 1),
                crate::common::errno_name(errno()),
            );
            break;
        }
    }
    c.note("levels made", ok);
    let file = format!("{rel}/f");
    let renamed = format!("{rel}/g");
    assert_eq!(
        file.len(),
        path_max - 1,
        "the deep file's path below the root"
    );
    c.note("relative path length", file.len());
    if let Some(p) = &c.probe {
        // What a joining daemon would open: longer than PATH_MAX, which open(2) refuses.
        let joined = p.source.join(&file);
        assert!(
            joined.as_os_str().len() >= path_max,
            "SOURCE's prefix and the {} bytes below the root must reach PATH_MAX \
             ({path_max}): {} bytes",
            file.len(),
            joined.as_os_str().len()
        );
        assert_eq!(
            fs::File::create(&joined)
                .map_err(|e| e.raw_os_error())
                .err(),
            Some(Some(libc::ENAMETOOLONG)),
            "a joined path would fail"
        );
    }
    let fd = match openat_fd(&rootfd, &file, libc::O_RDWR | libc::O_CREAT, 0o644) {
        Ok(fd) => fd,
        Err(e) => {
            c.note("openat deep file", crate::common::errno_name(e));
            return;
        }
    };
    c.sys("write deep file", pwrite_all(&fd, b"deep", 0));
    c.sys(
        "read deep file",
        pread_all(&fd, 10, 0).map(|b| show_bytes(&b)),
    );
    drop(fd);
    let cf = CString::new(file.clone()).expect("file");
    // SAFETY: zeroed stat; valid fd and path.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    c.sys(
        "fstatat deep file",
        check(unsafe {
            libc::fstatat(
                rootfd.as_raw_fd(),
                cf.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(|_| st.st_size),
    );
    // The deep file promoted and read from its copy, which follows it through a rename.
    let read_deep = |c: &mut Ctx, step: &str, rel: &str| {
        let r = openat_fd(&rootfd, rel, libc::O_RDONLY, 0)
            .and_then(|fd| pread_all(&fd, 10, 0))
            .map(|b| show_bytes(&b));
        c.sys(step, r);
    };
    c.promoted(&file);
    c.served_from_copy("read deep file", |c| {
        read_deep(c, "read deep file from the copy", &file)
    });
    let cr = CString::new(renamed.clone()).expect("renamed");
    // SAFETY: valid fds and paths.
    c.sys(
        "renameat deep file",
        check(unsafe {
            libc::renameat(
                rootfd.as_raw_fd(),
                cf.as_ptr(),
                rootfd.as_raw_fd(),
                cr.as_ptr(),
            )
        }),
    );
    c.no_stale_copy(&file);
    c.served_from_copy("read renamed deep file", |c| {
        read_deep(c, "read renamed deep file", &renamed)
    });
    // SAFETY: valid fd and path.
    c.sys(
        "unlinkat deep file",
        check(unsafe { libc::unlinkat(rootfd.as_raw_fd(), cr.as_ptr(), 0) }),
    );
    c.no_stale_copy(&renamed);
}

// ---------------------------------------------------------------------------------------
// writes land in SOURCE

#[test]
fn writes_land_in_source() {
    require_mount!();
    let m = TestMount::start();
    let data = pattern((5 << 20) + 77, 42);
    fs::write(m.path("f"), &data).expect("write through mount");
    let back = fs::read(m.src("f")).expect("read SOURCE");
    assert_eq!(back.len(), data.len(), "size in SOURCE");
    assert!(back == data, "SOURCE bytes differ from what was written");

    // Partial overwrite through an open descriptor, visible in SOURCE once written.
    {
        let mut h = OpenOptions::new()
            .write(true)
            .open(m.path("f"))
            .expect("open");
        h.seek(SeekFrom::Start(4096 * 3 + 5)).expect("seek");
        h.write_all(b"OVERWRITE").expect("write");
        h.sync_all().expect("fsync");
    }
    let back = fs::read(m.src("f")).expect("read SOURCE");
    assert_eq!(&back[4096 * 3 + 5..4096 * 3 + 14], b"OVERWRITE");

    // Namespace changes reach SOURCE.
    fs::create_dir(m.path("dir")).expect("mkdir");
    fs::rename(m.path("f"), m.path("dir/g")).expect("rename");
    assert!(m.src("dir/g").is_file(), "renamed file in SOURCE");
    assert!(!m.src("f").exists(), "old name gone from SOURCE");
    fs::set_permissions(m.path("dir/g"), fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(
        fs::metadata(m.src("dir/g")).expect("stat").mode() & 0o7777,
        0o640
    );
    std::os::unix::fs::symlink("g", m.path("dir/l")).expect("symlink");
    assert_eq!(
        fs::read_link(m.src("dir/l")).expect("readlink"),
        Path::new("g")
    );
    setxattr(&m.path("dir/g"), "user.k", b"v", 0, false).expect("setxattr");
    assert_eq!(
        getxattr(&m.src("dir/g"), "user.k", 10).expect("getxattr in SOURCE"),
        b"v"
    );
    fs::remove_file(m.path("dir/l")).expect("unlink");
    assert!(
        fs::symlink_metadata(m.src("dir/l")).is_err(),
        "unlinked symlink gone from SOURCE"
    );
    std::os::unix::fs::chown(m.path("dir/g"), Some(1000), Some(1000)).expect("chown");
    let md = fs::metadata(m.src("dir/g")).expect("stat");
    assert_eq!((md.uid(), md.gid()), (1000, 1000), "owner in SOURCE");
    fs::remove_dir_all(m.path("dir")).expect("rm -r");
    assert!(!m.src("dir").exists(), "removed tree gone from SOURCE");
}

#[test]
fn source_changes_show_through_mount() {
    require_mount!();
    let m = TestMount::builder()
        .populate(|src| fs::write(src.join("pre"), b"before mount").expect("populate"))
        .start();
    assert_eq!(fs::read(m.path("pre")).expect("read pre"), b"before mount");
    // A file made in SOURCE behind the mount's back, under a name never looked up.
    fs::write(m.src("new"), b"made in source").expect("write SOURCE");
    assert_eq!(
        fs::read(m.path("new")).expect("read new"),
        b"made in source"
    );
    // Changed contents (other size) in SOURCE: shown once the attribute timeout lapses.
    // Poll: the contract allows the kernel's attribute cache to hold old attributes for
    // attr_timeout (1 s by default); never assert a duration, only the eventual value.
    fs::write(m.src("pre"), b"changed in source, longer").expect("rewrite SOURCE");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = fs::read(m.path("pre")).expect("read pre");
        if now == b"changed in source, longer" {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "mount still shows {:?} 10 s after SOURCE changed",
            String::from_utf8_lossy(&now)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `xattr=nosys`: the mount has no extended attributes and answers as a filesystem
/// without them (EOPNOTSUPP), ACLs included, every time (the kernel stops asking after
/// the first answer); SOURCE's own attributes are untouched.
#[test]
fn xattr_nosys_mount_has_no_extended_attributes() {
    require_mount!();
    let m = TestMount::builder()
        .option("xattr=nosys")
        .populate(|src| {
            fs::write(src.join("f"), b"x").unwrap();
            setxattr(&src.join("f"), "user.a", b"1", 0, false).expect("xattr on SOURCE");
        })
        .start();
    let f = m.path("f");
    for _ in 0..2 {
        assert_eq!(getxattr(&f, "user.a", 100), Err(libc::EOPNOTSUPP));
        assert_eq!(getxattr(&f, "security.selinux", 100), Err(libc::EOPNOTSUPP));
        assert_eq!(listxattr(&f), Err(libc::EOPNOTSUPP));
        assert_eq!(
            setxattr(&f, "user.b", b"2", 0, false),
            Err(libc::EOPNOTSUPP)
        );
        assert_eq!(removexattr(&f, "user.a"), Err(libc::EOPNOTSUPP));
    }
    assert_eq!(getxattr(&m.src("f"), "user.a", 100), Ok(b"1".to_vec()));
    assert_eq!(getxattr(&m.src("f"), "user.b", 100), Err(libc::ENODATA));
}

// ---------------------------------------------------------------------------------------
// POSIX ACLs (the kernel reads and caches them itself with FUSE_POSIX_ACL)

/// Runs the ACL tool `tool` (`setfacl`, `getfacl`) with `args` and then `rel`'s path,
/// and records its output, or its exit code and message without the path (which
/// differs between the mount and the plain directory).
fn facl(c: &mut Ctx, step: &str, tool: &str, args: &[&str], rel: &str) {
    let path = c.p(rel);
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (the acl package; scripts/prereqs.sh): {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace(&*path.to_string_lossy(), "PATH");
    if out.status.success() {
        c.note(step, format!("ok {:?}", text(&out.stdout)));
    } else {
        c.note(
            step,
            format!("exit {:?} {:?}", out.status.code(), text(&out.stderr)),
        );
    }
}

/// The ACL as `getfacl` shows it, numeric ids, without the header.
fn getfacl(c: &mut Ctx, step: &str, rel: &str) {
    facl(c, step, "getfacl", &["-n", "--omit-header"], rel);
}

/// The `system.*` names (ACLs) in `rel`'s listxattr, sorted.
fn list_system(p: &Path) -> Result<Vec<String>, i32> {
    let cp = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: buf has 65536 bytes.
    let n = check_size(unsafe { libc::listxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), 65536) })?;
    let mut v: Vec<String> = buf[..n]
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| s.starts_with("system."))
        .collect();
    v.sort();
    Ok(v)
}

/// An access ACL in the kernel's xattr encoding: version 2, then (tag, perm, id) per entry.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

/// setxattr of `value` as f's access ACL, then f's mode and its ACL as read back.
fn set_access_acl(c: &mut Ctx, what: &str, value: &[u8]) {
    let f = c.p("f");
    let set = setxattr(&f, "system.posix_acl_access", value, 0, false);
    c.sys(&format!("setxattr {what}"), set);
    c.stat(&format!("lstat f after {what}"), "f");
    let get = getxattr(&f, "system.posix_acl_access", 100).map(|b| show_bytes(&b));
    c.sys(&format!("get access ACL after {what}"), get);
}

/// getfattr/setfattr/listxattr/removexattr of access and default ACLs and of a
/// Samba-style `user.DOSATTRIB`, by the ACL tools and by the raw calls: values, errnos,
/// and the mode an access ACL implies, seen at once after each change.
fn s_posix_acl(c: &mut Ctx) {
    c.write("write f", "f", b"acl");
    c.promoted("f");
    let f = c.p("f");
    c.io(
        "chmod f 0644",
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)),
    );
    getfacl(c, "getfacl f (none)", "f");
    c.sys(
        "get access ACL (none)",
        getxattr(&f, "system.posix_acl_access", 100).map(|b| show_bytes(&b)),
    );
    c.sys(
        "remove access ACL (none)",
        removexattr(&f, "system.posix_acl_access"),
    );
    facl(
        c,
        "setfacl u:1000:r,g:1000:rw f",
        "setfacl",
        &["-m", "u:1000:r,g:1000:rw"],
        "f",
    );
    // The mask (rw) is the group class: the mode shows it at once.
    c.stat("lstat f after setfacl", "f");
    getfacl(c, "getfacl f", "f");
    c.sys(
        "get access ACL",
        getxattr(&f, "system.posix_acl_access", 100).map(|b| show_bytes(&b)),
    );
    c.sys(
        "get access ACL size",
        getxattr(&f, "system.posix_acl_access", 0).map(|b| show_bytes(&b)),
    );
    c.sys(
        "get access ACL small buffer",
        getxattr(&f, "system.posix_acl_access", 8).map(|b| b.len()),
    );
    c.sys("list system.* f", list_system(&f));
    // An ACL changes the file's ctime and mode, not its bytes: the copy stays.
    c.served_from_copy("read f after setfacl", |c| c.read("read f", "f"));
    // A chmod rewrites the ACL's mask.
    c.io(
        "chmod f 0600",
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)),
    );
    getfacl(c, "getfacl f after chmod", "f");
    facl(c, "setfacl -x u:1000 f", "setfacl", &["-x", "u:1000"], "f");
    getfacl(c, "getfacl f after -x", "f");
    c.stat("lstat f after -x", "f");
    // The raw call, as Samba and rsync -A make it.
    let value = acl_value(&[
        (ACL_USER_OBJ, 6, NO_ID),
        (ACL_USER, 4, 1000),
        (ACL_GROUP_OBJ, 4, NO_ID),
        (ACL_MASK, 4, NO_ID),
        (ACL_OTHER, 0, NO_ID),
    ]);
    set_access_acl(c, "a named entry", &value);
    c.sys(
        "setxattr malformed ACL",
        setxattr(&f, "system.posix_acl_access", b"\x02\0\0\0\x01", 0, false),
    );
    c.sys(
        "setxattr ACL of another version",
        setxattr(&f, "system.posix_acl_access", &[1, 0, 0, 0], 0, false),
    );
    // An ACL equivalent to the mode is stored as the mode alone.
    let minimal = acl_value(&[
        (ACL_USER_OBJ, 7, NO_ID),
        (ACL_GROUP_OBJ, 5, NO_ID),
        (ACL_OTHER, 4, NO_ID),
    ]);
    set_access_acl(c, "the minimal ACL", &minimal);
    facl(
        c,
        "setfacl -m u:1000:rwx f",
        "setfacl",
        &["-m", "u:1000:rwx"],
        "f",
    );
    c.sys(
        "removexattr access ACL",
        removexattr(&f, "system.posix_acl_access"),
    );
    c.stat("lstat f after removexattr", "f");
    getfacl(c, "getfacl f after removexattr", "f");
    c.sys("list system.* f after remove", list_system(&f));
    // Samba's DOS attributes beside an ACL.
    let dos = b"0x20\0\x04\0\x04\0\0\0\x20\0\0\0";
    c.sys(
        "set user.DOSATTRIB",
        setxattr(&f, "user.DOSATTRIB", dos, 0, false),
    );
    facl(
        c,
        "setfacl u:1000:rw f",
        "setfacl",
        &["-m", "u:1000:rw"],
        "f",
    );
    c.sys(
        "get user.DOSATTRIB",
        getxattr(&f, "user.DOSATTRIB", 100).map(|b| show_bytes(&b)),
    );
    c.sys("list user.* f", listxattr(&f));
    c.sys("list system.* f", list_system(&f));
    c.sys("remove user.DOSATTRIB", removexattr(&f, "user.DOSATTRIB"));
    c.sys(
        "get user.DOSATTRIB after remove",
        getxattr(&f, "user.DOSATTRIB", 100).map(|b| show_bytes(&b)),
    );
    getfacl(c, "getfacl f at the end", "f");
    // Default ACLs, on directories only.
    c.io("mkdir d", fs::create_dir(c.p("d")));
    let d = c.p("d");
    c.io(
        "chmod d 0755",
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)),
    );
    c.sys(
        "get default ACL (none)",
        getxattr(&d, "system.posix_acl_default", 100).map(|b| show_bytes(&b)),
    );
    facl(
        c,
        "setfacl -d u:1000:rwx d",
        "setfacl",
        &["-d", "-m", "u:1000:rwx"],
        "d",
    );
    getfacl(c, "getfacl d", "d");
    c.stat("lstat d (a default ACL leaves the mode)", "d");
    c.sys(
        "get default ACL",
        getxattr(&d, "system.posix_acl_default", 100).map(|b| show_bytes(&b)),
    );
    c.sys("list system.* d", list_system(&d));
    c.sys(
        "setxattr default ACL on a file",
        setxattr(&f, "system.posix_acl_default", &minimal, 0, false),
    );
    facl(c, "setfacl -k d", "setfacl", &["-k"], "d");
    getfacl(c, "getfacl d after -k", "d");
    c.sys("list system.* d after -k", list_system(&d));
    c.sys(
        "remove default ACL (none)",
        removexattr(&d, "system.posix_acl_default"),
    );
    c.io("symlink l -> f", std::os::unix::fs::symlink("f", c.p("l")));
    c.sys(
        "lsetxattr access ACL on a symlink",
        setxattr(&c.p("l"), "system.posix_acl_access", &value, 0, true),
    );
    getfacl(c, "getfacl through the symlink", "l");
    c.served_from_copy("read f at the end", |c| c.read("read f", "f"));
}

/// Creates in a plain directory and in directories with default ACLs, under umask 022
/// and 077: a default ACL replaces the umask (ext4 takes the ACL's entries and mask),
/// a plain directory applies it.
fn s_create_default_acl(c: &mut Ctx) {
    for (dir, acl) in [
        ("p", None),
        ("a", Some("u:1000:rwx")),
        ("b", Some("u::rwx,g::---,o::---")),
    ] {
        c.io(&format!("mkdir {dir}"), fs::create_dir(c.p(dir)));
        c.io(
            &format!("chmod {dir} 0755"),
            fs::set_permissions(c.p(dir), fs::Permissions::from_mode(0o755)),
        );
        if let Some(acl) = acl {
            facl(
                c,
                &format!("setfacl -d {acl} {dir}"),
                "setfacl",
                &["-d", "-m", acl],
                dir,
            );
        }
    }
    let mut made = Vec::new();
    for umask in [0o022u32, 0o077] {
        let mut ops: Vec<(u8, CString, u32)> = Vec::new();
        for dir in ["p", "a", "b"] {
            for (kind, name, mode) in [
                (b'f', "f", 0o666),
                (b'f', "g", 0o640),
                (b'd', "d", 0o777),
                (b'n', "n", 0o666),
            ] {
                let rel = format!("{dir}/{name}{umask:03o}");
                ops.push((kind, c.c(&rel), mode));
                made.push(rel);
            }
        }
        // The umask is per process and the test threads share one: set it in a child.
        let code = in_child(None, move || {
            // SAFETY: async-signal-safe calls on paths prepared before the fork.
            unsafe {
                libc::umask(umask as libc::mode_t);
                for (kind, path, mode) in &ops {
                    let r = match kind {
                        b'f' => {
                            let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL;
                            let fd = libc::open(path.as_ptr(), flags, *mode);
                            if fd >= 0 {
                                libc::close(fd);
                            }
                            fd
                        }
                        b'd' => libc::mkdir(path.as_ptr(), *mode),
                        _ => libc::mknod(path.as_ptr(), libc::S_IFIFO | *mode, 0),
                    };
                    if r < 0 {
                        return errno();
                    }
                }
            }
            0
        });
        c.out
            .code(&format!("creates under umask {umask:03o}"), code);
    }
    for rel in &made {
        c.stat(&format!("lstat {rel}"), rel);
        getfacl(c, &format!("getfacl {rel}"), rel);
    }
    // A file made under a default ACL, then served from its copy.
    c.write("write a/f022", "a/f022", b"inherited");
    c.promoted("a/f022");
    c.served_from_copy("read a/f022", |c| c.read("read a/f022", "a/f022"));
    c.stat("lstat a/f022 after write", "a/f022");
    // A directory made under one inherits the default ACL as its own default.
    c.io("mkdir a/d022/sub", fs::create_dir(c.p("a/d022/sub")));
    c.stat("lstat a/d022/sub", "a/d022/sub");
    getfacl(c, "getfacl a/d022/sub", "a/d022/sub");
}
