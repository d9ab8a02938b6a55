//! A second user through an `--allow-other` mount. Each step runs in a child process with
//! that user's credentials and records 0 or the errno; the same steps on a plain directory
//! must give the same results. Files the user creates must be owned by the user in SOURCE.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::{
    Creds, OTHER_GID, OTHER_UID, Outcomes, TestMount, as_user, assert_same, cpath, errno,
    plain_dir, rc,
};
use crate::require_mount;

/// The tree both runs start from, made by root.
fn setup(root: &Path) {
    let mk = |rel: &str, mode: u32| {
        fs::create_dir(root.join(rel)).expect("mkdir");
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let wr = |rel: &str, data: &[u8], mode: u32| {
        fs::write(root.join(rel), data).expect("write");
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
    };
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod root");
    wr("secret", b"top secret", 0o600);
    wr("readable", b"for all to read", 0o644);
    mk("rootdir", 0o755);
    wr("rootdir/file", b"root's", 0o644);
    mk("private", 0o700);
    wr("private/x", b"x", 0o644);
    mk("pub", 0o1777);
    wr("pub/rootfile", b"root's in pub", 0o666);
    mk("open", 0o777);
    wr("open/rootfile", b"root's in open", 0o644);
    // setgid directory of a group the user is not in.
    mk("sgid", 0o777);
    std::os::unix::fs::chown(root.join("sgid"), None, Some(2000)).expect("chgrp");
    fs::set_permissions(root.join("sgid"), fs::Permissions::from_mode(0o2777)).expect("chmod");
    // A group directory: only members of gid 3000 may write.
    mk("grp", 0o770);
    std::os::unix::fs::chown(root.join("grp"), None, Some(3000)).expect("chgrp");
}

/// One step as a user: `f` gets prepared C paths (root-relative) and returns 0 or errno.
fn step<F>(out: &mut Outcomes, creds: &Creds, name: &str, root: &Path, rels: &[&str], f: F)
where
    F: Fn(&[CString]) -> i32 + Send + Sync + 'static,
{
    let paths: Vec<CString> = rels.iter().map(|r| cpath(&root.join(r))).collect();
    let code = as_user(creds, move || f(&paths));
    out.code(name, code);
}

/// utimensat(2) with explicit atime and mtime (whole seconds): 0 or the errno.
/// Async-signal-safe, for use in the user's child process.
fn set_times(path: &CString, atime: i64, mtime: i64) -> i32 {
    let t = [
        libc::timespec {
            tv_sec: atime,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    ];
    // SAFETY: path is NUL-terminated and t holds the two timespecs utimensat reads.
    rc(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), t.as_ptr(), 0) })
}

