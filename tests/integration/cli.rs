//! The command line: every bad input exits 2 with one line on stderr naming the problem and
//! mounts nothing; both option forms mount; signals unmount and exit 0.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::common::{
    DetachOnDrop, TestMount, bind_mount, describe_status, fstype_at, in_private_mount_ns,
    mounts_at, run_cachefs, wait_unmounted,
};
use crate::require_mount;

/// Temp dirs for one invocation: SOURCE and MNT exist, CACHE does not yet.
struct Dirs {
    _tmp: TempDir,
    root: PathBuf,
    src: PathBuf,
    cache: PathBuf,
    mnt: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::Builder::new()
        .prefix("cachefs-cli.")
        .tempdir()
        .expect("tempdir");
    let root = tmp.path().canonicalize().expect("canonicalize");
    let src = root.join("source");
    let mnt = root.join("mnt");
    fs::create_dir(&src).expect("mkdir source");
    fs::create_dir(&mnt).expect("mkdir mnt");
    Dirs {
        _tmp: tmp,
        cache: root.join("cache"),
        root,
        src,
        mnt,
    }
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// Run with `args` (plus `-f`, so a wrongly accepted mount stays in the foreground where it
/// can be stopped); expect exit 2, exactly one stderr line containing every needle
/// (case-insensitive), and nothing mounted at `mnt`.
fn expect_usage_error(mut args: Vec<OsString>, mnt: &Path, needles: &[&str]) {
    args.push("-f".into());
    let _clean = DetachOnDrop(mnt.to_path_buf());
    let (st, stderr) = run_cachefs(&args, Some(mnt));
    let mounted = mounts_at(mnt);
    assert!(
        mounted.is_empty(),
        "cachefs {args:?} left a mount at {}: {mounted:?}",
        mnt.display()
    );
    assert_eq!(
        st.code(),
        Some(2),
        "cachefs {args:?}: want exit 2, got {}; stderr:\n{stderr}",
        describe_status(&st)
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "cachefs {args:?}: want one line on stderr, got:\n{stderr}"
    );
    let line = lines[0].to_lowercase();
    for n in needles {
        assert!(
            line.contains(&n.to_lowercase()),
            "cachefs {args:?}: stderr does not name {n:?}:\n{stderr}"
        );
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn rejects_missing_source() {
    let d = dirs();
    let missing = d.root.join("no-such-source");
    expect_usage_error(
        os(&[&missing, &d.mnt, &"--cache", &d.cache]),
        &d.mnt,
        &[&s(&missing)],
    );
}

#[test]
fn rejects_source_that_is_a_file() {
    let d = dirs();
    let file = d.root.join("plainfile");
    fs::write(&file, b"x").expect("write");
    expect_usage_error(
        os(&[&file, &d.mnt, &"--cache", &d.cache]),
        &d.mnt,
        &[&s(&file)],
    );
}

#[test]
fn rejects_missing_mountpoint() {
    let d = dirs();
    let missing = d.root.join("no-such-mnt");
    expect_usage_error(
        os(&[&d.src, &missing, &"--cache", &d.cache]),
        &missing,
        &[&s(&missing)],
    );
}

#[test]
fn rejects_missing_cache() {
    let d = dirs();
    expect_usage_error(os(&[&d.src, &d.mnt]), &d.mnt, &["cache"]);
}

#[test]
fn rejects_cache_inside_source() {
    let d = dirs();
    let cache = d.src.join("cache");
    expect_usage_error(
        os(&[&d.src, &d.mnt, &"--cache", &cache]),
        &d.mnt,
        &["cache", &s(&cache)],
    );
}

#[test]
fn rejects_cache_inside_mountpoint() {
    let d = dirs();
    let cache = d.mnt.join("cache");
    expect_usage_error(
        os(&[&d.src, &d.mnt, &"--cache", &cache]),
        &d.mnt,
        &["cache", &s(&cache)],
    );
}

#[test]
fn rejects_source_inside_cache() {
    let d = dirs();
    let cache = d.root.join("bigcache");
    let src = cache.join("source");
    fs::create_dir_all(&src).expect("mkdir");
    expect_usage_error(
        os(&[&src, &d.mnt, &"--cache", &cache]),
        &d.mnt,
        &["cache", &s(&cache)],
    );
}

#[test]
fn rejects_mountpoint_inside_cache() {
    let d = dirs();
    let cache = d.root.join("bigcache");
    let mnt = cache.join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    expect_usage_error(
        os(&[&d.src, &mnt, &"--cache", &cache]),
        &mnt,
        &["cache", &s(&cache)],
    );
}

#[test]
fn rejects_cache_equal_to_source() {
    let d = dirs();
    expect_usage_error(
        os(&[&d.src, &d.mnt, &"--cache", &d.src]),
        &d.mnt,
        &["cache"],
    );
}

#[test]
fn rejects_unknown_o_option() {
    let d = dirs();
    let o = format!("cache={},bogus", d.cache.display());
    expect_usage_error(os(&[&d.src, &d.mnt, &"-o", &o]), &d.mnt, &["bogus"]);
}

#[test]
fn rejects_unknown_o_option_with_value() {
    let d = dirs();
    expect_usage_error(
        os(&[&d.src, &d.mnt, &"--cache", &d.cache, &"-o", &"frobnicate=3"]),
        &d.mnt,
        &["frobnicate"],
    );
}

#[test]
fn rejects_unknown_long_flag() {
    let d = dirs();
    expect_usage_error(
        os(&[&d.src, &d.mnt, &"--cache", &d.cache, &"--bogus-flag"]),
        &d.mnt,
        &["bogus-flag"],
    );
}

#[test]
fn rejects_malformed_size_long_form() {
    let d = dirs();
    expect_usage_error(
        os(&[&d.src, &d.mnt, &"--cache", &d.cache, &"--max-size", &"12Q"]),
        &d.mnt,
        &["12Q"],
    );
}

#[test]
fn rejects_malformed_size_o_form() {
    let d = dirs();
    let o = format!("cache={},max_size=12Q", d.cache.display());
    expect_usage_error(os(&[&d.src, &d.mnt, &"-o", &o]), &d.mnt, &["12Q"]);
}

#[test]
fn rejects_malformed_enum_and_duration() {
    let d = dirs();
    let o = format!("cache={},promote=sometimes", d.cache.display());
    expect_usage_error(os(&[&d.src, &d.mnt, &"-o", &o]), &d.mnt, &["sometimes"]);
    let o = format!("cache={},max_age=3fortnights", d.cache.display());
    expect_usage_error(os(&[&d.src, &d.mnt, &"-o", &o]), &d.mnt, &["3fortnights"]);
}

#[test]
fn rejects_missing_positional_arguments() {
    let d = dirs();
    expect_usage_error(os(&[&d.src]), &d.mnt, &[]);
}

// ---------------------------------------------------------------------------------------
// mounting

#[test]
fn mounts_with_fstab_option_form() {
    require_mount!();
    let m = TestMount::builder()
        .fstab_form()
        .option("max_size=1G")
        .start();
    assert_eq!(fstype_at(&m.mnt).as_deref(), Some("fuse.cachefs"));
    assert!(m.cache.is_dir(), "cache dir is created if missing");
}

#[test]
fn mounts_with_long_option_form() {
    require_mount!();
    let m = TestMount::builder().arg("--max-size").arg("1G").start();
    assert_eq!(fstype_at(&m.mnt).as_deref(), Some("fuse.cachefs"));
    assert!(m.cache.is_dir(), "cache dir is created if missing");
}

#[test]
fn mounts_with_dashed_o_option() {
    require_mount!();
    // Dashes and underscores are the same in option names.
    let m = TestMount::builder()
        .option("max-size=1G")
        .option("promote-after=1M")
        .start();
    assert_eq!(fstype_at(&m.mnt).as_deref(), Some("fuse.cachefs"));
}

#[test]
fn accepts_and_ignores_fstab_noise() {
    require_mount!();
    let m = TestMount::builder()
        .fstab_form()
        .option("defaults,rw,nofail,_netdev,auto,noauto,user,users,nouser")
        .option("x-systemd.automount,x-systemd.idle-timeout=60")
        .start();
    assert_eq!(fstype_at(&m.mnt).as_deref(), Some("fuse.cachefs"));
}

#[test]
fn kernel_flags_reach_the_mount() {
    require_mount!();
    let m = TestMount::builder()
        .option("nosuid,nodev,noexec,noatime")
        .start();
    let e = mounts_at(&m.mnt).pop().expect("mounted");
    for flag in ["nosuid", "nodev", "noexec", "noatime"] {
        assert!(
            e.mount_options.split(',').any(|o| o == flag),
            "mount options {:?} lack {flag}",
            e.mount_options
        );
    }
}

/// The OPTIONS column of findmnt for a mount, as words.
fn findmnt_options(mnt: &Path) -> Vec<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "OPTIONS"])
        .arg(mnt)
        .output()
        .expect("run findmnt");
    assert!(out.status.success(), "findmnt failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Issue 12: the atime, diratime, lazytime and sync flags an fstab line carries reach the
/// kernel (findmnt shows them); `nonempty` and `default_permissions` are accepted.
#[test]
fn fstab_mount_flags_show_in_findmnt() {
    require_mount!();
    // Options, words findmnt must show, words it must not.
    let table: &[(&str, &[&str], &[&str])] = &[
        (
            "nodiratime,sync,dirsync,nonempty,default_permissions",
            &["relatime", "nodiratime", "sync", "dirsync"],
            &["noatime", "allow_other"],
        ),
        (
            "strictatime,lazytime",
            &["lazytime"],
            &["relatime", "noatime"],
        ),
        ("norelatime", &[], &["relatime", "noatime"]),
        (
            "noatime,relatime,nodiratime,diratime,sync,async",
            &["relatime"],
            &["noatime", "nodiratime", "sync"],
        ),
    ];
    for (opts, present, absent) in table {
        let m = TestMount::builder().fstab_form().option(opts).start();
        let words = findmnt_options(&m.mnt);
        for w in *present {
            assert!(
                words.iter().any(|x| x == w),
                "-o {opts}: {words:?} lacks {w}"
            );
        }
        for w in *absent {
            assert!(
                !words.iter().any(|x| x == w),
                "-o {opts}: {words:?} has {w}"
            );
        }
    }
}

/// `fsname=NAME` is what findmnt shows as the mount's SOURCE; `allow_root` shows as the
/// kernel's allow_other (the daemon refuses other users itself, see users.rs).
#[test]
fn fsname_names_the_source_and_allow_root_is_accepted() {
    require_mount!();
    let m = TestMount::builder()
        .fstab_form()
        .option("fsname=media array")
        .option("allow_root")
        .start();
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE"])
        .arg(&m.mnt)
        .output()
        .expect("run findmnt");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "media array");
    let words = findmnt_options(&m.mnt);
    assert!(words.iter().any(|w| w == "allow_other"), "{words:?}");
    assert!(
        words.iter().any(|w| w == "default_permissions"),
        "{words:?}"
    );
}

#[test]
fn read_only_mount_refuses_writes() {
    require_mount!();
    let m = TestMount::builder()
        .populate(|src| fs::write(src.join("f"), b"data").expect("populate"))
        .option("ro")
        .start();
    assert_eq!(fs::read(m.path("f")).expect("read"), b"data");
    let e = fs::write(m.path("g"), b"x").expect_err("create on ro mount");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "create on ro mount: {e}"
    );
    let e = fs::OpenOptions::new()
        .write(true)
        .open(m.path("f"))
        .expect_err("open for write on ro mount");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "open O_WRONLY: {e}");
    assert_eq!(fs::read(m.src("f")).expect("read SOURCE"), b"data");
}

