//! The control socket under a hostile local user (uid 1000) on an `--allow-other` mount,
//! which every user of the host shares: it may promote only what it can read itself; it
//! can never unmount, evict, pin or unpin; a flood of its requests is rate-limited and
//! evicts no pinned copy; idle, half-sent, oversized and garbage connections get errors,
//! and root is served all the while.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{self, BIN, TestMount, num, pattern, status};

fn write(root: &Path, rel: &str, len: usize, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, pattern(len, len as u64)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn setup(root: &Path) {
    write(root, "open/a.bin", 100_000, 0o644);
    write(root, "open/secret.bin", 100_000, 0o600);
    write(root, "closed/b.bin", 100_000, 0o644);
    fs::set_permissions(root.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    write(root, "shut.bin", 100_000, 0o600);
    write(root, "pinned.bin", 2 << 20, 0o644);
    write(root, "big.bin", 2 << 20, 0o644);
}

fn mount() -> TestMount {
    TestMount::builder()
        .allow_other()
        .option("promote=manual")
        .option("max_size=3M")
        .populate(setup)
        .start()
}

/// `cachefs ARGS... MNT/rel` as uid 1000.
fn cli_as_other(m: &TestMount, args: &[&str], rel: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .arg(m.path(rel))
        .uid(common::OTHER_UID)
        .gid(common::OTHER_GID)
        .output()
        .expect("run cachefs as the other user")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Python as uid 1000 on the mount's control socket; prints what the script prints.
fn python_as_other(m: &TestMount, script: &str) -> String {
    let sock = cachefs::control::socket_path(&m.mnt);
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&sock)
        .uid(common::OTHER_UID)
        .gid(common::OTHER_GID)
        .output()
        .expect("run python3 as the other user");
    assert!(out.status.success(), "python: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn another_user_promotes_only_what_it_can_read() {
    if !common::can_mount("another_user_promotes_only_what_it_can_read") {
        return;
    }
    let m = mount();
    let out = cli_as_other(&m, &["promote", "--wait"], "open");
    let said = text(&out);
    assert!(said.contains("secret.bin"), "{said}");
    assert!(said.contains("permission denied"), "{said}");
    assert!(
        !said.contains("a.bin: "),
        "a.bin is the user's to promote: {said}"
    );
    assert_eq!(num(&status(&m), "cached_files"), 1, "{said}");

    for rel in ["shut.bin", "closed", "closed/b.bin"] {
        let out = cli_as_other(&m, &["promote", "--wait"], rel);
        let said = text(&out);
        assert!(!out.status.success(), "{rel}: {said}");
        assert!(
            said.contains("permission denied") || said.contains("Permission denied"),
            "{rel}: {said}"
        );
    }
    // A directory the user cannot search is neither walked nor counted.
    let out = cli_as_other(&m, &["promote"], "closed");
    assert!(!text(&out).contains("b.bin"), "{}", text(&out));
    assert_eq!(num(&status(&m), "cached_files"), 1);
    // Root may promote all of it.
    common::promote_wait(&m, "shut.bin");
    common::promote_wait(&m, "closed");
    assert_eq!(num(&status(&m), "cached_files"), 3);
}

#[test]
fn another_user_cannot_unmount_evict_pin_or_unpin() {
    if !common::can_mount("another_user_cannot_unmount_evict_pin_or_unpin") {
        return;
    }
    let m = mount();
    common::promote_wait(&m, "open/a.bin");
    for cmd in ["pin", "unpin", "evict"] {
        let out = cli_as_other(&m, &[cmd], "open/a.bin");
        assert!(!out.status.success(), "{cmd}: {}", text(&out));
        assert!(
            text(&out).contains("permission denied"),
            "{cmd}: {}",
            text(&out)
        );
    }
    let out = Command::new(BIN)
        .arg("unmount")
        .arg(&m.mnt)
        .uid(common::OTHER_UID)
        .gid(common::OTHER_GID)
        .output()
        .unwrap();
    assert!(!out.status.success(), "unmount: {}", text(&out));
    assert!(text(&out).contains("permission denied"), "{}", text(&out));
    assert!(common::statfs_ok(&m.mnt), "the mount is still live");
    let s = status(&m);
    assert_eq!((num(&s, "cached_files"), num(&s, "pinned_files")), (1, 0));
}

/// 300 promote requests as fast as one user can send them: past the burst they are
/// refused with a clear error, root is answered meanwhile, and the user's promotion of
/// a file that does not fit beside root's pin evicts nothing pinned.
#[test]
fn a_flood_from_another_user_is_limited_and_evicts_no_pin() {
    if !common::can_mount("a_flood_from_another_user_is_limited_and_evicts_no_pin") {
        return;
    }
    let m = mount();
    let out = Command::new(BIN)
        .args(["pin"])
        .arg(m.path("pinned.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    common::eventually("the pinned copy", &m, || {
        num(&status(&m), "cached_files") == 1
    });
    let flood = r#"
import socket, sys, json
ok = limited = other = 0
for i in range(300):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"cmd": "promote", "paths": ["big.bin"]}).encode() + b"\n")
    line = s.makefile().readline()
    s.close()
    r = json.loads(line)
    if r.get("ok"): ok += 1
    elif "too many requests" in r.get("error", ""): limited += 1
    else: other += 1; print(r)
print(ok, limited, other)
"#;
    let said = python_as_other(&m, flood);
    let counts: Vec<u64> = said
        .lines()
        .last()
        .unwrap_or("")
        .split(' ')
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(counts.len(), 3, "{said}");
    assert!(counts[0] >= 32, "the burst is served: {said}");
    assert!(counts[1] > 0, "the flood is limited: {said}");
    assert_eq!(counts[2], 0, "{said}");
    // Root is never limited.
    for _ in 0..50 {
        status(&m);
    }
    // big.bin does not fit beside the pin in max_size=3M: it is refused, the pin stays.
    common::eventually("the user's promotion to end", &m, || {
        let s = status(&m);
        num(&s, "queued") == 0 && s["in_flight"].as_array().is_some_and(|a| a.is_empty())
    });
    let s = status(&m);
    assert_eq!(num(&s, "pinned_files"), 1);
    assert_eq!(num(&s, "cached_files"), 1, "{s}");
    assert_eq!(
        num(&s, "cached_bytes"),
        2 << 20,
        "the pinned copy is the one left"
    );
}

