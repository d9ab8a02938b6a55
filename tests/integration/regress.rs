//! Regression tests for defects found by outside suites (and by this suite's own scripts),
//! each named after what it guards: a case where a program saw on the mount what a plain
//! directory would never show it.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::common::{
    Creds, OTHER_GID, OTHER_UID, TestMount, as_user, child_on, cpath, errno, eventually, num,
    pattern, plain_dir, promote_wait, require_passthrough, status, with_cached_file,
};

/// Opens `path` as a directory and reads one batch of entries: 0, or the errno.
/// Async-signal-safe (for `as_user`).
fn open_and_list(path: &CString) -> i32 {
    // SAFETY: path is NUL-terminated; buf is a live local of the size passed.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        if fd < 0 {
            return errno();
        }
        let mut buf = [0u8; 4096];
        let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
        let e = errno();
        libc::close(fd);
        if n < 0 {
            return e;
        }
        if n == 0 { libc::ENODATA } else { 0 }
    }
}

/// pjdfstest open/06.t: a directory its owner may read but not search (0600) opens and
/// lists, as on a plain directory; one it may search but not read (0300) does not.
#[test]
fn opendir_needs_read_permission_not_search() {
    crate::require_mount!();
    let setup = |root: &Path| {
        for (name, mode) in [("d600", 0o600), ("d300", 0o300), ("d700", 0o700)] {
            let d = root.join(name);
            fs::create_dir(&d).unwrap();
            fs::write(d.join("f"), b"x").unwrap();
            chown(&d, Some(OTHER_UID), Some(OTHER_GID)).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    let m = TestMount::builder().allow_other().populate(setup).start();
    let plain = plain_dir(true);
    setup(plain.path());
    for (name, want) in [("d600", 0), ("d300", libc::EACCES), ("d700", 0)] {
        for root in [&m.mnt, &plain.path().to_path_buf()] {
            let p = cpath(&root.join(name));
            let got = as_user(&Creds::other(), move || open_and_list(&p));
            assert_eq!(got, want, "opendir {name} in {}", root.display());
        }
    }
}

/// A file whose name really ends in " (deleted)" is cached and served from its copy
/// like any other (the daemon once took the name for the kernel's mark of an unlinked
/// file).
#[test]
fn name_ending_in_deleted_is_cached() {
    crate::require_mount!();
    let data = pattern(1 << 20, 9);
    let m = with_cached_file("Film (deleted)", &data);
    let hits = num(&status(&m), "hits");
    assert_eq!(fs::read(m.path("Film (deleted)")).unwrap(), data);
    assert_eq!(
        num(&status(&m), "hits"),
        hits + 1,
        "not served from the copy"
    );
}

/// An ext4 image without the `filetype` feature, loop-mounted: its getdents reports
/// DT_UNKNOWN for every entry, as XFS v4, NFS, CIFS and FUSE sources can. Unmounted (and
/// its directory removed) on drop, after the cachefs mount above it is gone.
struct UntypedFs {
    dir: TempDir,
}

impl UntypedFs {
    fn new() -> UntypedFs {
        let dir = tempfile::Builder::new()
            .prefix("cachefs-untyped.")
            .tempdir()
            .unwrap();
        let img = dir.path().join("img");
        fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^filetype,^has_journal"])
            .arg(&img)
            .output()
            .expect("run mkfs.ext4 (e2fsprogs; scripts/prereqs.sh installs it)");
        assert!(mkfs.status.success(), "mkfs.ext4: {:?}", mkfs);
        fs::create_dir(dir.path().join("fs")).unwrap();
        let mount = Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&img)
            .arg(dir.path().join("fs"))
            .output()
            .expect("run mount");
        assert!(mount.status.success(), "mount -o loop: {:?}", mount);
        UntypedFs { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("fs")
    }
}

impl Drop for UntypedFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root()).status();
    }
}

/// getdents64's type of every entry in `dir` but `.` and `..`.
fn dtypes(dir: &Path) -> Vec<u8> {
    let c = cpath(dir);
    let mut out = Vec::new();
    // SAFETY: c is NUL-terminated; buf is a live local of the size passed.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        assert!(fd >= 0);
        let mut buf = [0u8; 8192];
        let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
        libc::close(fd);
        let mut pos = 0;
        while pos + 19 <= n as usize {
            let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
            let name = &buf[pos + 19..pos + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                out.push(buf[pos + 18]);
            }
            pos += reclen;
        }
    }
    out
}