#[test]
fn findmnt_shows_fstype_and_source() {
    require_mount!();
    let m = TestMount::start();
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE"])
        .arg(&m.mnt)
        .output()
        .expect("run findmnt");
    assert!(out.status.success(), "findmnt failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        fields.first().copied(),
        Some("fuse.cachefs"),
        "findmnt: {text:?}"
    );
    // Beyond the contract, but what a user reading findmnt expects: the SOURCE column
    // names the source directory.
    assert_eq!(
        fields.get(1).copied(),
        Some(m.source.to_str().expect("utf-8 path")),
        "findmnt SOURCE column: {text:?}"
    );
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    require_mount!();
    let mut m = TestMount::start();
    let st = m.signal_and_wait(libc::SIGTERM);
    assert_eq!(
        st.code(),
        Some(0),
        "exit after SIGTERM: {}",
        describe_status(&st)
    );
    assert!(mounts_at(&m.mnt).is_empty(), "mount left after SIGTERM");
}

#[test]
fn sigint_unmounts_and_exits_0() {
    require_mount!();
    let mut m = TestMount::start();
    let st = m.signal_and_wait(libc::SIGINT);
    assert_eq!(
        st.code(),
        Some(0),
        "exit after SIGINT: {}",
        describe_status(&st)
    );
    assert!(mounts_at(&m.mnt).is_empty(), "mount left after SIGINT");
}

