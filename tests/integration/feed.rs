//! `cachefs feed plex|jellyfin` against a fake media server of the tests' own (a
//! `TcpListener` thread answering as the real servers do, checking each request's path,
//! query, paging and token): exactly the listed files, mapped by `--map`, and the next ones
//! of their directories are promoted, with their subtitles and `.nfo`, nothing else; paths
//! outside every map are reported and skipped; a wrong token, an HTTP error and an
//! unreachable server exit 1 with one line; `--loop` retries after an error.
//!
//! Issue 20's cases, as the real servers give them: Plex answering XML, paging On Deck
//! (`totalSize` greater than `size`), several tokens; Jellyfin's Resume on servers without
//! the old path (12.0) and without the new one (10.8), `--user all` and repeated `--user`,
//! answers escaped as .NET escapes them (`\uXXXX`); Windows paths; a round where one list
//! fails (the others are promoted, exit 1); a round that maps nothing (exit 1, one line).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use crate::common::{BIN, TestMount, eventually, num, send_signal, status, wait_deadline};

const TOKEN: &str = "plex-t0ken";
const API_KEY: &str = "0123456789abcdef0123456789abcdef";
const USER: &str = "4f3c2b1a00000000000000000000beef";

// ---------------------------------------------------------------------------------------
// the fake server

/// One request as the fake server read it.
#[derive(Debug, Clone)]
struct Asked {
    method: String,
    path: String,
    query: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
}

impl Asked {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Answer = dyn Fn(&Asked) -> (u16, String) + Send + Sync;

/// A media server on 127.0.0.1: each connection's request is recorded and answered with
/// `answer(request)` as JSON, then closed. Stopped and joined in `Drop`.
struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Asked>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(answer: impl Fn(&Asked) -> (u16, String) + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake server");
        let addr = listener.local_addr().expect("its address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<Answer> = Arc::new(answer);
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    if let Some(asked) = read_request(&conn) {
                        let (code, body) = answer(&asked);
                        seen.lock().unwrap().push(asked);
                        respond(conn, code, &body);
                    }
                }
            })
        };
        FakeServer {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Asked> {
        self.seen.lock().unwrap().clone()
    }

    /// What was asked, as `PATH?QUERY`, in order.
    fn asked(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|a| format!("{}?{}", a.path, a.query))
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(conn: &TcpStream) -> Option<Asked> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Some(Asked {
        method,
        path,
        query,
        headers,
    })
}

fn respond(mut conn: TcpStream, code: u16, body: &str) {
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    };
    let kind = if body.starts_with('<') {
        "text/xml;charset=utf-8"
    } else {
        "application/json; charset=utf-8"
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Plex's On Deck answer for these files, in the shape Plex gives (trimmed).
fn on_deck(files: &[&str]) -> String {
    let items: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            json!({
                "ratingKey": format!("{}", 100 + i), "type": "episode", "title": format!("Item {i}"),
                "viewOffset": 61000, "lastViewedAt": 1700000000,
                "Media": [{"id": i, "duration": 1500000, "container": "mkv",
                    "Part": [{"id": i, "key": format!("/library/parts/{i}/file.mkv"), "file": f,
                              "size": 1024, "container": "mkv"}]}]
            })
        })
        .collect();
    json!({"MediaContainer": {"size": items.len(), "allowSync": false,
        "identifier": "com.plexapp.plugins.library", "Metadata": items}})
    .to_string()
}

/// Jellyfin's answer to Next Up or Resume for these files (trimmed).
fn items(files: &[&str]) -> String {
    let items: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            json!({"Name": format!("Item {i}"), "ServerId": "f00d", "Id": format!("{i:032x}"),
                   "Path": f, "Type": "Episode", "UserData": {"Played": false}})
        })
        .collect();
    json!({"Items": items, "TotalRecordCount": files.len(), "StartIndex": 0}).to_string()
}

// ---------------------------------------------------------------------------------------
// the mount and the command

/// SOURCE: a season (no zero padding, so natural and byte order differ; 1x9 has subtitles,
/// which come with it and are no "next file"), a film, kids' episodes, and a file the
/// server sees under the mount's own path.
const FILES: &[&str] = &[
    "TV/Show/Season 1/Show - 1x1.mkv",
    "TV/Show/Season 1/Show - 1x2.mkv",
    "TV/Show/Season 1/Show - 1x9.mkv",
    "TV/Show/Season 1/Show - 1x9.srt",
    "TV/Show/Season 1/Show - 1x10.mkv",
    "TV/Show/Season 1/Show - 1x11.mkv",
    "Movies/Film (2020)/Film.mkv",
    "Kids/k1.mkv",
    "Kids/k2.mkv",
    "Kids/k3.mkv",
    "Kids/k4.mkv",
    "Other/o.mkv",
];

fn mount() -> TestMount {
    TestMount::builder()
        .populate(|src| {
            for f in FILES {
                let p = src.join(f);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, format!("contents of {f}").repeat(64)).unwrap();
            }
        })
        .start()
}

/// What `cachefs feed` did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cachefs feed ARGS` to its end (it must end within 20 s).
fn feed(args: &[impl AsRef<OsStr>]) -> Ran {
    let out = TempDir::new().unwrap();
    let mut child = spawn(args, out.path());
    let Some(st) = wait_deadline(&mut child, Duration::from_secs(20)) else {
        send_signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
        panic!("cachefs feed is still running after 20 s");
    };
    Ran {
        code: st.code(),
        stdout: fs::read_to_string(out.path().join("stdout")).unwrap(),
        stderr: fs::read_to_string(out.path().join("stderr")).unwrap(),
    }
}

fn spawn(args: &[impl AsRef<OsStr>], out: &Path) -> Child {
    Command::new(BIN)
        .arg("feed")
        .args(args)
        .env_remove("CACHEFS_PLEX_TOKEN")
        .env_remove("CACHEFS_JELLYFIN_API_KEY")
        .stdin(Stdio::null())
        .stdout(fs::File::create(out.join("stdout")).unwrap())
        .stderr(fs::File::create(out.join("stderr")).unwrap())
        .spawn()
        .expect("spawn cachefs feed")
}