/// The user script. Returns the outcomes, including root's view of what the user made.
fn script(root: &Path) -> Outcomes {
    let mut o = Outcomes::default();
    let u = Creds::other();
    let o_ = &mut o;
    // SAFETY (every closure below): async-signal-safe libc calls on paths prepared before
    // the fork; no allocation.
    step(
        o_,
        &u,
        "read 0600 root file",
        root,
        &["secret"],
        |p| unsafe { rc(libc::open(p[0].as_ptr(), libc::O_RDONLY)) },
    );
    step(
        o_,
        &u,
        "read 0644 root file",
        root,
        &["readable"],
        |p| unsafe { rc(libc::open(p[0].as_ptr(), libc::O_RDONLY)) },
    );
    step(
        o_,
        &u,
        "write 0644 root file",
        root,
        &["readable"],
        |p| unsafe { rc(libc::open(p[0].as_ptr(), libc::O_WRONLY)) },
    );
    step(o_, &u, "chmod root file", root, &["secret"], |p| unsafe {
        rc(libc::chmod(p[0].as_ptr(), 0o644))
    });
    step(
        o_,
        &u,
        "chown root file to self",
        root,
        &["secret"],
        |p| unsafe { rc(libc::chown(p[0].as_ptr(), OTHER_UID, OTHER_GID)) },
    );
    step(o_, &u, "chgrp root file", root, &["readable"], |p| unsafe {
        rc(libc::chown(p[0].as_ptr(), u32::MAX, OTHER_GID))
    });
    step(
        o_,
        &u,
        "truncate root file",
        root,
        &["readable"],
        |p| unsafe { rc(libc::truncate(p[0].as_ptr(), 0)) },
    );
    step(
        o_,
        &u,
        "utimensat NULL on root file",
        root,
        &["readable"],
        |p| unsafe {
            rc(libc::utimensat(
                libc::AT_FDCWD,
                p[0].as_ptr(),
                std::ptr::null(),
                0,
            ))
        },
    );
    step(
        o_,
        &u,
        "utimensat explicit on root file",
        root,
        &["readable"],
        |p| set_times(&p[0], 1, 2),
    );
    step(
        o_,
        &u,
        "setxattr user.* on root file",
        root,
        &["readable"],
        |p| unsafe {
            rc(libc::setxattr(
                p[0].as_ptr(),
                c"user.x".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                0,
            ))
        },
    );
    step(
        o_,
        &u,
        "getxattr on 0600 root file",
        root,
        &["secret"],
        |p| unsafe {
            let mut b = [0u8; 8];
            let r = libc::getxattr(p[0].as_ptr(), c"user.x".as_ptr(), b.as_mut_ptr().cast(), 8);
            if r < 0 { errno() } else { 0 }
        },
    );
    step(
        o_,
        &u,
        "access R_OK 0600 root file",
        root,
        &["secret"],
        |p| unsafe { rc(libc::access(p[0].as_ptr(), libc::R_OK)) },
    );
    step(
        o_,
        &u,
        "access R_OK 0644 root file",
        root,
        &["readable"],
        |p| unsafe { rc(libc::access(p[0].as_ptr(), libc::R_OK)) },
    );
    step(
        o_,
        &u,
        "access W_OK 0644 root file",
        root,
        &["readable"],
        |p| unsafe { rc(libc::access(p[0].as_ptr(), libc::W_OK)) },
    );
    step(
        o_,
        &u,
        "create in 0755 root dir",
        root,
        &["rootdir/new"],
        |p| unsafe {
            rc(libc::open(
                p[0].as_ptr(),
                libc::O_CREAT | libc::O_WRONLY,
                0o644,
            ))
        },
    );
    step(
        o_,
        &u,
        "mkdir in 0755 root dir",
        root,
        &["rootdir/d"],
        |p| unsafe { rc(libc::mkdir(p[0].as_ptr(), 0o755)) },
    );
    step(
        o_,
        &u,
        "mknod fifo in 0755 root dir",
        root,
        &["rootdir/fifo"],
        |p| unsafe { rc(libc::mknod(p[0].as_ptr(), libc::S_IFIFO | 0o644, 0)) },
    );
    step(
        o_,
        &u,
        "symlink in 0755 root dir",
        root,
        &["rootdir/l"],
        |p| unsafe { rc(libc::symlink(c"x".as_ptr(), p[0].as_ptr())) },
    );
    step(
        o_,
        &u,
        "unlink in 0755 root dir",
        root,
        &["rootdir/file"],
        |p| unsafe { rc(libc::unlink(p[0].as_ptr())) },
    );
    step(
        o_,
        &u,
        "rename out of 0755 root dir",
        root,
        &["rootdir/file", "pub/stolen"],
        |p| unsafe { rc(libc::rename(p[0].as_ptr(), p[1].as_ptr())) },
    );
    step(
        o_,
        &u,
        "link into 0755 root dir",
        root,
        &["readable", "rootdir/hl"],
        |p| unsafe { rc(libc::link(p[0].as_ptr(), p[1].as_ptr())) },
    );
    step(
        o_,
        &u,
        "opendir 0700 root dir",
        root,
        &["private"],
        |p| unsafe {
            let d = libc::opendir(p[0].as_ptr());
            if d.is_null() {
                errno()
            } else {
                libc::closedir(d);
                0
            }
        },
    );
    step(
        o_,
        &u,
        "stat inside 0700 root dir",
        root,
        &["private/x"],
        |p| unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            rc(libc::lstat(p[0].as_ptr(), &mut st))
        },
    );
    step(
        o_,
        &u,
        "unlink root file in sticky dir",
        root,
        &["pub/rootfile"],
        |p| unsafe { rc(libc::unlink(p[0].as_ptr())) },
    );
    step(
        o_,
        &u,
        "rename root file in sticky dir",
        root,
        &["pub/rootfile", "pub/moved"],
        |p| unsafe { rc(libc::rename(p[0].as_ptr(), p[1].as_ptr())) },
    );
    step(
        o_,
        &u,
        "write 0666 root file in sticky dir",
        root,
        &["pub/rootfile"],
        |p| unsafe {
            let fd = libc::open(p[0].as_ptr(), libc::O_WRONLY | libc::O_APPEND);
            if fd < 0 {
                return errno();
            }
            let r = libc::write(fd, b"+".as_ptr().cast(), 1);
            if r < 0 { errno() } else { 0 }
        },
    );
    step(
        o_,
        &u,
        "unlink root file in 0777 dir",
        root,
        &["open/rootfile"],
        |p| unsafe { rc(libc::unlink(p[0].as_ptr())) },
    );
    // What the user may do with its own files.
    step(o_, &u, "create own file", root, &["pub/mine"], |p| unsafe {
        let fd = libc::open(
            p[0].as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o644,
        );
        if fd < 0 {
            return errno();
        }
        let r = libc::write(fd, b"mine".as_ptr().cast(), 4);
        if r < 0 {
            return errno();
        }
        rc(libc::close(fd))
    });
    step(
        o_,
        &u,
        "chmod own file 0600",
        root,
        &["pub/mine"],
        |p| unsafe { rc(libc::chmod(p[0].as_ptr(), 0o600)) },
    );
    step(
        o_,
        &u,
        "chown own file to root",
        root,
        &["pub/mine"],
        |p| unsafe { rc(libc::chown(p[0].as_ptr(), 0, u32::MAX)) },
    );
    step(
        o_,
        &u,
        "chgrp own file to a foreign group",
        root,
        &["pub/mine"],
        |p| unsafe { rc(libc::chown(p[0].as_ptr(), u32::MAX, 0)) },
    );
    step(
        o_,
        &u,
        "chown own file to self",
        root,
        &["pub/mine"],
        |p| unsafe { rc(libc::chown(p[0].as_ptr(), OTHER_UID, OTHER_GID)) },
    );
    step(
        o_,
        &u,
        "chmod g+s own file, group not ours",
        root,
        &["sgid/f"],
        |p| unsafe {
            // Made in the setgid dir, so its group (2000) is not the user's: the kernel drops
            // S_ISGID from the requested mode.
            let fd = libc::open(
                p[0].as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            );
            if fd < 0 {
                return errno();
            }
            libc::close(fd);
            rc(libc::chmod(p[0].as_ptr(), 0o2755))
        },
    );
    step(o_, &u, "mkdir own dir", root, &["pub/mydir"], |p| unsafe {
        rc(libc::mkdir(p[0].as_ptr(), 0o750))
    });
    step(
        o_,
        &u,
        "mkdir in setgid dir",
        root,
        &["sgid/d"],
        |p| unsafe { rc(libc::mkdir(p[0].as_ptr(), 0o755)) },
    );
    step(o_, &u, "symlink own", root, &["pub/mylink"], |p| unsafe {
        rc(libc::symlink(c"mine".as_ptr(), p[0].as_ptr()))
    });
    step(o_, &u, "mkfifo own", root, &["pub/myfifo"], |p| unsafe {
        rc(libc::mknod(p[0].as_ptr(), libc::S_IFIFO | 0o600, 0))
    });
    step(
        o_,
        &u,
        "utimensat explicit own file",
        root,
        &["pub/mine"],
        |p| set_times(&p[0], 100, 200),
    );
    step(
        o_,
        &u,
        "setxattr user.* own file",
        root,
        &["pub/mine"],
        |p| unsafe {
            rc(libc::setxattr(
                p[0].as_ptr(),
                c"user.mine".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                0,
            ))
        },
    );
    step(
        o_,
        &u,
        "rename own file",
        root,
        &["pub/mine", "pub/mine2"],
        |p| unsafe { rc(libc::rename(p[0].as_ptr(), p[1].as_ptr())) },
    );
    step(
        o_,
        &u,
        "hard link to root's 0644 file",
        root,
        &["readable", "pub/hl"],
        |p| unsafe {
            // fs.protected_hardlinks: the user may not link a file it cannot write.
            rc(libc::link(p[0].as_ptr(), p[1].as_ptr()))
        },
    );
    step(
        o_,
        &u,
        "create in group dir, not a member",
        root,
        &["grp/a"],
        |p| unsafe {
            rc(libc::open(
                p[0].as_ptr(),
                libc::O_CREAT | libc::O_WRONLY,
                0o644,
            ))
        },
    );
    let member = Creds::other().with_groups(&[3000]);
    step(
        o_,
        &member,
        "create in group dir as a member",
        root,
        &["grp/b"],
        |p| unsafe {
            rc(libc::open(
                p[0].as_ptr(),
                libc::O_CREAT | libc::O_WRONLY,
                0o644,
            ))
        },
    );
    step(
        o_,
        &u,
        "chmod own file 0000 then read",
        root,
        &["pub/mine2"],
        |p| unsafe {
            if libc::chmod(p[0].as_ptr(), 0) != 0 {
                return errno();
            }
            rc(libc::open(p[0].as_ptr(), libc::O_RDONLY))
        },
    );
    step(
        o_,
        &u,
        "unlink own file",
        root,
        &["pub/mine2"],
        |p| unsafe { rc(libc::unlink(p[0].as_ptr())) },
    );
    // Root's view of what happened.
    for rel in [
        "secret",
        "readable",
        "rootdir",
        "rootdir/file",
        "pub/rootfile",
        "open/rootfile",
        "pub/mine2",
        "pub/mydir",
        "pub/mylink",
        "pub/myfifo",
        "sgid/f",
        "sgid/d",
        "grp/a",
        "grp/b",
        "pub/hl",
        "pub/stolen",
    ] {
        o.lstat(&format!("root sees {rel}"), &root.join(rel));
    }
    o
}

