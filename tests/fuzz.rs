//! Property tests (proptest) of every parser that reads what another program or user
//! wrote: `-o` option lists and their value parsers, /proc/self/mountinfo, the control
//! protocol's request and reply lines, and the daemon's own index and snapshot files.
//!
//! Each target has two kinds of input: raw bytes or strings, and structured generators
//! near the valid grammar (valid option lists with mutations, mountinfo lines with
//! escapes, JSON requests with odd paths, sealed files with damaged bodies), because
//! random bytes alone almost never get past a parser's first check (a file's checksum,
//! a JSON brace). The properties: no panic; malformed input is a one-line error naming
//! the problem (or `None`/`false` for the cache files, which only ever cost speed);
//! encode then decode is the identity.
//!
//! `cargo test` runs the default 256 cases per property (seconds); `scripts/fuzz.sh`
//! runs them for minutes with `PROPTEST_CASES` raised and a new seed per round.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use cachefs::cache::index::{Entries, Meta};
use cachefs::codec::{Reader, Writer, fnv1a64};
use cachefs::config::{Config, MinFree};
use cachefs::control::proto::{
    Cmd, Evicted, Failure, Pinned, Progress, Promoted, Reply, Request, Status, Stopping, Unpinned,
};
use cachefs::fdio::DirEntry;
use cachefs::meta::{Lookup, MetaCache};
use cachefs::mountinfo::{parse_mountinfo, parse_mountinfo_bytes};
use cachefs::options::{
    self, IGNORED, KERNEL_FLAGS, Kind, OPTIONS, apply_option_list, parse_duration, parse_min_free,
    parse_rate, parse_size, split_option_list,
};
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------------------
// Shared generators

/// Bytes that are mostly a valid input `base`, then changed in a few places: a byte
/// flipped, inserted, removed, or the input cut short.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = base.len().max(1);
    prop::collection::vec((0..4u8, 0..n, any::<u8>()), 0..4).prop_map(move |edits| {
        let mut b = base.clone();
        for (op, at, byte) in edits {
            let at = at.min(b.len());
            match op {
                0 if at < b.len() => b[at] ^= byte | 1,
                1 => b.insert(at, byte),
                2 if at < b.len() => {
                    b.remove(at);
                }
                3 => b.truncate(at),
                _ => {}
            }
        }
        b
    })
}

fn mutated_str(base: String) -> impl Strategy<Value = String> {
    mutated(base.into_bytes()).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A one-line, non-empty message: what every parser here says about bad input.
fn assert_clear(err: &str, input: &dyn std::fmt::Debug) {
    assert!(!err.trim().is_empty(), "empty error for {input:?}");
    assert!(!err.contains('\n'), "multi-line error for {input:?}: {err}");
}

/// Bytes of a path component: anything but `/` and NUL, sometimes odd (high bytes,
/// spaces, backslashes, newlines), 1 to 40 bytes.
fn name_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9 ._-]{1,20}".prop_map(String::into_bytes),
        prop::collection::vec(
            any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
            1..40
        ),
        select(vec![
            &b"."[..],
            b"..",
            b"\\040",
            b"\\",
            b"\n",
            b"\t",
            b"caf\xe9",
            b"-"
        ])
        .prop_map(<[u8]>::to_vec),
    ]
}

/// A relative path of 0 to 4 components, any bytes but NUL.
fn rel_path_bytes() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec(name_bytes(), 0..4)
        .prop_map(|names| PathBuf::from(OsString::from_vec(names.join(&b'/'))))
}

// ---------------------------------------------------------------------------------------
// Options and their value parsers

/// A plausible value for an option: a size, a duration, a percentage, a path, a word.
fn option_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            any::<u32>(),
            select(vec![
                "", "K", "M", "G", "T", "KB", "gb", "b", "P", "%", "/s"
            ])
        )
            .prop_map(|(n, s)| format!("{n}{s}")),
        (
            0..1000u32,
            0..1000u32,
            select(vec!["", "s", "m", "h", "d", "ms", "H"])
        )
            .prop_map(|(a, b, u)| format!("{a}.{b}{u}")),
        select(vec![
            "auto",
            "on",
            "off",
            "never",
            "open",
            "true",
            "/mnt/ssd",
            "127.0.0.1:9100",
            "[::1]:0",
            ""
        ])
        .prop_map(String::from),
        "[ -~]{0,12}",
        "\\PC{0,8}",
    ]
}