/// `plex --url URL --token TOKEN REST...`.
fn plex_args(url: &str, rest: &[&str]) -> Vec<String> {
    ["plex", "--url", url, "--token", TOKEN]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

/// `jellyfin --url URL --api-key KEY --user USER REST...`.
fn jellyfin_args(url: &str, key: &str, user: &str, rest: &[&str]) -> Vec<String> {
    ["jellyfin", "--url", url, "--api-key", key, "--user", user]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

/// Waits for the promoter to finish `n` promotions with nothing left queued, then returns
/// every file in the cache, relative to the mount.
fn settled_cache(m: &TestMount, n: u64) -> BTreeSet<String> {
    eventually("the promotions to finish", m, || {
        let s = status(m);
        num(&s, "promotions_done") + num(&s, "promotions_failed") >= n
            && num(&s, "queued") == 0
            && s["in_flight"].as_array().is_some_and(|a| a.is_empty())
    });
    assert_eq!(num(&status(m), "promotions_failed"), 0);
    cached(m)
}

fn cached(m: &TestMount) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(root, &p, out),
                Ok(t) if t.is_file() => {
                    out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
                _ => {}
            }
        }
    }
    let data = m.cache.join("data");
    let mut out = BTreeSet::new();
    walk(&data, &data, &mut out);
    out
}

fn set(files: &[&str]) -> BTreeSet<String> {
    files.iter().map(|s| s.to_string()).collect()
}

fn mnt(m: &TestMount) -> String {
    m.mnt.to_str().unwrap().to_string()
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// A Plex that answers On Deck with `files` when asked with the right token, 401 otherwise.
fn plex(files: Vec<String>) -> FakeServer {
    FakeServer::start(move |a| {
        if a.header("x-plex-token") != Some(TOKEN) {
            return (
                401,
                "<html><head><title>Unauthorized</title></head></html>".into(),
            );
        }
        if a.method != "GET" || a.path != "/library/onDeck" {
            return (404, "{}".into());
        }
        let refs: Vec<&str> = files.iter().map(String::as_str).collect();
        (200, on_deck(&refs))
    })
}

// ---------------------------------------------------------------------------------------
// tests

#[test]
fn plex_on_deck_and_the_next_episode_are_promoted_and_nothing_else() {
    crate::require_mount!();
    let m = mount();
    let mp = mnt(&m);
    let server = plex(vec![
        "/data/tv/Show/Season 1/Show - 1x9.mkv".into(),
        "/data/movies/Film (2020)/Film.mkv".into(),
        "/srv/elsewhere/x.mkv".into(),
        format!("{mp}/Other/o.mkv"),
        "/data/tv/Show/Season 1/Show - 1x99.mkv".into(),
    ]);
    let (tv, misc, movies) = (
        format!("/data/tv={mp}/TV"),
        format!("/data={mp}/Misc"),
        format!("/data/movies/={mp}/Movies/"),
    );
    let args = plex_args(
        &server.url(),
        &["--map", &misc, "--map", &tv, "--map", &movies, &mp],
    );
    let ran = feed(&args);
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);

    // The request, as Plex documents it.
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].path.as_str(), seen[0].query.as_str()),
        ("/library/onDeck", "")
    );
    assert_eq!(seen[0].header("accept"), Some("application/json"));
    assert_eq!(seen[0].header("x-plex-container-start"), Some("0"));
    assert_eq!(seen[0].header("x-plex-container-size"), Some("100"));

    let season = format!("{mp}/TV/Show/Season 1");
    assert_eq!(
        lines(&ran.stdout),
        [
            format!("queued {season}/Show - 1x9.mkv (on deck)"),
            format!("queued {season}/Show - 1x10.mkv (next after Show - 1x9.mkv)"),
            format!("queued {mp}/Movies/Film (2020)/Film.mkv (on deck)"),
            format!("queued {mp}/Other/o.mkv (on deck)"),
            format!("feed plex {mp}: files 4, queued 4, already cached 0, skipped 2"),
        ],
        "stderr: {}",
        ran.stderr
    );
    let err = lines(&ran.stderr);
    assert_eq!(err.len(), 2, "{}", ran.stderr);
    assert!(
        err[0].starts_with("cachefs: feed plex: skipped /srv/elsewhere/x.mkv: no --map covers it"),
        "{}",
        err[0]
    );
    assert!(
        err[1].contains("skipped /data/tv/Show/Season 1/Show - 1x99.mkv:")
            && err[1].contains("No such file"),
        "{}",
        err[1]
    );

    let want = set(&[
        "TV/Show/Season 1/Show - 1x9.mkv",
        "TV/Show/Season 1/Show - 1x9.srt",
        "TV/Show/Season 1/Show - 1x10.mkv",
        "Movies/Film (2020)/Film.mkv",
        "Other/o.mkv",
    ]);
    assert_eq!(settled_cache(&m, 5), want);

    // Again: nothing new to do, and it says so.
    let ran = feed(&args);
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    assert!(
        ran.stdout
            .contains(&format!("already cached {season}/Show - 1x9.mkv (on deck)")),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.ends_with(&format!(
            "feed plex {mp}: files 4, queued 0, already cached 4, skipped 2\n"
        )),
        "{}",
        ran.stdout
    );
    assert_eq!(num(&status(&m), "promotions_done"), 5);
    assert_eq!(cached(&m), want);
}