#[test]
fn second_user_parity() {
    require_mount!();
    let m = TestMount::builder().allow_other().populate(setup).start();
    let plain = plain_dir(true);
    let p = plain.path().join("t");
    fs::create_dir(&p).expect("mkdir");
    setup(&p);
    let on_mount = script(&m.mnt);
    let on_plain = script(&p);
    if std::env::var_os("CACHEFS_TEST_DUMP").is_some() {
        eprintln!(
            "--- second user on the mount ---\n{}",
            on_mount.lines.join("\n")
        );
    }
    assert_same("second user", &on_mount, &on_plain);
}

#[test]
fn second_user_files_are_owned_by_them_in_source() {
    require_mount!();
    let m = TestMount::builder().allow_other().populate(setup).start();
    let u = Creds::other();
    let mut o = Outcomes::default();
    step(&mut o, &u, "create", &m.mnt, &["pub/new"], |p| unsafe {
        // SAFETY: async-signal-safe call on a prepared path.
        rc(libc::open(
            p[0].as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o640,
        ))
    });
    step(&mut o, &u, "mkdir", &m.mnt, &["pub/newdir"], |p| unsafe {
        // SAFETY: as above.
        rc(libc::mkdir(p[0].as_ptr(), 0o750))
    });
    step(
        &mut o,
        &u,
        "symlink",
        &m.mnt,
        &["pub/newlink"],
        |p| unsafe {
            // SAFETY: as above.
            rc(libc::symlink(c"new".as_ptr(), p[0].as_ptr()))
        },
    );
    step(&mut o, &u, "mkfifo", &m.mnt, &["pub/newfifo"], |p| unsafe {
        // SAFETY: as above.
        rc(libc::mknod(p[0].as_ptr(), libc::S_IFIFO | 0o600, 0))
    });
    step(
        &mut o,
        &u,
        "create in newdir",
        &m.mnt,
        &["pub/newdir/inner"],
        |p| unsafe {
            // SAFETY: as above.
            rc(libc::open(
                p[0].as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o600,
            ))
        },
    );
    assert!(
        o.lines.iter().all(|l| l.ends_with(": ok")),
        "steps as uid {OTHER_UID} failed: {:#?}",
        o.lines
    );
    for rel in [
        "pub/new",
        "pub/newdir",
        "pub/newlink",
        "pub/newfifo",
        "pub/newdir/inner",
    ] {
        let md = fs::symlink_metadata(m.src(rel)).unwrap_or_else(|e| panic!("SOURCE/{rel}: {e}"));
        assert_eq!(
            (md.uid(), md.gid()),
            (OTHER_UID, OTHER_GID),
            "owner of SOURCE/{rel}"
        );
        let via = fs::symlink_metadata(m.path(rel)).unwrap_or_else(|e| panic!("MNT/{rel}: {e}"));
        assert_eq!(
            (via.uid(), via.gid()),
            (OTHER_UID, OTHER_GID),
            "owner of MNT/{rel}"
        );
    }
    // Created by the user in a setgid directory: the group is inherited, also in SOURCE.
    step(
        &mut o,
        &u,
        "create in setgid dir",
        &m.mnt,
        &["sgid/new"],
        |p| unsafe {
            // SAFETY: as above.
            rc(libc::open(
                p[0].as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            ))
        },
    );
    let md = fs::metadata(m.src("sgid/new")).expect("SOURCE/sgid/new");
    assert_eq!(
        (md.uid(), md.gid()),
        (OTHER_UID, 2000),
        "owner of SOURCE/sgid/new"
    );
    // And the mode asked for (minus the umask of the caller, 022 by default here).
    let md = fs::metadata(m.src("pub/new")).expect("SOURCE/pub/new");
    assert_eq!(md.mode() & 0o7777, 0o640, "mode of SOURCE/pub/new");
}

