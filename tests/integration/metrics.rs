//! The Prometheus metrics and what a person or a script sees of the status, on real
//! mounts: `metrics=127.0.0.1:PORT` scraped after reads from SOURCE and from a copy (the
//! hits, bytes and promotions move, and agree with `status --json`), passthrough opens
//! counted with their files' sizes, 404 for any other path, a port already taken leaving
//! the mount up and saying so; `status --json` failures as JSON; `promote --wait` as plain
//! lines when stderr is not a terminal.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{self, BIN, TestMount, num, pattern, promote_wait, status};

const MIB: usize = 1 << 20;

/// A port nobody listens on now (the kernel's pick; free again once the probe closes).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe for a free port")
        .port()
}

/// One HTTP request to the daemon's listener: (status code, body). The listener starts
/// just after the mount appears, so a refused connection is tried again for a while.
fn http(port: u16, request: &str) -> (u16, String) {
    let end = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no metrics listener on port {port}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {answer:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    // A HEAD answer names the length of the body it leaves out.
    if !request.starts_with("HEAD ") {
        assert_eq!(body.len(), length, "{head}");
    }
    (code, body.to_string())
}

fn scrape(port: u16) -> String {
    let (code, body) = http(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of the sample `series` (a name with its labels, as written) in a scrape.
fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Reads the whole file with O_DIRECT: every byte comes from the daemon (the kernel's
/// page cache, kept for a copy's opens, would answer a second plain read by itself).
fn read_direct(p: &Path) -> usize {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", p.display()));
    let mut all = Vec::new();
    f.read_to_end(&mut all).expect("read O_DIRECT");
    all.len()
}

fn with_files(files: &'static [(&'static str, usize, u64)]) -> impl FnOnce(&Path) {
    move |src: &Path| {
        for (rel, len, seed) in files {
            fs::write(src.join(rel), pattern(*len, *seed)).unwrap();
        }
    }
}

#[test]
fn scrape_shows_hits_bytes_and_promotions_and_agrees_with_status() {
    if !common::can_mount("scrape_shows_hits_bytes_and_promotions") {
        return;
    }
    let port = free_port();
    let m = TestMount::builder()
        .option(&format!("metrics=127.0.0.1:{port}"))
        .option("promote=manual")
        // The daemon reads the copy itself, so its bytes are counted as read.
        .option("passthrough=off")
        .populate(with_files(&[("movie.mkv", 3 * MIB, 1)]))
        .start();
    let before = scrape(port);
    assert_eq!(value(&before, r#"cachefs_opens_total{from="cache"}"#), 0);
    assert_eq!(value(&before, "cachefs_cache_usable"), 1);
    assert!(before.contains(&format!(
        r#"cachefs_info{{mountpoint="{}",source="{}""#,
        m.mnt.display(),
        m.source.display()
    )));
    assert!(
        !before.contains("cachefs_max_size_bytes"),
        "no max_size, no limit series"
    );

    // From SOURCE, then promoted, then from the copy.
    assert_eq!(read_direct(&m.path("movie.mkv")), 3 * MIB);
    promote_wait(&m, "movie.mkv");
    assert_eq!(read_direct(&m.path("movie.mkv")), 3 * MIB);

    let after = scrape(port);
    let s = status(&m);
    for (series, key, want) in [
        (r#"cachefs_opens_total{from="cache"}"#, "hits", 1),
        (r#"cachefs_opens_total{from="source"}"#, "misses", 1),
        (
            r#"cachefs_read_bytes_total{from="cache"}"#,
            "cache_read_bytes",
            3 * MIB as u64,
        ),
        (
            r#"cachefs_read_bytes_total{from="source"}"#,
            "source_read_bytes",
            3 * MIB as u64,
        ),
        (
            r#"cachefs_promotions_total{result="done"}"#,
            "promotions_done",
            1,
        ),
        (
            r#"cachefs_promotions_total{result="failed"}"#,
            "promotions_failed",
            0,
        ),
        (
            "cachefs_promoted_bytes_total",
            "promoted_bytes",
            3 * MIB as u64,
        ),
        (
            "cachefs_promoter_read_bytes_total",
            "promoter_read_bytes",
            3 * MIB as u64,
        ),
        ("cachefs_cached_files", "cached_files", 1),
        ("cachefs_cached_bytes", "cached_bytes", 3 * MIB as u64),
        ("cachefs_passthrough_opens_total", "passthrough_opens", 0),
        ("cachefs_promotions_queued", "queued", 0),
    ] {
        assert_eq!(value(&after, series), want, "{series}:\n{after}");
        assert_eq!(num(&s, key), want, "{key}: {s}");
    }
    assert!(
        value(&after, "cachefs_source_lookups_total") >= 1,
        "{after}"
    );
    assert_eq!(s["metrics"], format!("127.0.0.1:{port}"), "{s}");
    let text = Command::new(BIN)
        .arg("status")
        .arg(&m.mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("  metrics     http://127.0.0.1:{port}/metrics\n")),
        "{text}"
    );
    assert!(
        text.contains("  hit ratio   50% by opens, 50% by bytes\n"),
        "{text}"
    );
    assert!(text.contains("max size none,"), "{text}");

    // Anything but the one page.
    for (req, want) in [
        ("GET / HTTP/1.1\r\n\r\n", 404),
        ("GET /metrics/x HTTP/1.1\r\n\r\n", 404),
        ("GET /status HTTP/1.0\r\n\r\n", 404),
        ("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        ("nonsense\r\n\r\n", 400),
    ] {
        let (code, body) = http(port, req);
        assert_eq!(code, want, "{req:?}: {body}");
        assert!(!body.contains("cachefs_"), "{req:?}: {body}");
    }
    let (code, body) = http(port, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(code == 200 && body.is_empty(), "HEAD: {code} {body:?}");
    // Still serving after all that.
    assert_eq!(
        value(&scrape(port), r#"cachefs_opens_total{from="cache"}"#),
        1
    );
}

#[test]
fn passthrough_opens_count_their_files_size() {
    if !common::can_mount("passthrough_opens_count_their_files_size") {
        return;
    }
    let port = free_port();
    let m = TestMount::builder()
        .option(&format!("metrics=127.0.0.1:{port}"))
        .option("promote=manual")
        .option("max_size=64M")
        .populate(with_files(&[("a.mkv", 2 * MIB + 5, 2)]))
        .start();
    promote_wait(&m, "a.mkv");
    for _ in 0..2 {
        assert_eq!(fs::read(m.path("a.mkv")).unwrap().len(), 2 * MIB + 5);
    }
    let text = scrape(port);
    assert_eq!(value(&text, "cachefs_max_size_bytes"), 64 << 20);
    assert_eq!(value(&text, r#"cachefs_opens_total{from="cache"}"#), 2);
    if value(&text, "cachefs_passthrough") == 0 {
        common::skip(
            "passthrough_opens_count_their_files_size",
            "the kernel did not agree to FUSE passthrough",
        );
        return;
    }
    assert_eq!(value(&text, "cachefs_passthrough_opens_total"), 2, "{text}");
    assert_eq!(
        value(&text, "cachefs_passthrough_offered_bytes_total"),
        2 * (2 * MIB as u64 + 5),
        "{text}"
    );
    // Those reads never reached the daemon.
    assert_eq!(value(&text, r#"cachefs_read_bytes_total{from="cache"}"#), 0);
}

#[test]
fn a_port_already_taken_leaves_the_mount_up_and_says_so() {
    if !common::can_mount("a_port_already_taken_leaves_the_mount_up") {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let port = taken.local_addr().unwrap().port();
    let m = TestMount::builder()
        .option(&format!("metrics=127.0.0.1:{port}"))
        .populate(with_files(&[("a", 10, 3)]))
        .start();
    assert_eq!(fs::read(m.path("a")).unwrap(), pattern(10, 3));
    let s = status(&m);
    assert_eq!(s["metrics"], "", "{s}");
    let why = s["metrics_error"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("127.0.0.1:{port}")), "{s}");
    assert!(
        m.log_contents().contains("metrics: cannot listen on"),
        "{}",
        m.log_contents()
    );
    drop(taken);
}

/// `cachefs` with `args`, no mount involved.
fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run cachefs")
}

#[test]
fn status_json_failures_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_mount = dir.path().to_str().unwrap();
    for (args, code) in [
        (vec!["status", not_a_mount, "--json"], 1),
        (vec!["status", "--json", "/nonexistent/cachefs-test"], 1),
        // A usage error, before any mount is looked for.
        (vec!["status", "--json"], 2),
        (vec!["status", "--json", "--frobnicate", not_a_mount], 2),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {out:?}"));
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{args:?}: {v}");
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    }
    // Without --json, the message stays plain text on stderr.
    let out = run(&["status", not_a_mount]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("cachefs: "),
        "{out:?}"
    );
}

#[test]
fn promote_wait_prints_plain_lines_when_not_a_terminal() {
    if !common::can_mount("promote_wait_prints_plain_lines_when_not_a_terminal") {
        return;
    }
    let m = TestMount::builder()
        .option("promote=manual")
        // Slow enough for progress lines before the end.
        .option("promote_bw=4M")
        .populate(with_files(&[("a.bin", 6 * MIB, 4), ("b.bin", MIB, 5)]))
        .start();
    let out = Command::new(BIN)
        .arg("promote")
        .arg("--wait")
        .arg(&m.mnt)
        .output()
        .expect("run cachefs promote");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    assert_eq!(
        stdout,
        format!(
            "promote {}: already cached 0, files 2, queued 2\n",
            m.mnt.display()
        )
    );
    let lines: Vec<&str> = stderr.lines().collect();
    for l in &lines {
        let (path, rest) = l.split_once(' ').unwrap_or_else(|| panic!("{l:?}"));
        assert!(path == "a.bin" || path == "b.bin", "{l:?}");
        let pct = rest.split_once("% (").map(|(p, _)| p);
        assert!(
            pct.and_then(|p| p.parse::<u64>().ok())
                .is_some_and(|p| p <= 100)
                && l.ends_with(')'),
            "{l:?}"
        );
    }
    // Each file's last line says it is whole, and a line never repeats.
    for (path, size) in [("a.bin", "6.0 MiB"), ("b.bin", "1.0 MiB")] {
        let last = lines.iter().rfind(|l| l.starts_with(path));
        assert_eq!(
            last.copied(),
            Some(format!("{path} 100% ({size} / {size})").as_str()),
            "{stderr}"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        assert!(seen.insert(*l), "{l:?} twice in:\n{stderr}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("a.bin") && !l.contains(" 100% ")),
        "a copy at 4 MiB/s shows progress before its end:\n{stderr}"
    );
}