#[test]
fn plex_wrong_token_is_one_line_and_promotes_nothing() {
    crate::require_mount!();
    let m = mount();
    let mp = mnt(&m);
    let server = plex(vec![format!("{mp}/Other/o.mkv")]);
    let url = server.url();

    let ran = feed(&["plex", "--url", &url, "--token", "wrong", &mp]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(ran.stdout, "");
    assert_eq!(
        lines(&ran.stderr),
        [format!(
            "cachefs: feed plex: Plex at {url} refused the request for On Deck (HTTP 401): \
             the token is wrong: give the server's X-Plex-Token with --token"
        )]
    );
    assert!(!ran.stderr.contains("wrong\""), "the token is not shown");

    // The token in the URL's query, as Plex's own links carry it: sent as the header.
    let with_token = format!("{url}/?X-Plex-Token={TOKEN}");
    let ran = feed(&["plex", "--url", &with_token, "--next", "0", &mp]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("x-plex-token"), Some(TOKEN));
    assert_eq!(seen[1].query, "", "the token goes in the header only");
    assert!(!ran.stdout.contains(TOKEN) && !ran.stderr.contains(TOKEN));
    assert_eq!(settled_cache(&m, 1), set(&["Other/o.mkv"]));
}

#[test]
fn jellyfin_next_up_and_resume_with_two_next_episodes() {
    crate::require_mount!();
    let m = mount();
    let mp = mnt(&m);
    // A 10.11 server: the old Resume path is still served beside the new one.
    let resume_path = format!("/Users/{USER}/Items/Resume");
    let server = FakeServer::start(move |a| {
        let authorized = a.header("authorization")
            == Some(&format!("MediaBrowser Token=\"{API_KEY}\""))
            || a.header("x-emby-token") == Some(API_KEY);
        if !authorized {
            return (401, String::new());
        }
        match (a.path.as_str(), a.query.as_str()) {
            ("/jf/Shows/NextUp", q) if q == format!("userId={USER}&fields=Path") => (
                200,
                items(&[
                    "/media/tv/Show/Season 1/Show - 1x2.mkv",
                    "/somewhere/else/Show - 1x5.mkv",
                ]),
            ),
            (p, q)
                if p == format!("/jf{resume_path}") && q == "fields=Path"
                    || p == "/jf/UserItems/Resume" && q == format!("userId={USER}&fields=Path") =>
            {
                (
                    200,
                    items(&[
                        "/media/movies/Film (2020)/Film.mkv",
                        "/media/tv/Kids/k1.mkv",
                    ]),
                )
            }
            _ => (404, "{}".into()),
        }
    });
    let (tv, movies, kids) = (
        format!("/media/tv={mp}/TV"),
        format!("/media/movies={mp}/Movies"),
        format!("/media/tv/Kids={mp}/Kids"),
    );
    let url = format!("{}/jf/", server.url());
    let maps = ["--map", &tv, "--map", &movies, "--map", &kids];
    let ran = feed(&jellyfin_args(
        &url,
        API_KEY,
        USER,
        &[&maps[..], &["--next", "2", &mp]].concat(),
    ));
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);

    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].path, "/jf/UserItems/Resume", "the new path first");
    for s in &seen {
        assert_eq!(
            s.header("authorization"),
            Some(format!("MediaBrowser Token=\"{API_KEY}\"").as_str())
        );
        assert_eq!(s.header("x-emby-token"), Some(API_KEY));
    }

    let season = format!("{mp}/TV/Show/Season 1");
    assert_eq!(
        lines(&ran.stdout),
        [
            format!("queued {season}/Show - 1x2.mkv (next up)"),
            format!("queued {season}/Show - 1x9.mkv (next after Show - 1x2.mkv)"),
            format!("queued {season}/Show - 1x10.mkv (next after Show - 1x2.mkv)"),
            format!("queued {mp}/Movies/Film (2020)/Film.mkv (resume)"),
            format!("queued {mp}/Kids/k1.mkv (resume)"),
            format!("queued {mp}/Kids/k2.mkv (next after k1.mkv)"),
            format!("queued {mp}/Kids/k3.mkv (next after k1.mkv)"),
            format!("feed jellyfin {mp}: files 7, queued 7, already cached 0, skipped 1"),
        ],
        "stderr: {}",
        ran.stderr
    );
    assert_eq!(
        lines(&ran.stderr),
        [format!(
            "cachefs: feed jellyfin: skipped /somewhere/else/Show - 1x5.mkv: no --map covers \
             it and it is not under MOUNTPOINT {mp}"
        )]
    );
    assert_eq!(
        settled_cache(&m, 8),
        set(&[
            "TV/Show/Season 1/Show - 1x2.mkv",
            "TV/Show/Season 1/Show - 1x9.mkv",
            "TV/Show/Season 1/Show - 1x9.srt",
            "TV/Show/Season 1/Show - 1x10.mkv",
            "Movies/Film (2020)/Film.mkv",
            "Kids/k1.mkv",
            "Kids/k2.mkv",
            "Kids/k3.mkv",
        ])
    );

    // A wrong key: one line that says so, nothing more promoted.
    let ran = feed(&jellyfin_args(&url, "nope", USER, &[&mp]));
    assert_eq!(ran.code, Some(1));
    assert_eq!(ran.stdout, "");
    assert_eq!(
        lines(&ran.stderr),
        [format!(
            "cachefs: feed jellyfin: Jellyfin at {} refused the request for Next Up (HTTP \
             401): the API key is wrong: give a key from Dashboard > API Keys with --api-key",
            url.trim_end_matches('/')
        )]
    );
    // An unknown user: the server's 404 to each list, and what to check.
    let ran = feed(&jellyfin_args(&url, API_KEY, "0000", &[&mp]));
    assert_eq!(ran.code, Some(1));
    assert_eq!(ran.stdout, "");
    let at = format!(
        "cachefs: feed jellyfin: Jellyfin at {}",
        url.trim_end_matches('/')
    );
    assert_eq!(
        lines(&ran.stderr),
        [
            format!(
                "{at} answered HTTP 404 to /Shows/NextUp (Next Up): check --user (the user's ID) and --url"
            ),
            format!(
                "{at} answered HTTP 404 to /UserItems/Resume and /Users/0000/Items/Resume (Resume): check --user (the user's ID) and --url"
            ),
        ]
    );
    assert_eq!(num(&status(&m), "promotions_done"), 8);
}