/// One `-o` item: a known option (any spelling), a kernel flag, an ignored option, or a
/// made-up name, with or without a value.
fn option_item() -> impl Strategy<Value = String> {
    let mut names: Vec<String> = OPTIONS.iter().map(|o| o.name.to_string()).collect();
    names.extend(OPTIONS.iter().map(|o| o.name.replace('_', "-")));
    names.extend(KERNEL_FLAGS.iter().map(|(n, _)| n.to_string()));
    names.extend(IGNORED.iter().map(|n| n.to_string()));
    names.extend(["x-systemd.automount", "", "=", "no_such", "max_size=1=2"].map(String::from));
    (select(names), prop::option::of(option_value())).prop_map(|(n, v)| match v {
        Some(v) => format!("{n}={}", v.replace('\\', "\\\\").replace(',', "\\,")),
        None => n,
    })
}

fn option_list() -> impl Strategy<Value = String> {
    prop::collection::vec(option_item(), 0..6).prop_map(|items| items.join(","))
}

fn fresh_config() -> Config {
    Config::new("/src".into(), "/mnt".into(), "/ssd".into())
}

/// Applies a list; every error is one clear line, and a list that applies twice gives the
/// same Config (the parser has no hidden state).
fn check_list(list: &str) {
    let mut a = fresh_config();
    let mut b = fresh_config();
    let ra = apply_option_list(&mut a, list);
    let rb = apply_option_list(&mut b, list);
    assert_eq!(ra, rb, "{list:?}");
    if let Err(e) = &ra {
        assert_clear(e, &list);
        assert!(
            e.contains("option") || e.contains("invalid") || e.contains("too"),
            "{list:?}: {e}"
        );
    } else {
        assert_eq!(a, b, "{list:?}");
    }
}

proptest! {
    #[test]
    fn fuzz_options_arbitrary_lists(list in "\\PC{0,60}") {
        check_list(&list);
    }

    #[test]
    fn fuzz_options_near_valid_lists(list in option_list().prop_flat_map(mutated_str)) {
        check_list(&list);
    }

    /// Splitting undoes the escaping a writer of an fstab line would do.
    #[test]
    fn fuzz_options_split_round_trip(
        items in prop::collection::vec(("[a-z_]{1,10}", prop::option::of("\\PC{0,10}")), 0..6)
    ) {
        let esc = |s: &str| s.replace('\\', "\\\\").replace(',', "\\,");
        let list = items
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{}={}", esc(k), esc(v)),
                None => esc(k),
            })
            .collect::<Vec<_>>()
            .join(",");
        let want: Vec<(String, Option<String>)> = items.into_iter().collect();
        prop_assert_eq!(split_option_list(&list), want);
    }

    #[test]
    fn fuzz_options_value_parsers(s in prop_oneof![option_value(), "\\PC{0,30}", option_value().prop_flat_map(mutated_str)]) {
        for r in [
            parse_size(&s).map(|_| ()),
            parse_rate(&s).map(|_| ()),
            parse_min_free(&s).map(|_| ()),
            parse_duration(&s).map(|_| ()),
        ] {
            if let Err(e) = r {
                prop_assert!(e.contains(&s), "the error names the input {s:?}: {e}");
            }
        }
        // Each value, given to each option that takes one, is a clear answer too.
        for spec in OPTIONS {
            if let Kind::Value(..) = spec.kind {
                let mut cfg = fresh_config();
                if let Err(e) = options::apply_option(&mut cfg, spec.name, Some(&s)) {
                    assert_clear(&e, &(spec.name, &s));
                }
            }
        }
    }

    #[test]
    fn fuzz_options_size_round_trip(n in any::<u64>(), unit in 0..5usize, b in any::<bool>(), lower in any::<bool>()) {
        let suffix = ["", "K", "M", "G", "T"][unit];
        let mut text = format!("{n}{suffix}{}", if b { "B" } else { "" });
        if lower {
            text = text.to_lowercase();
        }
        match n.checked_mul(1 << (10 * unit)) {
            Some(v) => {
                prop_assert_eq!(parse_size(&text), Ok(v));
                prop_assert_eq!(parse_rate(&format!("{text}/s")), Ok(v));
                prop_assert_eq!(parse_min_free(&text), Ok(MinFree::Bytes(v)));
            }
            None => prop_assert!(parse_size(&text).unwrap_err().contains("too large")),
        }
    }

    #[test]
    fn fuzz_options_duration_round_trip(secs in any::<u64>(), nanos in 0..1_000_000_000u32, unit in 0..4usize) {
        // Whole seconds in the unit, and a decimal in seconds, come back exactly.
        let (u, mult) = [("s", 1u64), ("m", 60), ("h", 3600), ("d", 86400)][unit];
        let text = format!("{secs}{u}");
        match secs.checked_mul(mult) {
            Some(v) => prop_assert_eq!(parse_duration(&text), Ok(Duration::from_secs(v))),
            None => prop_assert!(parse_duration(&text).unwrap_err().contains("too long")),
        }
        let text = format!("{secs}.{nanos:09}");
        prop_assert_eq!(parse_duration(&text), Ok(Duration::new(secs, nanos)));
        prop_assert_eq!(parse_min_free(&format!("{}%", secs % 101)), Ok(MinFree::Percent((secs % 101) as u8)));
    }

    /// The fstab form as mount.fuse3 runs it, with any option list: a Config or a usage
    /// error, never a panic.
    #[test]
    fn fuzz_options_cli_mount_form(list in prop_oneof![option_list(), option_list().prop_flat_map(mutated_str), "\\PC{0,40}"]) {
        let argv: Vec<OsString> = ["cachefs", "/srv/src", "/mnt/x", "-o", &list]
            .iter()
            .map(OsString::from)
            .collect();
        let _ = cachefs::cli::parse(argv);
    }
}