/// `promote DIR` finds the files of a source whose directory entries carry no type.
#[test]
fn promote_dir_finds_files_where_source_reports_dt_unknown() {
    crate::require_mount!();
    // Declared first: dropped after the mount.
    let untyped = UntypedFs::new();
    let show = untyped.root().join("Show/Season 01");
    fs::create_dir_all(&show).unwrap();
    for ep in 1..=3 {
        fs::write(show.join(format!("E0{ep}.mkv")), pattern(64 << 10, ep)).unwrap();
    }
    assert!(
        dtypes(&show).iter().all(|&t| t == libc::DT_UNKNOWN),
        "the image reports entry types after all"
    );
    let real = untyped.root();
    let m = TestMount::builder()
        .option("promote=manual")
        .populate(move |src| {
            // SOURCE becomes the untyped filesystem (the daemon follows SOURCE's path).
            fs::remove_dir(src).unwrap();
            std::os::unix::fs::symlink(&real, src).unwrap();
        })
        .start();
    promote_wait(&m, "Show");
    assert_eq!(num(&status(&m), "cached_files"), 3);
    let hits = num(&status(&m), "hits");
    for ep in 1..=3 {
        let rel = format!("Show/Season 01/E0{ep}.mkv");
        assert_eq!(fs::read(m.path(&rel)).unwrap(), pattern(64 << 10, ep));
    }
    assert_eq!(num(&status(&m), "hits"), hits + 3);
    // The kernel gets real types too.
    assert_eq!(dtypes(&m.path("Show/Season 01")), vec![libc::DT_REG; 3]);
    drop(m);
}