#[test]
fn unreachable_server_errors_and_bad_maps_are_one_line() {
    crate::require_mount!();
    let m = mount();
    let mp = mnt(&m);

    // A port nobody listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let ran = feed(&plex_args(&url, &[&mp]));
    assert_eq!(ran.code, Some(1));
    assert_eq!(ran.stdout, "");
    let err = lines(&ran.stderr);
    assert_eq!(err.len(), 1, "{}", ran.stderr);
    assert!(
        err[0].starts_with(&format!("cachefs: feed plex: cannot reach Plex at {url}: ")),
        "{}",
        err[0]
    );
    assert!(err[0].to_lowercase().contains("refused"), "{}", err[0]);

    // A server error.
    let server = FakeServer::start(|_| (500, "{\"error\":\"boom\"}".into()));
    let ran = feed(&plex_args(&server.url(), &[&mp]));
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        lines(&ran.stderr),
        [format!(
            "cachefs: feed plex: Plex at {} answered HTTP 500 to /library/onDeck (On Deck)",
            server.url()
        )]
    );
    // An answer of another shape (a proxy's page).
    let html = FakeServer::start(|_| (200, "<html><body>It works!</body></html>".into()));
    let ran = feed(&plex_args(&html.url(), &[&mp]));
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        lines(&ran.stderr),
        [format!(
            "cachefs: feed plex: Plex at {} answered /library/onDeck with not an On Deck \
             answer (XML with <MediaContainer>): the root is <html>",
            html.url()
        )]
    );

    // A map onto somewhere else than the mount: a usage error before anything is asked.
    let ran = feed(&plex_args(
        &server.url(),
        &["--map", "/data=/elsewhere", &mp],
    ));
    assert_eq!(ran.code, Some(2));
    assert_eq!(lines(&ran.stderr).len(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("/elsewhere is not under MOUNTPOINT"),
        "{}",
        ran.stderr
    );
    // https, which this build does not speak.
    let ran = feed(&plex_args("https://plex:32400", &[&mp]));
    assert_eq!(ran.code, Some(2));
    assert!(ran.stderr.contains("plain http only"), "{}", ran.stderr);
    assert_eq!(server.seen().len(), 1, "only the first run asked it");

    // Not a cachefs mount.
    let plain = TempDir::new().unwrap();
    let ran = feed(&plex_args(&server.url(), &[plain.path().to_str().unwrap()]));
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr.contains("is not under a cachefs mount"),
        "{}",
        ran.stderr
    );

    assert_eq!(num(&status(&m), "promotions_done"), 0);
    assert!(cached(&m).is_empty());
}

/// A `cachefs feed --loop` process, killed and reaped in `Drop`.
struct Looping {
    child: Child,
    out: TempDir,
}

impl Looping {
    fn stdout(&self) -> String {
        fs::read_to_string(self.out.path().join("stdout")).unwrap_or_default()
    }
    fn stderr(&self) -> String {
        fs::read_to_string(self.out.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Looping {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.child.id(), libc::SIGTERM);
        }
        if wait_deadline(&mut self.child, Duration::from_secs(5)).is_none() {
            send_signal(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

#[test]
fn loop_retries_after_an_error_and_keeps_going() {
    crate::require_mount!();
    let m = mount();
    let mp = mnt(&m);
    let on_deck_path = format!("{mp}/Kids/k3.mkv");
    let calls = Arc::new(Mutex::new(0u32));
    let server = {
        let calls = calls.clone();
        FakeServer::start(move |_| {
            let mut n = calls.lock().unwrap();
            *n += 1;
            if *n == 1 {
                (503, "{}".into())
            } else {
                (200, on_deck(&[on_deck_path.as_str()]))
            }
        })
    };
    let out = TempDir::new().unwrap();
    let child = spawn(&plex_args(&server.url(), &["--loop", "1", &mp]), out.path());
    let mut looping = Looping { child, out };

    // The first round fails and says so; the next promotes; later ones find it cached.
    let again = format!("feed plex {mp}: files 2, queued 0, already cached 2, skipped 0\n");
    eventually("a round that finds both cached", &m, || {
        looping.stdout().contains(&again)
    });
    assert_eq!(settled_cache(&m, 2), set(&["Kids/k3.mkv", "Kids/k4.mkv"]));
    assert!(
        looping.child.try_wait().unwrap().is_none(),
        "--loop exited; stderr: {}",
        looping.stderr()
    );
    assert!(server.seen().len() >= 3);
    assert_eq!(
        lines(&looping.stderr()),
        [format!(
            "cachefs: feed plex: Plex at {} answered HTTP 503 to /library/onDeck (On Deck)",
            server.url()
        )]
    );
    let out = looping.stdout();
    assert!(
        out.starts_with(&format!(
            "queued {mp}/Kids/k3.mkv (on deck)\nqueued {mp}/Kids/k4.mkv (next after k3.mkv)\n\
             feed plex {mp}: files 2, queued 2, already cached 0, skipped 0\n"
        )),
        "{out}"
    );

    send_signal(looping.child.id(), libc::SIGTERM);
    let st = wait_deadline(&mut looping.child, Duration::from_secs(5));
    assert!(st.is_some(), "--loop did not stop on SIGTERM");
}

// ---------------------------------------------------------------------------------------
// issue 20: the servers as they really answer, and every user in the house

/// A value of the query `q` (`a=1&b=2`), as sent (IDs and numbers need no decoding).
fn query_value<'q>(q: &'q str, key: &str) -> Option<&'q str> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A paging parameter, read as Plex reads it: from the header, or else the query.
fn paging(a: &Asked, name: &str) -> Option<usize> {
    a.header(&name.to_ascii_lowercase())
        .or_else(|| query_value(&a.query, name))
        .and_then(|v| v.parse().ok())
}

/// `s` as an XML attribute value, as Plex writes it.
fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// One page of Plex's On Deck for `files`, in JSON or in XML, with the container's
/// `size`, `totalSize` and `offset` as Plex gives them.
fn on_deck_page(files: &[String], start: usize, size: usize, xml: bool) -> String {
    let end = files.len().min(start + size);
    let page = &files[start.min(end)..end];
    if !xml {
        let refs: Vec<&str> = page.iter().map(String::as_str).collect();
        let mut v: serde_json::Value = serde_json::from_str(&on_deck(&refs)).unwrap();
        v["MediaContainer"]["totalSize"] = json!(files.len());
        v["MediaContainer"]["offset"] = json!(start);
        return v.to_string();
    }
    let items: String = page
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "<Video ratingKey=\"{}\" key=\"/library/metadata/{0}\" type=\"episode\" \
                 title=\"Tom &amp; Jerry&apos;s\" summary=\"One&#10;two &lt;3&gt;\" \
                 viewOffset=\"61000\">\n<Media id=\"{0}\" duration=\"1500000\" \
                 container=\"mkv\">\n<Part id=\"{0}\" key=\"/library/parts/{0}/file.mkv\" \
                 file=\"{}\" size=\"1024\" container=\"mkv\" />\n</Media>\n\
                 <Genre tag=\"Comedy\" />\n</Video>\n",
                start + i,
                xml_attr(f)
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MediaContainer size=\"{}\" \
         totalSize=\"{}\" offset=\"{start}\" allowSync=\"0\" \
         identifier=\"com.plexapp.plugins.library\" \
         mediaTagPrefix=\"/system/bundle/media/flags/\">\n{items}</MediaContainer>\n",
        page.len(),
        files.len()
    )
}

/// A Plex with one On Deck list per token (401 for any other token), paging as Plex does:
/// at most `cap` items a page however many are asked for (`cap` too without paging), in
/// XML if `xml` (as when the Accept header is not honoured), else JSON.
fn plex_of(decks: Vec<(&'static str, Vec<String>)>, cap: usize, xml: bool) -> FakeServer {
    FakeServer::start(move |a| {
        let Some((_, files)) = decks
            .iter()
            .find(|(t, _)| a.header("x-plex-token") == Some(t))
        else {
            return (
                401,
                "<html><head><title>Unauthorized</title></head></html>".into(),
            );
        };
        if a.method != "GET" || a.path != "/library/onDeck" {
            return (404, "{}".into());
        }
        let start = paging(a, "X-Plex-Container-Start").unwrap_or(0);
        let size = paging(a, "X-Plex-Container-Size").unwrap_or(cap).min(cap);
        (200, on_deck_page(files, start, size, xml))
    })
}

/// JSON as .NET's default encoder writes it, which Jellyfin's answers may be: every
/// non-ASCII character as `\uXXXX` (surrogate pairs beyond the BMP), and `&<>'+` too.
fn dotnet_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for c in v.to_string().chars() {
        if c.is_ascii() && !"&<>'+".contains(c) {
            out.push(c);
        } else {
            for u in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{u:04X}"));
            }
        }
    }
    out
}

/// A user of the fake Jellyfin: ID, name, disabled, Next Up, Resume.
struct JfUser {
    id: &'static str,
    name: &'static str,
    disabled: bool,
    next_up: Vec<String>,
    resume: Vec<String>,
}

fn jf_user(id: &'static str, name: &'static str, next_up: &[&str], resume: &[&str]) -> JfUser {
    JfUser {
        id,
        name,
        disabled: false,
        next_up: next_up.iter().map(|s| s.to_string()).collect(),
        resume: resume.iter().map(|s| s.to_string()).collect(),
    }
}

/// Which Resume paths a Jellyfin serves: 10.8 only the old `/Users/ID/Items/Resume`, 10.9
/// to 10.11 both, a server without the obsolete one only `/UserItems/Resume`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Resume {
    OldOnly,
    Both,
    NewOnly,
}

