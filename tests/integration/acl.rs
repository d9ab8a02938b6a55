//! POSIX ACLs with FUSE_POSIX_ACL: the kernel reads each inode's ACL once and keeps it
//! until it takes new attributes from the daemon. So `ls -l`, which asks for
//! `system.posix_acl_access` of every file, costs no request for it while the
//! attributes are fresh, and an ACL changed directly in SOURCE shows when a chmod made
//! there would. (Parity of the calls themselves, with and without `meta_ttl`, and of
//! creates under default ACLs is in `parity`; a second user's access through ACL entries
//! in `users`.)

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{TestMount, check_size, cpath, status};
use crate::require_mount;

/// The ACL `getfacl` shows for `path`, numeric ids, without the header; or its error.
fn getfacl(path: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["-n", "--omit-header"])
        .arg(path)
        .output()
        .expect("getfacl (the acl package; scripts/prereqs.sh)");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!("error: {}", String::from_utf8_lossy(&out.stderr))
    }
}

fn setfacl(spec: &str, path: &Path) {
    let st = Command::new("setfacl")
        .args(["-m", spec])
        .arg(path)
        .status()
        .expect("setfacl (the acl package; scripts/prereqs.sh)");
    assert!(st.success(), "setfacl -m {spec} {}: {st}", path.display());
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("lstat")
        .permissions()
        .mode()
        & 0o7777
}

/// The daemon's requests for extended attributes that needed SOURCE, so far.
fn xattr_requests(m: &TestMount) -> u64 {
    status(m)["source_ops"]["xattr"].as_u64().unwrap_or(0)
}

/// lgetxattr(`system.posix_acl_access`) as `ls -l` makes it: the size or the errno.
fn acl_query(path: &Path) -> Result<usize, i32> {
    let p = cpath(path);
    // SAFETY: a NUL-terminated path and name; a size query with a NULL buffer.
    check_size(unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    })
}

/// The point of FUSE_POSIX_ACL for a scan: a second `ls -l` of a directory, within the
/// attribute timeout, asks the daemon for no file's ACL (before: one request per file,
/// besides the one for `security.selinux` that remains).
#[test]
fn ls_l_asks_for_each_acl_once_while_attributes_are_fresh() {
    require_mount!();
    let m = TestMount::builder()
        .populate(|src| {
            for i in 0..40 {
                fs::write(src.join(format!("e{i:02}.mkv")), b"x").expect("write");
            }
            setfacl("u:1000:r", &src.join("e07.mkv"));
        })
        .start();
    let names: Vec<_> = (0..40).map(|i| m.path(format!("e{i:02}.mkv"))).collect();
    let ls_l = || -> Vec<Result<usize, i32>> {
        names
            .iter()
            .map(|p| {
                fs::symlink_metadata(p).expect("lstat");
                acl_query(p)
            })
            .collect()
    };
    let first = ls_l();
    let after_first = xattr_requests(&m);
    let again = ls_l();
    let after_again = xattr_requests(&m);
    assert_eq!(first, again, "the same answers");
    assert_eq!(
        first[7],
        Ok(44),
        "e07 has an ACL of five entries (with the mask)"
    );
    assert_eq!(first[0], Err(libc::ENODATA), "e00 has none");
    assert_eq!(
        after_again - after_first,
        0,
        "the second pass asked the daemon for ACLs ({after_first} requests after the first)"
    );
}