/// pjdfstest chmod/12.t: a write or truncate by a user who does not own a setuid or
/// setgid file succeeds and clears the bits (setgid only with group execute), as on a
/// plain directory; the kernel once asked the daemon to chmod as the writer, which
/// failed, and the write with it.
#[test]
fn write_or_truncate_by_non_owner_clears_setuid_setgid() {
    crate::require_mount!();
    type Op = fn(&CString) -> i32;
    fn write_one(p: &CString) -> i32 {
        // SAFETY: p is NUL-terminated; the buffer is a static byte.
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return errno();
            }
            let n = libc::write(fd, b"x".as_ptr().cast(), 1);
            let e = errno();
            libc::close(fd);
            if n == 1 { 0 } else { e }
        }
    }
    fn truncate(p: &CString) -> i32 {
        // SAFETY: p is NUL-terminated.
        if unsafe { libc::truncate(p.as_ptr(), 1) } == 0 {
            0
        } else {
            errno()
        }
    }
    fn ftruncate(p: &CString) -> i32 {
        // SAFETY: p is NUL-terminated.
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return errno();
            }
            let r = libc::ftruncate(fd, 2);
            let e = errno();
            libc::close(fd);
            if r == 0 { 0 } else { e }
        }
    }
    let ops: [(&str, Op); 3] = [
        ("write", write_one),
        ("truncate", truncate),
        ("ftruncate", ftruncate),
    ];
    let modes = [0o6777, 0o6766, 0o4777, 0o2777];
    let setup = move |root: &Path| {
        for (op, _) in ops {
            for mode in modes {
                let f = root.join(format!("{op}-{mode:o}"));
                fs::write(&f, b"data").unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    };
    let m = TestMount::builder().allow_other().populate(setup).start();
    let plain = plain_dir(true);
    setup(plain.path());
    for (op, f) in ops {
        for mode in modes {
            let name = format!("{op}-{mode:o}");
            let mut seen = Vec::new();
            for (root, check) in [
                (&m.mnt, &m.source),
                (&plain.path().to_path_buf(), &plain.path().to_path_buf()),
            ] {
                let p = cpath(&root.join(&name));
                let code = as_user(&Creds::other(), move || f(&p));
                let md = fs::metadata(check.join(&name)).unwrap();
                seen.push((code, md.permissions().mode() & 0o7777, md.len()));
            }
            assert_eq!(
                seen[0], seen[1],
                "{name}: (errno, mode, size) on the mount vs plain"
            );
            assert_eq!(seen[0].0, 0, "{name} failed on the plain directory too");
        }
    }
}

/// `dd oflag=direct` and `iflag=direct` (and fsx -Z) work: O_DIRECT once reached the
/// source open, whose alignment rules the daemon's own buffers broke (EINVAL).
#[test]
fn o_direct_reads_and_writes_work() {
    crate::require_mount!();
    let cached = pattern(1 << 20, 4);
    let m = with_cached_file("cached.bin", &cached);
    let dd = |args: &[String]| {
        let out = Command::new("dd").args(args).output().expect("run dd");
        assert!(
            out.status.success(),
            "dd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let data = pattern(64 << 10, 5);
    let input = m.root.join("input");
    fs::write(&input, &data).unwrap();
    let x = m.path("x");
    dd(&[
        format!("if={}", input.display()),
        format!("of={}", x.display()),
        "bs=4096".into(),
        "oflag=direct".into(),
    ]);
    assert_eq!(
        fs::read(m.src("x")).unwrap(),
        data,
        "SOURCE after dd oflag=direct"
    );
    // Rewrite a block in the middle without truncating, then read it all back direct.
    dd(&[
        format!("if={}", input.display()),
        format!("of={}", x.display()),
        "bs=4096".into(),
        "count=1".into(),
        "seek=3".into(),
        "conv=notrunc".into(),
        "oflag=direct".into(),
    ]);
    let mut want = data.clone();
    want.copy_within(0..4096, 3 * 4096);
    for (name, content) in [("x", &want), ("cached.bin", &cached)] {
        let out_file = m.root.join(format!("{name}.out"));
        dd(&[
            format!("if={}", m.path(name).display()),
            format!("of={}", out_file.display()),
            "bs=4096".into(),
            "iflag=direct".into(),
        ]);
        assert_eq!(
            &fs::read(&out_file).unwrap(),
            content,
            "{name} read with iflag=direct"
        );
    }
}

/// Passthrough opens and releases of one cached file racing on several threads: every
/// open succeeds and reads the file's bytes (the backing registration once was dropped
/// by a release while a concurrent open was about to use it).
#[test]
fn racing_passthrough_opens_and_releases_all_succeed() {
    crate::require_mount!();
    let data = pattern(256 << 10, 21);
    let m = with_cached_file("film.mkv", &data);
    require_passthrough(&m);
    let path = m.path("film.mkv");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (path, data) = (path.clone(), data.clone());
            std::thread::spawn(move || {
                for i in 0..300 {
                    let f = fs::File::open(&path)
                        .unwrap_or_else(|e| panic!("thread {t}, open {i}: {e}"));
                    let mut buf = vec![0u8; 4096];
                    let off = ((i * 4096 + t * 65536) % data.len()) as u64;
                    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, off)
                        .unwrap_or_else(|e| panic!("thread {t}, read {i}: {e}"));
                    assert_eq!(buf, data[off as usize..off as usize + 4096]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(num(&status(&m), "hits") >= 1200);
}

/// A reader already open on a cached file sees a write and a truncate made through the
/// mount, as on a plain directory: with passthrough off (the daemon reads the copy for
/// it) and on (the kernel reads the copy: a truncate shortens it too).
#[test]
fn open_readers_see_writes_and_truncates_through_the_mount() {
    crate::require_mount!();
    use std::os::unix::fs::FileExt;
    for pt in ["off", "auto"] {
        let data = pattern(512 << 10, 33);
        let d2 = data.clone();
        let m = TestMount::builder()
            .option("promote=manual")
            .option(&format!("passthrough={pt}"))
            .populate(move |src| fs::write(src.join("f"), &d2).unwrap())
            .start();
        promote_wait(&m, "f");
        let reader = fs::File::open(m.path("f")).unwrap();
        let mut buf = vec![0u8; 4096];
        reader.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, data[..4096], "passthrough={pt}");
        {
            let w = fs::OpenOptions::new()
                .write(true)
                .open(m.path("f"))
                .unwrap();
            w.write_all_at(b"NEW BYTES", 300_000).unwrap();
            w.write_all_at(b"HEAD", 0).unwrap();
            drop(w);
            let mut got = vec![0u8; 9];
            reader.read_exact_at(&mut got, 300_000).unwrap();
            assert_eq!(&got, b"NEW BYTES", "a reader read old bytes after a write");
            let mut got = vec![0u8; 4];
            reader.read_exact_at(&mut got, 0).unwrap();
            assert_eq!(&got, b"HEAD");
        }
        // Truncate by path, as a tagger or `truncate -s` would.
        let c = cpath(&m.path("f"));
        // SAFETY: c is NUL-terminated.
        assert_eq!(
            unsafe { libc::truncate(c.as_ptr(), 4096) },
            0,
            "passthrough={pt}"
        );
        let mut rest = vec![0u8; 256 << 10];
        let n = reader.read_at(&mut rest, 8192).unwrap();
        assert_eq!(
            n, 0,
            "passthrough={pt}: a reader read {n} old bytes past a truncate"
        );
        assert_eq!(reader.metadata().unwrap().len(), 4096);
        let n = reader.read_at(&mut rest, 0).unwrap();
        assert_eq!(n, 4096, "passthrough={pt}");
    }
}

/// A rewrite behind the mount that puts the mtime back (taggers, `rsync -t`): size,
/// mtime and inode still match the copy, the ctime does not, so the copy is never
/// served; the background re-check finds other bytes and drops it.
#[test]
fn rewrite_behind_the_mount_restoring_mtime_is_never_served_stale() {
    crate::require_mount!();
    let old = pattern(256 << 10, 41);
    let new = pattern(256 << 10, 42);
    let m = with_cached_file("song.flac", &old);
    assert_eq!(num(&status(&m), "cached_files"), 1);
    let mtime = fs::metadata(m.src("song.flac"))
        .unwrap()
        .modified()
        .unwrap();
    fs::write(m.src("song.flac"), &new).unwrap();
    fs::File::options()
        .write(true)
        .open(m.src("song.flac"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(
        fs::metadata(m.src("song.flac"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    assert_eq!(
        fs::read(m.path("song.flac")).unwrap(),
        new,
        "served the stale copy"
    );
    eventually("the re-check to drop the copy", &m, || {
        num(&status(&m), "cached_files") == 0
    });
    assert_eq!(fs::read(m.path("song.flac")).unwrap(), new);
}

/// A change of metadata alone behind the mount (`chmod -R`, `chown -R` over an array):
/// SOURCE is served while the copy is compared with it in the background, and the copy,
/// found identical, is served again, not thrown away.
#[test]
fn metadata_change_behind_the_mount_keeps_the_copy_after_a_recheck() {
    crate::require_mount!();
    let data = pattern(256 << 10, 43);
    let m = with_cached_file("film.mkv", &data);
    fs::set_permissions(m.src("film.mkv"), fs::Permissions::from_mode(0o600)).unwrap();
    chown(m.src("film.mkv"), Some(OTHER_UID), None).unwrap();
    let hits = num(&status(&m), "hits");
    assert_eq!(fs::read(m.path("film.mkv")).unwrap(), data);
    assert_eq!(
        num(&status(&m), "hits"),
        hits,
        "served a copy before it was re-checked"
    );
    eventually("the re-checked copy to be served", &m, || {
        let h = num(&status(&m), "hits");
        let bytes = fs::read(m.path("film.mkv")).unwrap();
        assert_eq!(bytes, data);
        num(&status(&m), "hits") > h
    });
    assert_eq!(num(&status(&m), "cached_files"), 1);
    assert!(m.log_contents().contains("kept the copy of film.mkv"));
}

/// Two players read a cached film by passthrough while a tagger opens it for writing and
/// rewrites it: the tagger's open succeeds (the kernel once refused it with EIO, and
/// every later open too, because an inode with a passthrough backing file takes no
/// other kind of open), the players read the new bytes, later opens read them too, and
/// a truncate shortens what the players see.
#[test]
fn tagger_rewrites_a_film_two_players_read_by_passthrough() {
    crate::require_mount!();
    use std::os::unix::fs::FileExt;
    let data = pattern(1 << 20, 51);
    let m = with_cached_file("film.mkv", &data);
    require_passthrough(&m);
    let hits = num(&status(&m), "hits");
    let players: Vec<fs::File> = (0..2)
        .map(|_| fs::File::open(m.path("film.mkv")).unwrap())
        .collect();
    assert_eq!(
        num(&status(&m), "hits"),
        hits + 2,
        "the players are not on the copy"
    );
    let mut buf = vec![0u8; 4096];
    for p in &players {
        p.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, data[..4096]);
    }

    let tagger = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("film.mkv"))
        .expect("the tagger's open beside passthrough players");
    tagger.write_all_at(b"TAGS", 0).unwrap();
    tagger.write_all_at(b"MORE", 600_000).unwrap();
    let mut want = data.clone();
    want[..4].copy_from_slice(b"TAGS");
    want[600_000..600_004].copy_from_slice(b"MORE");
    assert_eq!(fs::read(m.src("film.mkv")).unwrap(), want, "SOURCE");
    for (i, p) in players.iter().enumerate() {
        let mut got = [0u8; 4];
        p.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"TAGS", "player {i} read old bytes at 0");
        p.read_exact_at(&mut got, 600_000).unwrap();
        assert_eq!(&got, b"MORE", "player {i} read old bytes at 600000");
    }
    // Opens while all of them are open: read-only and read-write alike.
    assert_eq!(fs::read(m.path("film.mkv")).unwrap(), want, "a new reader");
    drop(
        fs::OpenOptions::new()
            .write(true)
            .open(m.path("film.mkv"))
            .expect("a second writer"),
    );
    drop(tagger);
    let c = cpath(&m.path("film.mkv"));
    // SAFETY: c is NUL-terminated.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 4096) }, 0);
    let mut rest = vec![0u8; 64 << 10];
    for p in &players {
        assert_eq!(
            p.read_at(&mut rest, 8192).unwrap(),
            0,
            "old bytes past the truncate"
        );
    }
    drop(players);
    assert_eq!(fs::read(m.path("film.mkv")).unwrap(), want[..4096]);
    assert_eq!(fs::read(m.src("film.mkv")).unwrap(), want[..4096]);
}

/// A mount (promote=manual, attr_timeout=60, entry_timeout=1) whose SOURCE holds `name`
/// with `data`, promoted, and a read-write descriptor of it on a kernel inode of its own:
/// opened beside a passthrough reader, which is gone again, and the name leads to the
/// file's own inode once more. Attributes are cached for long and names briefly, so only
/// the daemon's notifications make one inode see a change made through the other in time.
fn writer_on_a_kernel_inode_of_its_own(name: &'static str, data: &[u8]) -> (TestMount, fs::File) {
    use std::os::unix::fs::MetadataExt;
    let d = data.to_vec();
    let m = TestMount::builder()
        .option("promote=manual")
        .option("attr_timeout=60,entry_timeout=1")
        .populate(move |src| fs::write(src.join(name), &d).unwrap())
        .start();
    promote_wait(&m, name);
    require_passthrough(&m);
    let player = fs::File::open(m.path(name)).unwrap();
    let writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path(name))
        .unwrap();
    let writer_ino = writer.metadata().unwrap().ino();
    assert_ne!(
        player.metadata().unwrap().ino(),
        writer_ino,
        "one kernel inode"
    );
    drop(player);
    // Once the name's entry expires, it leads to the file's own inode again.
    eventually("the name to lead to the own inode", &m, || {
        fs::metadata(m.path(name)).unwrap().ino() != writer_ino
    });
    (m, writer)
}

/// After the passthrough readers that made a writer's open land on a second kernel
/// inode (see the tagger test) are gone, the name leads to the file's own inode again
/// while the writer keeps the other: a truncate through the name must show at once
/// through the writer's descriptor too (found by the exerciser: a read past the new end
/// returned old bytes).
#[test]
fn change_through_one_kernel_inode_shows_through_the_other() {
    crate::require_mount!();
    use std::os::unix::fs::FileExt;
    let data = pattern(1 << 20, 61);
    let (m, writer) = writer_on_a_kernel_inode_of_its_own("film.mkv", &data);
    let c = cpath(&m.path("film.mkv"));
    // SAFETY: c is NUL-terminated.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 4096) }, 0);
    assert_eq!(
        writer.metadata().unwrap().len(),
        4096,
        "the writer's inode kept the old size"
    );
    let mut buf = vec![0u8; 64 << 10];
    assert_eq!(
        writer.read_at(&mut buf, 8192).unwrap(),
        0,
        "old bytes past the new end"
    );
    // And the other way: a write through the writer's inode shows through the name.
    writer.write_all_at(b"NEW", 0).unwrap();
    assert_eq!(&fs::read(m.path("film.mkv")).unwrap()[..3], b"NEW");
}

/// Found by the promoting parity scripts (locks on a descriptor served from a copy): a
/// writer opened beside a passthrough reader is given a kernel inode of its own (its open
/// is answered ESTALE, see `overlay::file`), and the kernel kept POSIX and flock locks
/// per inode, so the reader's locks did not exist for the writer. On a plain directory
/// they conflict; the daemon now holds the locks on SOURCE (`overlay::locks`). More in
/// `locks.rs`.
#[test]
fn locks_hold_between_a_passthrough_reader_and_a_later_writer() {
    crate::require_mount!();
    use std::os::fd::AsRawFd;
    let m = with_cached_file("f", &pattern(64 << 10, 51));
    require_passthrough(&m);
    let reader = fs::File::open(m.path("f")).unwrap();
    // SAFETY: reader is open; fl is a local.
    let rc = unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_RDLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_len = 100;
        libc::fcntl(reader.as_raw_fd(), libc::F_SETLK, &mut fl)
    };
    assert_eq!(rc, 0, "F_SETLK read lock");
    fn write_lock(fd: libc::c_int) -> libc::c_int {
        // SAFETY: fd is open; fl is a local.
        unsafe {
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_len = 10;
            libc::fcntl(fd, libc::F_SETLK, &mut fl)
        }
    }
    assert_eq!(
        child_on(&m.path("f"), libc::O_RDWR, write_lock),
        libc::EAGAIN,
        "a writer took a write lock over a passthrough reader's read lock"
    );
    // SAFETY: reader is open.
    assert_eq!(
        unsafe { libc::flock(reader.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    fn flock_ex(fd: libc::c_int) -> libc::c_int {
        // SAFETY: fd is open.
        unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }
    }
    assert_eq!(
        child_on(&m.path("f"), libc::O_RDWR, flock_ex),
        libc::EWOULDBLOCK,
        "a writer took an flock held by a passthrough reader"
    );
}

/// Found by the exerciser (SIGBUS in the test binary): a writer's descriptor is on a
/// kernel inode of its own (opened beside a passthrough reader), the reader is gone and
/// the name leads to the file's own inode again; a truncate through the name grows the
/// file. A mapping of the writer's descriptor past the old end must read the new zeros:
/// the kernel asks the daemon nothing at a fault, and a page past the size its inode has
/// is a SIGBUS.
#[test]
fn truncate_up_through_another_kernel_inode_grows_the_writers_mapping() {
    crate::require_mount!();
    use std::os::fd::AsRawFd;
    const OLD: u64 = 900_000;
    const NEW: u64 = 947_256;
    let data = pattern(OLD as usize, 71);
    let (m, writer) = writer_on_a_kernel_inode_of_its_own("f.bin", &data);
    fs::OpenOptions::new()
        .write(true)
        .open(m.path("f.bin"))
        .and_then(|f| f.set_len(NEW))
        .unwrap();
    // Nothing may ask for the writer's attributes before the mapping does its reads.
    let off = OLD & !4095;
    let got = crate::common::mmap_read_in_child(writer.as_raw_fd(), off, (NEW - off) as usize)
        .unwrap_or_else(|e| panic!("mapping the writer's descriptor past the old end: {e}"));
    let mut want = data[off as usize..].to_vec();
    want.resize((NEW - off) as usize, 0);
    assert!(got == want, "the writer's mapping read other bytes");
}

/// Found with the exerciser's "wrong mmap bytes" (passthrough on): a write through the
/// writer's kernel inode returned while the other inode still had its old pages cached
/// (they were dropped by a thread nobody waited for), and a mapping there reads cached
/// pages without asking the daemon: right after the write it read the old bytes (in 16
/// and 33 of 300 rounds in two runs before the fix).
#[test]
fn write_through_one_kernel_inode_shows_in_the_others_mapping_at_once() {
    crate::require_mount!();
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, MetadataExt};
    let data = pattern(1 << 20, 81);
    let (m, writer) = writer_on_a_kernel_inode_of_its_own("f.bin", &data);
    let reader = fs::File::open(m.path("f.bin")).unwrap();
    assert_ne!(
        reader.metadata().unwrap().ino(),
        writer.metadata().unwrap().ino(),
        "one kernel inode"
    );
    let mapped = |off: u64| {
        crate::common::mmap_read_in_child(reader.as_raw_fd(), off, 4096)
            .unwrap_or_else(|e| panic!("mapping the reader at {off}: {e}"))
    };
    let mut stale = Vec::new();
    for round in 0..300u64 {
        let off = (round % 200) * 4096;
        // The reader's pages there are cached, then the writer changes every byte.
        let new: Vec<u8> = mapped(off).iter().map(|b| !b).collect();
        writer.write_all_at(&new, off).unwrap();
        if mapped(off) != new {
            stale.push(round);
        }
    }
    assert!(stale.is_empty(), "old bytes mapped after rounds {stale:?}");
}

/// Two appenders through two kernel inodes of one file at once: each write's worker
/// waits for the other inode to take the change in (its last page and its pages), while
/// the other write holds that inode's last page, partly written, until its worker
/// answers. Waiting for each other, bounded, cost 500 ms a write (1000 writes took 256 s,
/// and 15 s with a single queue for all nodes); they must not wait for each other.
#[test]
fn two_writers_through_two_kernel_inodes_do_not_stall_each_other() {
    crate::require_mount!();
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    let data = pattern(1 << 20, 91);
    let (m, writer) = writer_on_a_kernel_inode_of_its_own("f.bin", &data);
    let other = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f.bin"))
        .unwrap();
    let end = AtomicU64::new(data.len() as u64);
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for (f, byte) in [(&writer, 1u8), (&other, 2u8)] {
            let end = &end;
            s.spawn(move || {
                // Not a whole page: the kernel keeps the last one locked while it waits.
                for _ in 0..300 {
                    let at = end.fetch_add(3000, Ordering::SeqCst);
                    f.write_all_at(&[byte; 3000], at).unwrap();
                }
            });
        }
    });
    let took = t0.elapsed();
    assert!(
        took < std::time::Duration::from_secs(30),
        "600 appends took {took:?}"
    );
    let got = fs::read(m.path("f.bin")).unwrap();
    assert_eq!(got.len() as u64, end.load(Ordering::SeqCst));
    assert_eq!(got[..data.len()], data[..]);
    assert!(got[data.len()..].iter().all(|&b| b == 1 || b == 2));
}

/// Found while looking for the exerciser's SIGBUS: an open with O_TRUNC beside a
/// passthrough reader (given a kernel inode of its own, see the tagger test) emptied the
/// file in SOURCE, but the reader's backing copy kept every byte: the kernel sends no
/// SETATTR for O_TRUNC (FUSE_ATOMIC_O_TRUNC), and only a truncate was mirrored to the
/// copies and told to the other kernel inodes.
#[test]
fn o_trunc_beside_a_passthrough_reader_empties_what_it_reads() {
    crate::require_mount!();
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let data = pattern(1 << 20, 101);
    let m = with_cached_file("film.mkv", &data);
    require_passthrough(&m);
    let player = fs::File::open(m.path("film.mkv")).unwrap();
    let mut buf = vec![0u8; 4096];
    player.read_exact_at(&mut buf, 0).unwrap();
    let writer = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TRUNC)
        .open(m.path("film.mkv"))
        .expect("an O_TRUNC open beside a passthrough reader");
    assert_eq!(fs::metadata(m.src("film.mkv")).unwrap().len(), 0, "SOURCE");
    assert_eq!(player.metadata().unwrap().len(), 0, "the reader's size");
    assert_eq!(
        player.read_at(&mut buf, 8192).unwrap(),
        0,
        "the reader read old bytes"
    );
    writer.write_all_at(b"new", 0).unwrap();
    let mut got = [0u8; 8];
    assert_eq!(player.read_at(&mut got, 0).unwrap(), 3);
    assert_eq!(&got[..3], b"new");
}

/// Found beside fsx: a copy_file_range into a descriptor opened write-only beside a
/// passthrough reader of the copy left the reader with the old bytes (the mirror re-read
/// what had landed through the caller's write-only descriptor: EBADF). The reader must
/// see the copied bytes, as on a plain directory.
#[test]
fn copy_file_range_into_a_write_only_descriptor_reaches_a_passthrough_reader() {
    crate::require_mount!();
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let old = pattern(256 << 10, 81);
    let new = pattern(4096, 82);
    let m = with_cached_file("f", &old);
    require_passthrough(&m);
    fs::write(m.source.join("donor"), &new).unwrap();
    let reader = fs::File::open(m.path("f")).unwrap();
    assert_eq!(
        num(&status(&m), "passthrough_opens"),
        1,
        "the reader is not on the copy"
    );
    let donor = fs::File::open(m.path("donor")).unwrap();
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(m.path("f"))
        .unwrap();
    let (mut off_in, mut off_out): (i64, i64) = (0, 8192);
    // SAFETY: both descriptors are open; the offsets are locals.
    let n = unsafe {
        libc::copy_file_range(
            donor.as_raw_fd(),
            &mut off_in,
            writer.as_raw_fd(),
            &mut off_out,
            new.len(),
            0,
        )
    };
    assert_eq!(
        n,
        new.len() as isize,
        "copy_file_range: {}",
        std::io::Error::last_os_error()
    );
    let mut got = vec![0u8; new.len()];
    reader.read_exact_at(&mut got, 8192).unwrap();
    assert!(
        got == new,
        "the passthrough reader read the old bytes after the copy"
    );
    let mut want = old.clone();
    want[8192..8192 + new.len()].copy_from_slice(&new);
    assert!(fs::read(m.source.join("f")).unwrap() == want);
    assert!(fs::read(m.path("f")).unwrap() == want);
}

/// Found beside fsx with a whole-file reader: a reader's open picked the copy, and a
/// write that dropped it arrived before the open had registered, so the reader kept
/// reading the old copy (a short read there then cut the kernel's idea of the size).
/// Many opens racing many writes: every read after a write returned sees its bytes.
#[test]
fn readers_opening_beside_a_writer_never_read_the_copy_it_dropped() {
    crate::require_mount!();
    use std::os::unix::fs::FileExt;
    let size = 192 << 10;
    let m = TestMount::builder()
        .option("promote_after=64K")
        .option("prefetch=0")
        .populate(move |src| fs::write(src.join("f"), pattern(size, 90)).unwrap())
        .start();
    let path = m.path("f");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Whole-file readers, over and over: each read of the file promotes it (64K), and
    // each open may pick the copy.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (p, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = fs::read(&p);
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut round = 0u64;
    // Until copies have come and gone often enough to meet the writes (bounded).
    while round < 300
        || (round < 20_000 && !round.is_multiple_of(50))
        || (round < 20_000 && num(&status(&m), "promotions_done") < 20)
    {
        round += 1;
        let w = fs::OpenOptions::new().write(true).open(&path).unwrap();
        let stamp = round.to_le_bytes();
        let at = (round * 4099) % (size as u64 - 8);
        w.write_all_at(&stamp, at).unwrap();
        drop(w);
        // A fresh open after the write returned must see it, wherever it is served from.
        let r = fs::File::open(&path).unwrap();
        let mut got = [0u8; 8];
        r.read_exact_at(&mut got, at).unwrap();
        let len = r.metadata().unwrap().len();
        if got != stamp || len != size as u64 {
            failures.push(format!("round {round}: read {got:?} at {at} (size {len})"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(
        failures.is_empty(),
        "stale reads: {failures:?}\nlog:\n{}",
        m.log_contents()
    );
    let st = status(&m);
    assert!(
        num(&st, "promotions_done") >= 20 && num(&st, "hits") > 0,
        "copies were not made and served often enough to meet the writes: {st}"
    );
}