/// A Jellyfin with these users, answering with the API key only, in .NET's escaping;
/// `broken`: a path that answers 500.
fn jellyfin_of(users: Vec<JfUser>, resume: Resume, broken: Option<&'static str>) -> FakeServer {
    FakeServer::start(move |a| {
        if a.header("authorization") != Some(&format!("MediaBrowser Token=\"{API_KEY}\"")) {
            return (401, String::new());
        }
        if Some(a.path.as_str()) == broken {
            return (500, "Error processing request.".into());
        }
        let list = |files: &[String]| {
            let items: Vec<_> = files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    json!({"Name": format!("Épisode {i} ✓ 😀"), "ServerId": "f00d",
                           "Id": format!("{i:032x}"), "Path": f, "Type": "Episode",
                           "UserData": {"PlaybackPositionTicks": 0, "Played": false}})
                })
                .collect();
            let v = json!({"Items": items, "TotalRecordCount": files.len(), "StartIndex": 0});
            (200, dotnet_json(&v))
        };
        let user = |id: Option<&str>| users.iter().find(|u| Some(u.id) == id);
        let by_query = user(query_value(&a.query, "userId"));
        let fields_path = query_value(&a.query, "fields") == Some("Path");
        match a.path.as_str() {
            "/Users" => {
                let all: Vec<_> = users
                    .iter()
                    .filter(|u| query_value(&a.query, "isDisabled") != Some("false") || !u.disabled)
                    .map(|u| {
                        json!({"Name": u.name, "ServerId": "f00d", "Id": u.id, "HasPassword": true,
                               "Policy": {"IsAdministrator": false, "IsHidden": true,
                                          "IsDisabled": u.disabled}})
                    })
                    .collect();
                (200, dotnet_json(&json!(all)))
            }
            "/Shows/NextUp" if fields_path => match by_query {
                Some(u) => list(&u.next_up),
                None => (404, String::new()),
            },
            "/UserItems/Resume" if resume != Resume::OldOnly && fields_path => match by_query {
                Some(u) => list(&u.resume),
                None => (404, String::new()),
            },
            p if resume != Resume::NewOnly && fields_path => {
                let id = p
                    .strip_prefix("/Users/")
                    .and_then(|p| p.strip_suffix("/Items/Resume"));
                match user(id) {
                    Some(u) => list(&u.resume),
                    None => (404, String::new()),
                }
            }
            _ => (404, String::new()),
        }
    })
}

/// A mount whose SOURCE holds `files`.
fn mount_of(files: &'static [&'static str]) -> TestMount {
    TestMount::builder()
        .populate(move |src| {
            for f in files {
                let p = src.join(f);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, format!("contents of {f}").repeat(64)).unwrap();
            }
        })
        .start()
}