// ---------------------------------------------------------------------------------------
// mountinfo

/// Escapes a field the way the kernel writes it (`seq_path_root` with " \t\n\\").
fn kernel_escape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &c in b {
        match c {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{c:03o}").bytes()),
            _ => out.push(c),
        }
    }
    out
}

/// A mountinfo line for `target` and `source`, with 0 to 2 optional fields.
fn mountinfo_line(target: &[u8], fstype: &str, source: &[u8], optional: usize) -> Vec<u8> {
    let mut l = b"36 35 98:0 / ".to_vec();
    l.extend(kernel_escape(target));
    l.extend(b" rw,noatime");
    for o in ["shared:1", "master:7"].iter().take(optional) {
        l.push(b' ');
        l.extend(o.bytes());
    }
    l.extend(format!(" - {fstype} ").bytes());
    l.extend(kernel_escape(source));
    l.extend(b" rw,user_id=0\n");
    l
}

fn abs_path_bytes() -> impl Strategy<Value = Vec<u8>> {
    rel_path_bytes().prop_map(|p| {
        let mut b = b"/".to_vec();
        b.extend(p.as_os_str().as_bytes());
        b
    })
}

proptest! {
    #[test]
    fn fuzz_mountinfo_arbitrary(text in "\\PC{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_mountinfo(&text);
        let _ = parse_mountinfo_bytes(&bytes);
    }

    /// Any target and source the kernel can show come back byte for byte.
    #[test]
    fn fuzz_mountinfo_escapes_round_trip(
        mounts in prop::collection::vec(
            (abs_path_bytes(), select(vec!["fuse.cachefs", "ext4", "fuse", "tmpfs"]), prop::collection::vec(any::<u8>(), 0..20), 0..3usize),
            1..5,
        )
    ) {
        let mut text = Vec::new();
        for (t, f, s, o) in &mounts {
            text.extend(mountinfo_line(t, f, s, *o));
        }
        let parsed = parse_mountinfo_bytes(&text);
        prop_assert_eq!(parsed.len(), mounts.len());
        for (m, (t, f, s, _)) in parsed.iter().zip(&mounts) {
            prop_assert_eq!(m.target.as_os_str().as_bytes(), &t[..]);
            prop_assert_eq!(&m.fstype, f);
            prop_assert_eq!(&m.source, &String::from_utf8_lossy(s));
        }
    }

    /// Damaged lines never panic, and never hide the lines around them.
    #[test]
    fn fuzz_mountinfo_damaged_lines(
        target in abs_path_bytes(),
        damaged in abs_path_bytes().prop_flat_map(|t| mutated(mountinfo_line(&t, "fuse.cachefs", b"/src", 1))),
    ) {
        let mut text = mountinfo_line(&target, "ext4", b"/dev/sda1", 0);
        let mut d = damaged.clone();
        d.retain(|b| *b != b'\n');
        d.push(b'\n');
        text.extend(&d);
        text.extend(mountinfo_line(&target, "tmpfs", b"tmpfs", 2));
        let parsed = parse_mountinfo_bytes(&text);
        prop_assert!(parsed.len() >= 2);
        prop_assert_eq!(parsed[0].target.as_os_str().as_bytes(), &target[..]);
        prop_assert_eq!(parsed.last().map(|m| m.fstype.as_str()), Some("tmpfs"));
    }
}