#[test]
fn sigterm_with_busy_mount_still_unmounts() {
    require_mount!();
    let mut m = TestMount::builder()
        .populate(|src| fs::write(src.join("f"), b"busy").expect("populate"))
        .start();
    // Hold a file and a cwd-like directory descriptor open on the mount.
    let _f = fs::File::open(m.path("f")).expect("open");
    let _d = fs::File::open(&m.mnt).expect("open root");
    let st = m.signal_and_wait(libc::SIGTERM);
    assert_eq!(
        st.code(),
        Some(0),
        "exit after SIGTERM: {}",
        describe_status(&st)
    );
    assert!(
        mounts_at(&m.mnt).is_empty(),
        "busy mount left after SIGTERM"
    );
}

/// Issues 5 and 22: a daemon killed with no successor to take its mount over (its binary
/// removed, or `failover=off`) leaves no mount: its watchdog unmounts within 2 s.
#[test]
fn sigkill_with_no_successor_leaves_no_mount() {
    require_mount!();
    for how in ["binary removed", "failover=off"] {
        let mut m = match how {
            "failover=off" => TestMount::builder().option("failover=off").start(),
            _ => TestMount::builder().binary_copy().start(),
        };
        if how == "binary removed" {
            fs::remove_file(&m.bin).unwrap();
        }
        let st = m.signal_and_wait(libc::SIGKILL);
        assert_eq!(st.code(), None, "killed: {}", describe_status(&st));
        assert!(
            wait_unmounted(&m.mnt, Duration::from_secs(2)),
            "{how}: mount still present 2 s after SIGKILL: {:?}\n{}",
            mounts_at(&m.mnt),
            m.log_contents()
        );
        if how == "binary removed" {
            let log = m.log_contents();
            assert!(log.contains("no successor serves"), "{log}");
        }
    }
}