#[test]
fn plex_xml_answers_are_read_with_their_entities() {
    crate::require_mount!();
    const NAMES: &[&str] = &[
        "TV/Tom & Jerry's \"Best\"/S01E01 <pilot>.mkv",
        "TV/Tom & Jerry's \"Best\"/S01E02.mkv",
        "Anime/進撃の巨人/第1話  ✓.mkv",
    ];
    let m = mount_of(NAMES);
    let mp = mnt(&m);
    let server = plex_of(
        vec![(
            TOKEN,
            vec![format!("/data/{}", NAMES[0]), format!("/data/{}", NAMES[2])],
        )],
        100,
        true,
    );
    let map = format!("/data={mp}");
    let ran = feed(&plex_args(&server.url(), &["--map", &map, &mp]));
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    assert_eq!(
        lines(&ran.stdout),
        [
            format!("queued {mp}/{} (on deck)", NAMES[0]),
            format!("queued {mp}/{} (next after S01E01 <pilot>.mkv)", NAMES[1]),
            format!("queued {mp}/{} (on deck)", NAMES[2]),
            format!("feed plex {mp}: files 3, queued 3, already cached 0, skipped 0"),
        ],
        "stderr: {}",
        ran.stderr
    );
    assert_eq!(ran.stderr, "");
    assert_eq!(settled_cache(&m, 3), set(NAMES));
}

#[test]
fn plex_on_deck_is_paged_until_total_size() {
    crate::require_mount!();
    // 230 items, the server giving at most 50 a page: five pages.
    const N: usize = 230;
    let names: &'static [&'static str] = Box::leak(
        (0..N)
            .map(|i| &*Box::leak(format!("Many/e{i:03}.mkv").into_boxed_str()))
            .collect::<Vec<&'static str>>()
            .into_boxed_slice(),
    );
    let m = mount_of(names);
    let mp = mnt(&m);
    let files: Vec<String> = names.iter().map(|n| format!("{mp}/{n}")).collect();
    let server = plex_of(vec![(TOKEN, files)], 50, false);
    let ran = feed(&plex_args(&server.url(), &["--next", "0", &mp]));
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    assert!(
        ran.stdout.ends_with(&format!(
            "feed plex {mp}: files {N}, queued {N}, already cached 0, skipped 0\n"
        )),
        "{}",
        ran.stdout
    );
    let starts: Vec<Option<usize>> = server
        .seen()
        .iter()
        .map(|a| paging(a, "X-Plex-Container-Start"))
        .collect();
    assert_eq!(starts, [Some(0), Some(50), Some(100), Some(150), Some(200)]);
    assert_eq!(settled_cache(&m, N as u64).len(), N);
}

/// SOURCE for the several-users, Windows and partial-round tests.
const HOUSE: &[&str] = &[
    "TV/Show/Season 1/Show - 1x1.mkv",
    "TV/Show/Season 1/Show - 1x2.mkv",
    "TV/Show/Season 1/Show - 1x3.mkv",
    "Movies/Film (2020)/Film.mkv",
    "Kids/k1.mkv",
    "Kids/k2.mkv",
    "Kids/k3.mkv",
    "Anime/進撃 & 巨人/第1話 \"😀\".mkv",
];

#[test]
fn plex_on_deck_of_every_token_is_unioned() {
    crate::require_mount!();
    let m = mount_of(HOUSE);
    let mp = mnt(&m);
    let at = |f: &str| format!("/data/{f}");
    // The owner, a managed user (the kid) and a shared user whose token has been revoked.
    let server = plex_of(
        vec![
            (TOKEN, vec![at(HOUSE[0]), at(HOUSE[3])]),
            ("kid-t0ken", vec![at(HOUSE[4]), at(HOUSE[3])]),
        ],
        100,
        false,
    );
    let map = format!("/data={mp}");
    let args = plex_args(
        &server.url(),
        &[
            "--token",
            "kid-t0ken",
            "--token",
            "revoked",
            "--map",
            &map,
            &mp,
        ],
    );
    let ran = feed(&args);
    assert_eq!(ran.code, Some(1), "stderr: {}", ran.stderr);
    assert_eq!(
        lines(&ran.stdout),
        [
            format!("queued {mp}/{} (on deck)", HOUSE[0]),
            format!("queued {mp}/{} (next after Show - 1x1.mkv)", HOUSE[1]),
            format!("queued {mp}/{} (on deck)", HOUSE[3]),
            format!("queued {mp}/{} (on deck)", HOUSE[4]),
            format!("queued {mp}/{} (next after k1.mkv)", HOUSE[5]),
            format!("feed plex {mp}: files 5, queued 5, already cached 0, skipped 0"),
        ]
    );
    assert_eq!(
        lines(&ran.stderr),
        [format!(
            "cachefs: feed plex: Plex at {} refused the request for On Deck of token 3 of 3 \
             (HTTP 401): the token is wrong: give the server's X-Plex-Token with --token",
            server.url()
        )]
    );
    assert!(!ran.stderr.contains("revoked") && !ran.stdout.contains("kid-t0ken"));
    let tokens: Vec<String> = server
        .seen()
        .iter()
        .map(|a| a.header("x-plex-token").unwrap_or("").to_string())
        .collect();
    assert_eq!(tokens, [TOKEN, "kid-t0ken", "revoked"]);
    assert_eq!(
        settled_cache(&m, 5),
        set(&[HOUSE[0], HOUSE[1], HOUSE[3], HOUSE[4], HOUSE[5]])
    );
}

#[test]
fn jellyfin_resume_works_with_either_path_missing() {
    crate::require_mount!();
    for resume in [Resume::NewOnly, Resume::OldOnly, Resume::Both] {
        let m = mount_of(HOUSE);
        let mp = mnt(&m);
        let server = jellyfin_of(
            // Its path comes escaped as .NET escapes it: \uXXXX for each non-ASCII
            // character, \u0026 for &, a surrogate pair for the emoji.
            vec![jf_user(
                USER,
                "Ann",
                &["/media/Kids/k1.mkv", &format!("/media/{}", HOUSE[7])],
                &["/media/Movies/Film (2020)/Film.mkv"],
            )],
            resume,
            None,
        );
        let map = format!("/media={mp}");
        let ran = feed(&jellyfin_args(
            &server.url(),
            API_KEY,
            USER,
            &["--map", &map, "--next", "0", &mp],
        ));
        assert_eq!(ran.code, Some(0), "{resume:?}: {}", ran.stderr);
        assert_eq!(
            lines(&ran.stdout),
            [
                format!("queued {mp}/Kids/k1.mkv (next up)"),
                format!("queued {mp}/{} (next up)", HOUSE[7]),
                format!("queued {mp}/Movies/Film (2020)/Film.mkv (resume)"),
                format!("feed jellyfin {mp}: files 3, queued 3, already cached 0, skipped 0"),
            ],
            "{resume:?}"
        );
        assert_eq!(ran.stderr, "", "{resume:?}");
        let asked = server.asked();
        let mut want = vec![
            format!("/Shows/NextUp?userId={USER}&fields=Path"),
            format!("/UserItems/Resume?userId={USER}&fields=Path"),
        ];
        if resume == Resume::OldOnly {
            want.push(format!("/Users/{USER}/Items/Resume?fields=Path"));
        }
        assert_eq!(asked, want, "{resume:?}");
        assert_eq!(
            settled_cache(&m, 3),
            set(&["Kids/k1.mkv", HOUSE[7], "Movies/Film (2020)/Film.mkv"])
        );
    }
}