#[test]
fn without_allow_other_other_users_are_refused() {
    require_mount!();
    let m = TestMount::builder().populate(setup).start();
    // Make the way to MNT traversable, so only the mount itself can refuse.
    fs::set_permissions(&m.root, fs::Permissions::from_mode(0o755)).expect("chmod");
    let u = Creds::other();
    let mut o = Outcomes::default();
    step(&mut o, &u, "stat", &m.mnt, &["readable"], |p| unsafe {
        // SAFETY: async-signal-safe call on a prepared path.
        let mut st: libc::stat = std::mem::zeroed();
        rc(libc::lstat(p[0].as_ptr(), &mut st))
    });
    // The kernel refuses other users on a mount without allow_other, before the daemon
    // sees anything: EACCES.
    assert_eq!(o.lines, vec!["stat: ERR EACCES".to_string()]);
}

/// `allow_root`, as libfuse has it: the kernel lets every user in (allow_other, with its
/// permission checks), and the daemon answers anyone but root and the mount's owner (root
/// here) EACCES.
#[test]
fn allow_root_lets_root_in_and_refuses_other_users() {
    require_mount!();
    let m = TestMount::builder()
        .populate(setup)
        .option("allow_root")
        .start();
    fs::set_permissions(&m.root, fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(
        fs::read(m.path("readable")).expect("root reads"),
        b"for all to read"
    );
    let u = Creds::other();
    let mut o = Outcomes::default();
    step(&mut o, &u, "open", &m.mnt, &["readable"], |p| {
        // SAFETY: async-signal-safe calls on a prepared path.
        let fd = unsafe { libc::open(p[0].as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return errno();
        }
        // SAFETY: fd was just opened by this process.
        unsafe { libc::close(fd) };
        0
    });
    assert_eq!(o.lines, vec!["open: ERR EACCES".to_string()]);
}

/// A tree where ACL entries for the second user (uid 1000) grant what the mode bits
/// refuse, and refuse what they grant.
fn setup_acl(root: &Path) {
    let setfacl = |spec: &str, rel: &str| {
        let st = std::process::Command::new("setfacl")
            .args(["-m", spec])
            .arg(root.join(rel))
            .status()
            .expect("setfacl (the acl package; scripts/prereqs.sh)");
        assert!(st.success(), "setfacl -m {spec} {rel}: {st}");
    };
    let wr = |rel: &str, mode: u32| {
        fs::write(root.join(rel), rel.as_bytes()).expect("write");
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let mk = |rel: &str, mode: u32| {
        fs::create_dir(root.join(rel)).expect("mkdir");
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
    };
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod root");
    wr("granted", 0o600);
    setfacl("u:1000:r", "granted");
    wr("denied", 0o644);
    setfacl("u:1000:---", "denied");
    mk("gdir", 0o700);
    wr("gdir/file", 0o644);
    setfacl("u:1000:rx", "gdir");
    mk("wdir", 0o755);
    setfacl("u:1000:rwx", "wdir");
}

/// What the second user can do in `setup_acl`'s tree.
fn acl_script(root: &Path) -> Outcomes {
    let mut o = Outcomes::default();
    let u = Creds::other();
    fn open(flags: i32) -> impl Fn(&[CString]) -> i32 + Send + Sync + 'static {
        move |p: &[CString]| {
            // SAFETY: async-signal-safe calls on a prepared path.
            let fd = unsafe { libc::open(p[0].as_ptr(), flags, 0o666) };
            if fd < 0 {
                return errno();
            }
            // SAFETY: fd was just opened by this process.
            unsafe { libc::close(fd) };
            0
        }
    }
    fn access(mode: i32) -> impl Fn(&[CString]) -> i32 + Send + Sync + 'static {
        // SAFETY: async-signal-safe call on a prepared path.
        move |p: &[CString]| rc(unsafe { libc::access(p[0].as_ptr(), mode) })
    }
    step(
        &mut o,
        &u,
        "read granted",
        root,
        &["granted"],
        open(libc::O_RDONLY),
    );
    step(
        &mut o,
        &u,
        "access granted R",
        root,
        &["granted"],
        access(libc::R_OK),
    );
    step(
        &mut o,
        &u,
        "write granted",
        root,
        &["granted"],
        open(libc::O_WRONLY),
    );
    step(
        &mut o,
        &u,
        "read denied",
        root,
        &["denied"],
        open(libc::O_RDONLY),
    );
    step(
        &mut o,
        &u,
        "access denied R",
        root,
        &["denied"],
        access(libc::R_OK),
    );
    step(
        &mut o,
        &u,
        "list gdir",
        root,
        &["gdir"],
        open(libc::O_RDONLY | libc::O_DIRECTORY),
    );
    step(
        &mut o,
        &u,
        "read gdir/file",
        root,
        &["gdir/file"],
        open(libc::O_RDONLY),
    );
    let create = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    step(
        &mut o,
        &u,
        "create in gdir",
        root,
        &["gdir/new"],
        open(create),
    );
    step(
        &mut o,
        &u,
        "create in wdir",
        root,
        &["wdir/new"],
        open(create),
    );
    o.lstat("lstat wdir/new", &root.join("wdir/new"));
    o
}

/// Regression: an `allow_other` mount checks permissions in the kernel
/// (default_permissions), which ignored ACLs unless FUSE_POSIX_ACL was negotiated: a user
/// granted read by a named-user entry alone got EACCES, and one refused by such an entry
/// read what the mode bits let others read.
#[test]
fn named_user_acl_entries_grant_and_refuse_as_on_a_plain_directory() {
    require_mount!();
    let m = TestMount::builder()
        .allow_other()
        .populate(setup_acl)
        .start();
    let plain = plain_dir(true);
    let p = plain.path().join("t");
    fs::create_dir(&p).expect("mkdir");
    setup_acl(&p);
    let on_mount = acl_script(&m.mnt);
    let on_plain = acl_script(&p);
    assert_eq!(
        on_plain.lines[..2],
        ["read granted: ok", "access granted R: ok"],
        "the ACL grants the read on the plain directory"
    );
    assert_same("named-user ACL entries", &on_mount, &on_plain);
}