// ---------------------------------------------------------------------------------------
// The control protocol

fn cmd() -> impl Strategy<Value = Cmd> {
    select(Cmd::ALL.to_vec())
}

/// A JSON value for `paths`: strings with escapes, byte arrays (some out of range), nulls,
/// nesting.
fn json_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        select(vec![
            r#""a\u0000b""#,
            r#""\ud800""#,
            r#""\udfff\ud800""#,
            r#""..""#,
            r#""/etc/passwd""#,
            r#""a/../b""#,
            r#""./a//b/""#,
            r#""\/abs""#,
            r#""""#,
            "[]",
            "[47]",
            "[46,46]",
            "[256]",
            "[-1]",
            "[1.5]",
            "null",
            "true",
            "{}",
            r#"["a"]"#,
            "[[1]]",
            "1e400",
        ])
        .prop_map(String::from),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(|b| format!("{b:?}").replace(' ', "")),
    ]
}

/// A request line near the grammar: known and unknown commands, odd paths, odd `wait`
/// values, extra keys; then mutated.
fn request_json() -> impl Strategy<Value = Vec<u8>> {
    let cmd = prop_oneof![
        cmd().prop_map(|c| format!("\"{}\"", c.name())),
        select(vec![
            "\"frobnicate\"",
            "\"STATUS\"",
            "7",
            "null",
            "[\"status\"]",
            "\"\""
        ])
        .prop_map(String::from),
    ];
    let paths = prop_oneof![
        prop::collection::vec(json_path(), 0..4).prop_map(|p| format!("[{}]", p.join(","))),
        select(vec!["null", "\"a\"", "{}", "7"]).prop_map(String::from),
    ];
    let wait = select(vec!["true", "false", "null", "1", "\"yes\""]);
    (cmd, paths, wait, any::<bool>())
        .prop_map(|(c, p, w, extra)| {
            let extra = if extra {
                r#","x":{"y":[1,{"z":null}]}"#
            } else {
                ""
            };
            format!(r#"{{"cmd":{c},"paths":{p},"wait":{w}{extra}}}"#).into_bytes()
        })
        .prop_flat_map(|b| prop_oneof![Just(b.clone()), mutated(b)])
}

fn check_request(line: &[u8]) {
    match Request::decode(line) {
        Ok(req) => {
            // What decodes encodes to one line that decodes the same.
            let again = req.encode().expect("encodes");
            assert_eq!(again.last(), Some(&b'\n'));
            assert!(!again[..again.len() - 1].contains(&b'\n'));
            assert_eq!(
                Request::decode(&again[..again.len() - 1]).as_ref(),
                Ok(&req)
            );
        }
        Err(e) => {
            assert_clear(&e, &String::from_utf8_lossy(line));
            assert!(e.starts_with("malformed request"), "{e}");
        }
    }
}

/// Every reply type the client decodes, from any line: a value or a clear error.
fn check_replies(line: &[u8]) {
    fn one<R: serde::de::DeserializeOwned>(line: &[u8]) {
        if let Err(e) = Reply::<R>::decode(line) {
            assert_clear(&e, &String::from_utf8_lossy(line));
            assert!(e.starts_with("malformed answer"), "{e}");
        }
    }
    one::<Status>(line);
    one::<Promoted>(line);
    one::<Pinned>(line);
    one::<Unpinned>(line);
    one::<Evicted>(line);
    one::<Stopping>(line);
}

fn promoted() -> impl Strategy<Value = Promoted> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(("\\PC{0,10}", "\\PC{0,10}"), 0..3),
    )
        .prop_map(|(a, f, q, failed)| Promoted {
            already_cached: a,
            files: f,
            queued: q,
            failed: failed
                .into_iter()
                .map(|(path, error)| Failure { path, error })
                .collect(),
        })
}