#[test]
fn jellyfin_lists_of_every_user_are_unioned() {
    crate::require_mount!();
    const ANN: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    const BO: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";
    const OLD: &str = "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c";
    let users = || {
        let mut old = jf_user(OLD, "Old", &["/media/Kids/k3.mkv"], &[]);
        old.disabled = true;
        vec![
            jf_user(
                ANN,
                "Ann",
                &["/media/TV/Show/Season 1/Show - 1x1.mkv"],
                &["/media/Movies/Film (2020)/Film.mkv"],
            ),
            old,
            jf_user(
                BO,
                "Bo",
                &["/media/Kids/k1.mkv"],
                &["/media/Movies/Film (2020)/Film.mkv"],
            ),
        ]
    };
    let want_out = |mp: &str| {
        vec![
            format!("queued {mp}/TV/Show/Season 1/Show - 1x1.mkv (next up)"),
            format!("queued {mp}/Movies/Film (2020)/Film.mkv (resume)"),
            format!("queued {mp}/Kids/k1.mkv (next up)"),
            format!("feed jellyfin {mp}: files 3, queued 3, already cached 0, skipped 0"),
        ]
    };

    // --user all: the users the server lists, the disabled one left out.
    let m = mount_of(HOUSE);
    let mp = mnt(&m);
    let server = jellyfin_of(users(), Resume::NewOnly, None);
    let map = format!("/media={mp}");
    let ran = feed(&jellyfin_args(
        &server.url(),
        API_KEY,
        "all",
        &["--map", &map, "--next", "0", &mp],
    ));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(lines(&ran.stdout), want_out(&mp), "{}", ran.stderr);
    let asked = server.asked();
    assert_eq!(
        asked,
        [
            "/Users?isDisabled=false".to_string(),
            format!("/Shows/NextUp?userId={ANN}&fields=Path"),
            format!("/UserItems/Resume?userId={ANN}&fields=Path"),
            format!("/Shows/NextUp?userId={BO}&fields=Path"),
            format!("/UserItems/Resume?userId={BO}&fields=Path"),
        ]
    );
    assert_eq!(
        settled_cache(&m, 3),
        set(&[
            "TV/Show/Season 1/Show - 1x1.mkv",
            "Movies/Film (2020)/Film.mkv",
            "Kids/k1.mkv"
        ])
    );
    drop(m);

    // --user repeated, on a 10.8 server: the same union.
    let m = mount_of(HOUSE);
    let mp = mnt(&m);
    let server = jellyfin_of(users(), Resume::OldOnly, None);
    let map = format!("/media={mp}");
    let ran = feed(&jellyfin_args(
        &server.url(),
        API_KEY,
        ANN,
        &["--user", BO, "--map", &map, "--next", "0", &mp],
    ));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(lines(&ran.stdout), want_out(&mp), "{}", ran.stderr);
    assert!(server.seen().iter().all(|a| a.path != "/Users"));
}

#[test]
fn a_failed_list_does_not_drop_the_others() {
    crate::require_mount!();
    let m = mount_of(HOUSE);
    let mp = mnt(&m);
    let server = jellyfin_of(
        vec![jf_user(
            USER,
            "Ann",
            &[
                "/media/Kids/k1.mkv",
                "/media/TV/Show/Season 1/Show - 1x2.mkv",
            ],
            &["/media/Movies/Film (2020)/Film.mkv"],
        )],
        Resume::Both,
        Some("/UserItems/Resume"),
    );
    let map = format!("/media={mp}");
    let ran = feed(&jellyfin_args(
        &server.url(),
        API_KEY,
        USER,
        &["--map", &map, &mp],
    ));
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(
        lines(&ran.stdout),
        [
            format!("queued {mp}/Kids/k1.mkv (next up)"),
            format!("queued {mp}/Kids/k2.mkv (next after k1.mkv)"),
            format!("queued {mp}/TV/Show/Season 1/Show - 1x2.mkv (next up)"),
            format!("queued {mp}/TV/Show/Season 1/Show - 1x3.mkv (next after Show - 1x2.mkv)"),
            format!("feed jellyfin {mp}: files 4, queued 4, already cached 0, skipped 0"),
        ]
    );
    assert_eq!(
        lines(&ran.stderr),
        [format!(
            "cachefs: feed jellyfin: Jellyfin at {} answered HTTP 500 to /UserItems/Resume \
             (Resume)",
            server.url()
        )]
    );
    assert_eq!(
        settled_cache(&m, 4),
        set(&[
            "Kids/k1.mkv",
            "Kids/k2.mkv",
            "TV/Show/Season 1/Show - 1x2.mkv",
            "TV/Show/Season 1/Show - 1x3.mkv"
        ])
    );
}

/// What a Plex on Windows lists: a drive and a share, in varying case and slashes.
fn windows_deck() -> Vec<String> {
    vec![
        "D:\\Media\\TV\\Show\\Season 1\\Show - 1x2.mkv".into(),
        "\\\\nas\\films\\Film (2020)\\Film.mkv".into(),
        "d:/media/Kids/k1.mkv".into(),
    ]
}