#[test]
fn live_mount_at_mountpoint_is_an_error_even_with_nonempty() {
    require_mount!();
    let m = TestMount::start();
    let other_cache = m.root.join("cache2");
    for extra in [None, Some("--nonempty")] {
        let mut args = vec![
            m.source.clone().into_os_string(),
            m.mnt.clone().into_os_string(),
            "--cache".into(),
            other_cache.clone().into_os_string(),
            "-f".into(),
        ];
        args.extend(extra.map(OsString::from));
        let (st, stderr) = run_cachefs(&args, None);
        assert!(
            !st.success(),
            "second mount ({extra:?}) on a live mountpoint succeeded; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(&m.mnt.display().to_string())
                && stderr.contains("already mounted by a running cachefs"),
            "the error does not name the mountpoint and what is there:\n{stderr}"
        );
        // The first mount is untouched.
        let at = mounts_at(&m.mnt);
        assert_eq!(at.len(), 1, "mounts at MNT: {at:?}");
        assert!(fs::read_dir(&m.mnt).is_ok(), "first mount still serves");
    }
}

/// In a container the mountpoint is always a volume, a bind mount of a host directory:
/// that is how the host and the media server's container see the mount. It was refused
/// as "already mounted (ext4 from /dev/vda)", `--nonempty` or not.
#[test]
fn mountpoint_that_is_a_bind_mount_is_accepted_as_a_containers_volume() {
    require_mount!();
    in_private_mount_ns(|| {
        let m = TestMount::builder()
            .populate(|src| fs::write(src.join("film.mkv"), b"frames").expect("write"))
            .prepare_mountpoint(|mnt| {
                let volume = mnt.with_file_name("volume");
                fs::create_dir(&volume).expect("mkdir volume");
                bind_mount(&volume, mnt).expect("bind the volume over MNT");
            })
            .start();
        let at = mounts_at(&m.mnt);
        assert_eq!(
            at.iter()
                .map(|e| e.fstype.as_str())
                .collect::<Vec<_>>()
                .last(),
            Some(&"fuse.cachefs"),
            "mounts at MNT: {at:?}"
        );
        assert_eq!(fs::read(m.path("film.mkv")).expect("read"), b"frames");
    });
}