/// A reply line near the grammar: real replies, mutated.
fn reply_json() -> impl Strategy<Value = Vec<u8>> {
    let real = prop_oneof![
        promoted().prop_map(|p| Reply::Done(Ok(p)).encode().unwrap_or_default()),
        "\\PC{0,20}".prop_map(|e| Reply::<()>::Done(Err(e)).encode().unwrap_or_default()),
        (any::<u64>(), any::<u64>(), "\\PC{0,20}").prop_map(|(d, t, path)| {
            Reply::<()>::Progress(Progress {
                bytes_done: d,
                bytes_total: t,
                elapsed_ms: d / 3,
                path,
            })
            .encode()
            .unwrap_or_default()
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(p, q)| Reply::Done(Ok(Pinned {
            pinned: p,
            queued: q
        }))
        .encode()
        .unwrap_or_default()),
    ];
    real.prop_map(|mut l| {
        l.pop();
        l
    })
    .prop_flat_map(|b| prop_oneof![Just(b.clone()), mutated(b)])
}

proptest! {
    #[test]
    fn fuzz_proto_arbitrary_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
        check_request(&line);
        check_replies(&line);
    }

    #[test]
    fn fuzz_proto_near_valid_requests(line in request_json()) {
        check_request(&line);
        check_replies(&line);
    }

    #[test]
    fn fuzz_proto_near_valid_replies(line in reply_json()) {
        check_replies(&line);
        check_request(&line);
    }

    #[test]
    fn fuzz_proto_request_round_trip(c in cmd(), paths in prop::collection::vec(rel_path_bytes(), 0..4), wait in any::<bool>()) {
        let req = Request::new(c, &paths, wait);
        let line = req.encode().expect("encodes");
        prop_assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        prop_assert_eq!(Request::decode(&line[..line.len() - 1]), Ok(req));
    }

    #[test]
    fn fuzz_proto_reply_round_trip(p in promoted(), e in "\\PC{0,30}", d in any::<u64>(), t in any::<u64>(), path in "\\PC{0,30}") {
        let strip = |mut l: Vec<u8>| { l.pop(); l };
        let done = Reply::Done(Ok(p));
        prop_assert_eq!(Reply::<Promoted>::decode(&strip(done.clone().encode().unwrap())), Ok(done));
        let err = Reply::<Promoted>::Done(Err(e));
        prop_assert_eq!(Reply::<Promoted>::decode(&strip(err.clone().encode().unwrap())), Ok(err));
        let prog = Reply::<Promoted>::Progress(Progress { bytes_done: d, bytes_total: t, elapsed_ms: t / 7, path });
        prop_assert_eq!(Reply::<Promoted>::decode(&strip(prog.clone().encode().unwrap())), Ok(prog));
    }
}

// ---------------------------------------------------------------------------------------
// codec::Reader

#[derive(Debug, Clone)]
enum Field {
    U8(u8),
    U32(u32),
    U64(u64),
    I64(i64),
    Bytes(Vec<u8>),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        any::<u8>().prop_map(Field::U8),
        any::<u32>().prop_map(Field::U32),
        any::<u64>().prop_map(Field::U64),
        any::<i64>().prop_map(Field::I64),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Field::Bytes),
    ]
}

/// Reads `data` with a sequence of field reads chosen by `ops`; every read past the end
/// is `None`, and nothing panics.
fn read_ops(r: &mut Reader<'_>, ops: &[u8]) {
    for op in ops {
        let before = r.remaining();
        let got = match op % 6 {
            0 => r.u8().map(|_| 1),
            1 => r.u32().map(|_| 4),
            2 => r.u64().map(|_| 8),
            3 => r.i64().map(|_| 8),
            4 => r.bytes().map(|b| 4 + b.len()),
            _ => r.take(*op as usize).map(|b| b.len()),
        };
        match got {
            Some(n) => assert_eq!(r.remaining(), before - n),
            None => assert!(r.remaining() <= before),
        }
    }
}