#[test]
fn windows_paths_are_mapped() {
    crate::require_mount!();
    let m = mount_of(HOUSE);
    let mp = mnt(&m);
    let server = plex_of(vec![(TOKEN, windows_deck())], 100, false);
    let (drive, share) = (
        format!("D:\\Media={mp}"),
        format!("\\\\NAS\\Films={mp}/Movies"),
    );
    let ran = feed(&plex_args(
        &server.url(),
        &["--map", &drive, "--map", &share, &mp],
    ));
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    assert_eq!(
        lines(&ran.stdout),
        [
            format!("queued {mp}/TV/Show/Season 1/Show - 1x2.mkv (on deck)"),
            format!("queued {mp}/TV/Show/Season 1/Show - 1x3.mkv (next after Show - 1x2.mkv)"),
            format!("queued {mp}/Movies/Film (2020)/Film.mkv (on deck)"),
            format!("queued {mp}/Kids/k1.mkv (on deck)"),
            format!("queued {mp}/Kids/k2.mkv (next after k1.mkv)"),
            format!("feed plex {mp}: files 5, queued 5, already cached 0, skipped 0"),
        ]
    );
    assert_eq!(ran.stderr, "");
    assert_eq!(settled_cache(&m, 5).len(), 5);
}

#[test]
fn a_round_that_maps_nothing_fails_and_names_the_missing_map() {
    crate::require_mount!();
    let m = mount_of(HOUSE);
    let mp = mnt(&m);

    // Windows paths, no --map.
    let server = plex_of(vec![(TOKEN, windows_deck())], 100, false);
    let ran = feed(&plex_args(&server.url(), &[&mp]));
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(
        lines(&ran.stdout),
        [format!(
            "feed plex {mp}: files 0, queued 0, already cached 0, skipped 3"
        )]
    );
    assert_eq!(
        lines(&ran.stderr),
        [format!(
            "cachefs: feed plex: no listed path (of 3) is covered by a --map, e.g. \
             D:\\Media\\TV\\Show\\Season 1\\Show - 1x2.mkv: add --map 'D:\\Media={mp}'"
        )]
    );

    // Unix paths, a --map whose TO is wrong.
    let server = plex_of(
        vec![(
            TOKEN,
            vec!["/data/Kids/k1.mkv".into(), "/data/Kids/k2.mkv".into()],
        )],
        100,
        true,
    );
    let wrong = format!("/data={mp}/media");
    let ran = feed(&plex_args(&server.url(), &["--map", &wrong, &mp]));
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let err = lines(&ran.stderr);
    assert_eq!(err.len(), 1, "{}", ran.stderr);
    assert!(
        err[0].starts_with(&format!(
            "cachefs: feed plex: no listed path (of 2) is a file under {mp}, e.g. \
             /data/Kids/k1.mkv: {mp}/media/Kids/k1.mkv: No such file"
        )) && err[0].ends_with(&format!("add --map '/data={mp}'")),
        "{}",
        err[0]
    );

    // An empty list is no failure.
    let server = plex_of(vec![(TOKEN, vec![])], 100, true);
    let ran = feed(&plex_args(&server.url(), &[&mp]));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(cached(&m).is_empty());
}

#[test]
fn sidecars_come_with_each_listed_file_and_its_next_files() {
    crate::require_mount!();
    const FILES: &[&str] = &[
        "TV/S/S01E01.mkv",
        "TV/S/S01E01.en.srt",
        "TV/S/S01E01.nfo",
        "TV/S/S01E02.mkv",
        "TV/S/S01E02.en.forced.srt",
        "TV/S/S01E02.nfo",
        "TV/S/S01E03.mkv",
        "TV/S/S01E03.ass",
        "TV/S/S01E04.mkv",
        "TV/S/S01E04.srt",
        "TV/S/tvshow.nfo",
        "Movies/F (2020)/F.mkv",
        "Movies/F (2020)/F.pt-BR.srt",
        "Movies/F (2020)/F.nfo",
        "Movies/F (2020)/movie.nfo",
    ];
    let m = mount_of(FILES);
    let mp = mnt(&m);
    let server = jellyfin_of(
        vec![jf_user(
            USER,
            "Ann",
            &["/media/TV/S/S01E01.mkv"],
            &["/media/Movies/F (2020)/F.mkv"],
        )],
        Resume::Both,
        None,
    );
    let map = format!("/media={mp}");
    let args = jellyfin_args(
        &server.url(),
        API_KEY,
        USER,
        &["--map", &map, "--next", "2", &mp],
    );
    let ran = feed(&args);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    // Only media files are listed, and sidecars count for no "next" file.
    assert_eq!(
        lines(&ran.stdout),
        [
            format!("queued {mp}/TV/S/S01E01.mkv (next up)"),
            format!("queued {mp}/TV/S/S01E02.mkv (next after S01E01.mkv)"),
            format!("queued {mp}/TV/S/S01E03.mkv (next after S01E01.mkv)"),
            format!("queued {mp}/Movies/F (2020)/F.mkv (resume)"),
            format!("feed jellyfin {mp}: files 4, queued 4, already cached 0, skipped 0"),
        ]
    );
    // Everything but the fourth episode (not among the next 2) and its subtitles, and the
    // `.nfo` files that belong to no media file by name.
    let left = [
        "TV/S/S01E04.mkv",
        "TV/S/S01E04.srt",
        "TV/S/tvshow.nfo",
        "Movies/F (2020)/movie.nfo",
    ];
    let want: BTreeSet<String> = FILES
        .iter()
        .filter(|f| !left.contains(f))
        .map(|f| f.to_string())
        .collect();
    assert_eq!(settled_cache(&m, want.len() as u64), want);

    // Subtitles added later for a file already cached come with the next round.
    fs::write(
        m.source.join("TV/S/S01E02.de.srt"),
        "1\n00:00:01,000 --> 00:00:02,000\nHallo\n",
    )
    .unwrap();
    let ran = feed(&args);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.contains(&format!(
            "already cached {mp}/TV/S/S01E02.mkv (next after S01E01.mkv)"
        )),
        "{}",
        ran.stdout
    );
    let mut want = want;
    want.insert("TV/S/S01E02.de.srt".into());
    assert_eq!(settled_cache(&m, want.len() as u64), want);
}