/// Polls until `seen` holds, at most `limit`; the number of rounds it took.
fn rounds_until(limit: Duration, mut seen: impl FnMut() -> bool) -> Option<u32> {
    let end = Instant::now() + limit;
    let mut n = 0;
    loop {
        if seen() {
            return Some(n);
        }
        if Instant::now() > end {
            return None;
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An ACL changed directly in SOURCE and a chmod made there at the same moment: through
/// the mount, the ACL shows no later than the new mode does (both once the kernel's
/// attributes, or with `meta_ttl` the daemon's, have expired).
fn source_acl_change_shows_with_the_chmod(options: &str) {
    let m = TestMount::builder()
        .option(options)
        .populate(|src| {
            for name in ["f", "g"] {
                fs::write(src.join(name), name).expect("write");
                fs::set_permissions(src.join(name), fs::Permissions::from_mode(0o644))
                    .expect("chmod");
            }
        })
        .start();
    let (f, g) = (m.path("f"), m.path("g"));
    // Known to the kernel (and the daemon), f first so that it expires first.
    assert_eq!(mode(&f), 0o644);
    let before = getfacl(&f);
    assert!(!before.contains("user:1000"), "no ACL yet: {before}");
    assert_eq!(mode(&g), 0o644);
    // In SOURCE: an entry that leaves f's mode as it is (the mask stays r), and a chmod.
    setfacl("u:1000:r", &m.src("f"));
    assert_eq!(mode(&m.src("f")), 0o644, "the ACL alone changed");
    fs::set_permissions(m.src("g"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let (mut acl_at, mut chmod_at) = (None, None);
    let mut round = 0;
    let done = rounds_until(Duration::from_secs(30), || {
        if chmod_at.is_none() && mode(&g) == 0o600 {
            chmod_at = Some(round);
        }
        if acl_at.is_none() {
            mode(&f);
            if getfacl(&f).contains("user:1000:r--") {
                acl_at = Some(round);
            }
        }
        round += 1;
        acl_at.is_some() && chmod_at.is_some()
    });
    assert!(
        done.is_some(),
        "{options}: after 30 s, the ACL seen in round {acl_at:?}, the chmod in {chmod_at:?}"
    );
    assert!(
        acl_at <= chmod_at,
        "{options}: the ACL showed in round {acl_at:?}, after the chmod (round {chmod_at:?})"
    );
    assert_eq!(mode(&f), 0o644);
    assert!(getfacl(&f).contains("mask::r--"), "{}", getfacl(&f));
}

#[test]
fn acl_changed_in_source_shows_with_a_chmod_after_attr_timeout() {
    require_mount!();
    source_acl_change_shows_with_the_chmod("attr_timeout=1");
}

#[test]
fn acl_changed_in_source_shows_with_a_chmod_after_meta_ttl() {
    require_mount!();
    source_acl_change_shows_with_the_chmod("attr_timeout=1,meta_ttl=2");
}

/// An ACL set through the mount shows at once, with the mode it implies, even while the
/// kernel's attributes and the daemon's metadata (`meta_ttl`) would otherwise hold for a
/// day; and so does its removal and a chmod that rewrites its mask.
#[test]
fn acl_set_through_the_mount_shows_at_once_under_long_timeouts() {
    require_mount!();
    let m = TestMount::builder()
        .option("attr_timeout=86400,meta_ttl=1d")
        .populate(|src| {
            fs::write(src.join("f"), b"f").expect("write");
            fs::set_permissions(src.join("f"), fs::Permissions::from_mode(0o600)).expect("chmod");
        })
        .start();
    let f = m.path("f");
    let src = m.src("f");
    // The mount and SOURCE agree right after each change through the mount.
    let same = |step: &str| {
        assert_eq!(mode(&f), mode(&src), "{step}: mode");
        assert_eq!(getfacl(&f), getfacl(&src), "{step}: ACL");
        assert_eq!(acl_query(&f), acl_query(&src), "{step}: getxattr");
    };
    for round in 0..2 {
        same(&format!("{round}: before"));
        setfacl("u:1000:rw", &f);
        same(&format!("{round}: setfacl u:1000:rw"));
        assert_eq!(mode(&f), 0o660, "the mask is the group class");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).expect("chmod");
        same(&format!("{round}: chmod 0640 (the mask)"));
        let st = Command::new("setfacl").arg("-b").arg(&f).status();
        assert!(st.expect("setfacl -b").success());
        same(&format!("{round}: setfacl -b"));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod");
        same(&format!("{round}: chmod 0600"));
    }
}

/// Every extended attribute call a user makes, as its outcome: a size or an errno.
fn xattr_calls(path: &Path) -> Vec<Result<usize, i32>> {
    let p = cpath(path);
    let mut list = [0u8; 256];
    // SAFETY: NUL-terminated paths and names; buffers of the sizes given.
    unsafe {
        vec![
            acl_query(path),
            check_size(libc::lgetxattr(
                p.as_ptr(),
                c"user.tag".as_ptr(),
                std::ptr::null_mut(),
                0,
            )),
            check_size(libc::llistxattr(
                p.as_ptr(),
                list.as_mut_ptr().cast(),
                list.len(),
            )),
            check_size(
                libc::lsetxattr(p.as_ptr(), c"user.tag".as_ptr(), c"v".as_ptr().cast(), 1, 0)
                    as isize,
            ),
        ]
    }
}

/// `xattr_calls` where there are no extended attributes. The ACL query is answered "no
/// ACL" (ENODATA) by every FUSE mount that has no ACL to give: FUSE superblocks are
/// always SB_POSIXACL, and the VFS reads ACLs through `get_inode_acl`, not the
/// filesystem's getxattr. The others fail as on a filesystem without any.
const NONE: [Result<usize, i32>; 4] = [
    Err(libc::ENODATA),
    Err(libc::EOPNOTSUPP),
    Err(libc::EOPNOTSUPP),
    Err(libc::EOPNOTSUPP),
];

/// A mount with `xattr=nosys` over `files`, standing for a SOURCE whose filesystem has
/// no extended attributes (a FUSE one such as rclone's answers ENOSYS the same way).
fn without_xattrs(files: usize) -> TestMount {
    TestMount::builder()
        .option("xattr=nosys")
        .populate(move |src| {
            for i in 0..files {
                fs::write(src.join(format!("e{i:02}.mkv")), b"x").expect("write");
            }
        })
        .start()
}

/// The kernel is told once that a mount over such a SOURCE has no extended attributes
/// either, so `ls -l` costs no request per file; and every call's answer is SOURCE's own.
#[test]
fn ls_l_of_a_source_without_extended_attributes_asks_the_daemon_nothing() {
    require_mount!();
    let inner = without_xattrs(40);
    let m = TestMount::builder().source(&inner.path("")).start();
    for i in 0..40 {
        let name = format!("e{i:02}.mkv");
        fs::symlink_metadata(m.path(&name)).expect("lstat");
        assert_eq!(
            xattr_calls(&m.path(&name)),
            xattr_calls(&inner.path(&name)),
            "{name}: as on SOURCE"
        );
    }
    assert_eq!(xattr_calls(&m.path("e00.mkv")), NONE, "SOURCE has none");
    assert_eq!(
        xattr_requests(&m),
        0,
        "extended attribute requests that reached SOURCE"
    );
}

/// A filesystem mounted below such a SOURCE may have extended attributes: then they are
/// passed through, for every object, as always.
#[test]
fn a_source_without_extended_attributes_but_a_submount_passes_them_through() {
    require_mount!();
    let inner = without_xattrs(1);
    let sub = inner.path("sub");
    fs::create_dir(&sub).expect("mkdir");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&sub)
        .status()
        .expect("mount");
    assert!(st.success(), "mount tmpfs: {st}");
    let _sub = crate::common::DetachOnDrop(sub.clone());
    fs::write(sub.join("f"), b"f").expect("write");
    fs::write(sub.join("g"), b"g").expect("write");
    let m = TestMount::builder().source(&inner.path("")).start();
    let f = m.path("sub/f");
    // Each call once through the mount on f, once on the tmpfs itself on g (the last
    // call sets `user.tag`).
    assert_eq!(
        xattr_calls(&f),
        xattr_calls(&sub.join("g")),
        "as on the tmpfs"
    );
    assert_eq!(
        Command::new("getfattr")
            .args(["-n", "user.tag", "--only-values"])
            .arg(&f)
            .output()
            .expect("getfattr")
            .stdout,
        b"v",
        "the value set through the mount"
    );
    assert_eq!(
        xattr_calls(&m.path("e00.mkv")),
        NONE,
        "the rest of SOURCE has none"
    );
}