/// Idle and half-sent connections beyond the user's share are refused at once; a
/// megabyte line and binary garbage get errors; root is served throughout.
#[test]
fn hostile_connections_leave_root_served() {
    if !common::can_mount("hostile_connections_leave_root_served") {
        return;
    }
    let m = mount();
    let hold = r#"
import socket, sys, time, json
held, refused = [], 0
for i in range(20):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    try:
        s.sendall(b'{"cmd":"sta')
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.settimeout(0.3)
    try:
        line = s.makefile().readline()
        if "your user" in line: refused += 1
        else: print("unexpected", line)
    except socket.timeout:
        held.append(s)
print(len(held), refused)
sys.stdout.flush()
time.sleep(2)
"#;
    let child = Command::new("python3")
        .arg("-c")
        .arg(hold)
        .arg(cachefs::control::socket_path(&m.mnt))
        .uid(common::OTHER_UID)
        .gid(common::OTHER_GID)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the user holds its share, root is answered at once.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let t = std::time::Instant::now();
    status(&m);
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.trim(), "8 12", "held and refused: {said}");

    let garbage = r#"
import socket, sys, json
def ask(data):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    try:
        s.sendall(data)
    except BrokenPipeError:
        pass
    s.shutdown(socket.SHUT_WR)
    r = json.loads(s.makefile().readline())
    s.close()
    return r["error"]
print(ask(b'{"cmd":"status","x":"' + b'a' * (1 << 20) + b'"}\n'))
print(ask(bytes(range(256)) * 16 + b"\n"))
print(ask(b'{"cmd":"promote","paths":["../../etc/shadow"]}\n'))
"#;
    let said = python_as_other(&m, garbage);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{said}");
    assert!(lines[0].contains("longer than"), "{said}");
    assert!(lines[1].contains("malformed request"), "{said}");
    assert!(lines[2].contains(".."), "{said}");
    assert!(common::statfs_ok(&m.mnt));
    status(&m);
}