proptest! {
    #[test]
    fn fuzz_codec_arbitrary(data in prop::collection::vec(any::<u8>(), 0..100), magic in prop::collection::vec(any::<u8>(), 0..10), ops in prop::collection::vec(any::<u8>(), 0..20)) {
        if let Some(mut r) = Reader::open(&data, &magic) {
            read_ops(&mut r, &ops);
        }
        // A sealed arbitrary body always opens, and reads fail cleanly past its end.
        let mut w = Writer::new(&magic);
        w.out.extend(&data);
        let sealed = w.finish();
        let mut r = Reader::open(&sealed, &magic).expect("sealed");
        prop_assert_eq!(r.remaining(), data.len());
        read_ops(&mut r, &ops);
    }

    #[test]
    fn fuzz_codec_round_trip(fields in prop::collection::vec(field(), 0..20)) {
        let mut w = Writer::new(b"M\n");
        for f in &fields {
            match f {
                Field::U8(v) => w.u8(*v),
                Field::U32(v) => w.u32(*v),
                Field::U64(v) => w.u64(*v),
                Field::I64(v) => w.i64(*v),
                Field::Bytes(v) => w.bytes(v),
            }
        }
        let data = w.finish();
        let mut r = Reader::open(&data, b"M\n").expect("sealed");
        for f in &fields {
            match f {
                Field::U8(v) => prop_assert_eq!(r.u8(), Some(*v)),
                Field::U32(v) => prop_assert_eq!(r.u32(), Some(*v)),
                Field::U64(v) => prop_assert_eq!(r.u64(), Some(*v)),
                Field::I64(v) => prop_assert_eq!(r.i64(), Some(*v)),
                Field::Bytes(v) => prop_assert_eq!(r.bytes(), Some(&v[..])),
            }
        }
        prop_assert!(r.is_empty());
        // Any one bit flipped anywhere is noticed.
        for i in [0, data.len() / 2, data.len() - 1] {
            let mut bad = data.clone();
            bad[i] ^= 0x10;
            prop_assert!(Reader::open(&bad, b"M\n").is_none());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The cache index

const INDEX_MAGIC: &[u8] = b"CACHEFS-INDEX-1\n";

/// An index body as `Entries::encode` writes it, with arbitrary paths (empty, absolute,
/// `..`, duplicates) and an arbitrary or right count.
fn index_body() -> impl Strategy<Value = Vec<u8>> {
    let path = prop_oneof![
        rel_path_bytes().prop_map(|p| p.into_os_string().into_vec()),
        select(vec![
            &b""[..],
            b"/abs",
            b"a/../b",
            b"..",
            b".",
            b"a//b",
            b"a/",
            b"./a",
            b"a\0b"
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    (
        prop::collection::vec((path, any::<u64>(), any::<u64>(), any::<u8>()), 0..5),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(entries, count)| {
            let mut w = Writer::default();
            for (p, size, at, pinned) in &entries {
                w.bytes(p);
                w.u64(*size);
                w.u64(*at);
                w.u8(*pinned);
            }
            w.u64(count.unwrap_or(entries.len() as u64));
            w.out
        })
}

fn seal(magic: &[u8], body: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(magic);
    w.out.extend(body);
    w.finish()
}

/// Reseals a damaged file so the damage gets past the checksum to the decoder.
fn reseal(mut data: Vec<u8>) -> Vec<u8> {
    if data.len() >= 8 {
        let body = data.len() - 8;
        let sum = fnv1a64(&data[..body]);
        data[body..].copy_from_slice(&sum.to_le_bytes());
    }
    data
}

/// What a decoded index may hold: only what `encode` could have written for a cache
/// whose copies live below `CACHE/data`.
fn check_index(e: &Entries) {
    let again = Entries::decode(&e.encode()).expect("a decoded index encodes to a valid one");
    assert_eq!(
        (again.len(), again.bytes(), again.pinned()),
        (e.len(), e.bytes(), e.pinned())
    );
    for p in e.below(Path::new("")) {
        assert!(!p.as_os_str().is_empty(), "an empty path in the index");
        assert!(
            p.components().all(|c| matches!(c, Component::Normal(_))),
            "{p:?} is not a plain relative path"
        );
        assert!(!p.as_os_str().as_bytes().contains(&0), "{p:?} holds a NUL");
        assert_eq!(again.get(&p), e.get(&p));
    }
}

proptest! {
    #[test]
    fn fuzz_index_arbitrary(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut with_magic = INDEX_MAGIC.to_vec();
        with_magic.extend(&data);
        for d in [data, with_magic.clone(), reseal(with_magic)] {
            if let Some(e) = Entries::decode(&d) {
                check_index(&e);
            }
        }
    }

    #[test]
    fn fuzz_index_sealed_bodies(body in index_body().prop_flat_map(|b| prop_oneof![Just(b.clone()), mutated(b)])) {
        if let Some(e) = Entries::decode(&seal(INDEX_MAGIC, &body)) {
            check_index(&e);
        }
    }

    #[test]
    fn fuzz_index_round_trip(
        entries in prop::collection::vec((rel_path_bytes(), any::<u64>(), any::<u64>(), any::<bool>()), 0..8)
    ) {
        let mut e = Entries::default();
        let mut kept = Vec::new();
        for (p, size, last_open, pinned) in entries {
            // What a publish could record: a plain relative path, no `.` or `..`.
            if p.as_os_str().is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
                continue;
            }
            // Sizes that add up (a real cache's bytes fit in u64).
            let meta = Meta { size: size >> 8, last_open, pinned };
            e.insert(p.clone(), meta);
            kept.retain(|(q, _): &(PathBuf, Meta)| q != &p);
            kept.push((p, meta));
        }
        let d = Entries::decode(&e.encode()).expect("round trip");
        prop_assert_eq!(d.len(), kept.len() as u64);
        prop_assert_eq!((d.bytes(), d.pinned()), (e.bytes(), e.pinned()));
        for (p, m) in &kept {
            prop_assert_eq!(d.get(p), Some(*m));
        }
        // The LRU order survives: the same copies go first.
        prop_assert_eq!(d.victim(), e.victim());
        prop_assert_eq!(d.older_than(u64::MAX), e.older_than(u64::MAX));
    }
}

// ---------------------------------------------------------------------------------------
// The metadata snapshot

const META_MAGIC: &[u8] = b"CACHEFS-META-1\n";
const ROOT: (u64, u64) = (1, 10);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A snapshot body as `MetaCache::encode` writes it, with arbitrary fields: fetch times
/// (0, old, now, in the future), listings with names anywhere in the name bytes, sorted
/// or not, and a count that may lie.
fn meta_body() -> impl Strategy<Value = Vec<u8>> {
    let at = prop_oneof![
        Just(0u64),
        Just(now_ms()),
        any::<u64>(),
        (0..1000u64).prop_map(|d| now_ms() - d)
    ];
    let kid = (0..64u32, 0..8u8, any::<u8>(), any::<u64>());
    let listing = prop::option::of((
        at.clone(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(kid, 0..5),
    ));
    let node = (0..4u64, 0..20u64, at, listing, any::<u8>());
    (
        prop::collection::vec(node, 0..4),
        prop::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(|(nodes, count, right_root)| {
            let mut w = Writer::default();
            w.u64(ROOT.0);
            w.u64(if right_root { ROOT.1 } else { 11 });
            w.u64(count.unwrap_or(nodes.len() as u64));
            for (dev, ino, attr_at, listing, flag) in nodes {
                w.u64(dev);
                w.u64(ino);
                w.u64(attr_at);
                if attr_at != 0 {
                    for v in [4096u64, 8, 0] {
                        w.u64(v);
                    }
                    for v in [1i64, 2, 3] {
                        w.i64(v);
                    }
                    for v in [0u32, 0, 0, libc::S_IFDIR | 0o755, 2, 1000, 1000, 4096] {
                        w.u32(v);
                    }
                }
                match listing {
                    None => w.u8(flag.min(2) * (flag % 2)),
                    Some((at, names, kids)) => {
                        w.u8(1);
                        w.u64(at);
                        w.bytes(&names);
                        w.u32(kids.len() as u32);
                        for (off, len, kind, ino) in kids {
                            w.u32(off);
                            w.u8(len);
                            w.u8(kind);
                            w.u64(ino);
                        }
                    }
                }
            }
            w.out
        })
}

/// After any snapshot is loaded, the cache answers without panicking, and nothing it
/// loaded is fresh for longer than the TTL from now.
fn check_meta(m: &MetaCache, ttl: Duration) {
    assert!(m.stats().nodes <= 1000);
    for dev in 0..4 {
        for ino in 0..20 {
            let _ = m.attr((dev, ino));
            let _ = m.listing((dev, ino));
            for name in ["a", "b", "", "zz"] {
                let _ = m.lookup((dev, ino), OsStr::new(name));
            }
        }
    }
    let _ = m.encode(ROOT);
    let _ = ttl;
}

fn stat(dev: u64, ino: u64, size: i64, mode: u32, mtime: i64) -> libc::stat {
    let mut st = cachefs::sys::zeroed_stat();
    st.st_dev = dev;
    st.st_ino = ino;
    st.st_size = size;
    st.st_mode = mode;
    st.st_nlink = 1;
    st.st_mtime = mtime;
    st
}

proptest! {
    #[test]
    fn fuzz_meta_arbitrary(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let ttl = Duration::from_secs(3600);
        let m = MetaCache::new(ttl, 1000);
        let mut with_magic = META_MAGIC.to_vec();
        with_magic.extend(&data);
        for d in [data, with_magic.clone(), reseal(with_magic)] {
            let _ = m.decode_into(&d, ROOT);
        }
        check_meta(&m, ttl);
    }

    #[test]
    fn fuzz_meta_sealed_bodies(body in meta_body().prop_flat_map(|b| prop_oneof![Just(b.clone()), mutated(b)])) {
        let ttl = Duration::from_secs(3600);
        let m = MetaCache::new(ttl, 1000);
        let loaded = m.decode_into(&seal(META_MAGIC, &body), ROOT);
        if !loaded {
            prop_assert_eq!(m.stats().nodes, 0, "nothing loaded from a refused snapshot");
        }
        check_meta(&m, ttl);
    }

    #[test]
    fn fuzz_meta_round_trip(
        files in prop::collection::btree_map(prop::collection::vec(any::<u8>().prop_filter("name", |b| *b != b'/' && *b != 0), 1..30), (1..1_000_000u64, any::<i64>(), any::<bool>()), 0..8)
    ) {
        let ttl = Duration::from_secs(3600);
        let m = MetaCache::new(ttl, 1000);
        m.put_attr(&stat(ROOT.0, ROOT.1, 4096, libc::S_IFDIR | 0o755, 0));
        let mut entries = Vec::new();
        for (i, (name, (size, mtime, dir))) in files.iter().enumerate() {
            let ino = 100 + i as u64;
            let (mode, kind) = if *dir {
                (libc::S_IFDIR | 0o700, rustix::fs::FileType::Directory)
            } else {
                (libc::S_IFREG | 0o644, rustix::fs::FileType::RegularFile)
            };
            m.put_attr(&stat(ROOT.0, ino, *size as i64, mode, *mtime));
            entries.push(DirEntry { ino, kind, name: OsString::from_vec(name.clone()) });
        }
        m.put_listing(ROOT, &entries);
        let n = MetaCache::new(ttl, 1000);
        prop_assert!(n.decode_into(&m.encode(ROOT), ROOT));
        prop_assert_eq!(n.stats().nodes, m.stats().nodes);
        let mut want: Vec<(Vec<u8>, u64)> = entries.iter().map(|e| (e.name.as_bytes().to_vec(), e.ino)).collect();
        let mut got: Vec<(Vec<u8>, u64)> = n.listing(ROOT).expect("listing").iter().map(|e| (e.name.as_bytes().to_vec(), e.ino)).collect();
        want.sort();
        got.sort();
        prop_assert_eq!(got, want);
        for (i, (name, (size, mtime, _))) in files.iter().enumerate() {
            match n.lookup(ROOT, OsStr::from_bytes(name)) {
                Lookup::Found(key, st) => {
                    prop_assert_eq!(key, (ROOT.0, 100 + i as u64));
                    prop_assert_eq!((st.st_size, st.st_mtime), (*size as i64, *mtime));
                }
                _ => prop_assert!(false, "{:?} not found after the round trip", name),
            }
        }
    }
}