/// A filesystem mounted whole at MOUNTPOINT would be hidden: refused, naming it and the
/// way out, unless `nonempty` says so.
#[test]
fn mountpoint_with_a_whole_filesystem_needs_nonempty() {
    require_mount!();
    in_private_mount_ns(|| {
        let tmpfs_at = |mnt: &Path| {
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
                .arg(mnt)
                .status()
                .expect("run mount");
            assert!(st.success(), "mount tmpfs at {}", mnt.display());
        };
        let e = dirs();
        tmpfs_at(&e.mnt);
        let _clean = DetachOnDrop(e.mnt.clone());
        let args = vec![
            e.src.clone().into_os_string(),
            e.mnt.clone().into_os_string(),
            "--cache".into(),
            e.cache.clone().into_os_string(),
            "-f".into(),
        ];
        let (st, stderr) = run_cachefs(&args, None);
        assert!(!st.success(), "mounted over a tmpfs without nonempty");
        assert!(
            stderr.contains("already mounted (tmpfs from tmpfs)") && stderr.contains("nonempty"),
            "the error does not name what is there and the option:\n{stderr}"
        );
        assert_eq!(fstype_at(&e.mnt).as_deref(), Some("tmpfs"));

        let m = TestMount::builder()
            .option("nonempty")
            .populate(|src| fs::write(src.join("a"), b"x").expect("write"))
            .prepare_mountpoint(tmpfs_at)
            .start();
        assert_eq!(fstype_at(&m.mnt).as_deref(), Some("fuse.cachefs"));
        assert_eq!(fs::read(m.path("a")).expect("read"), b"x");
    });
}

#[test]
fn second_instance_on_same_cache_is_refused() {
    require_mount!();
    let m = TestMount::start();
    let mnt2 = m.root.join("mnt2");
    fs::create_dir(&mnt2).expect("mkdir");
    let _clean = DetachOnDrop(mnt2.clone());
    let args = vec![
        m.source.clone().into_os_string(),
        mnt2.clone().into_os_string(),
        "--cache".into(),
        m.cache.clone().into_os_string(),
        "-f".into(),
    ];
    let (st, stderr) = run_cachefs(&args, Some(&mnt2));
    assert!(
        !st.success(),
        "a second instance took the same cache dir; stderr:\n{stderr}"
    );
    assert!(mounts_at(&mnt2).is_empty(), "second instance mounted");
}
