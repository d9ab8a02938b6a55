//! `cachefs feed plex|jellyfin` against a fake media server of the tests' own (a
//! `TcpListener` thread answering recorded answers of the documented shapes, checking each
//! request's path, query and token): exactly the listed files, mapped by `--map`, and the
//! next ones of their directories are promoted, nothing else; paths outside every map are
//! reported and skipped; a wrong token, an HTTP error and an unreachable server exit 1 with
//! one line; `--loop` retries after an error.

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
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
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
            (p, "fields=Path") if p == format!("/jf{resume_path}") => (
                200,
                items(&[
                    "/media/movies/Film (2020)/Film.mkv",
                    "/media/tv/Kids/k1.mkv",
                ]),
            ),
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
    // An unknown user: the server's 404, and what to check.
    let ran = feed(&jellyfin_args(&url, API_KEY, "0000", &[&mp]));
    assert_eq!(ran.code, Some(1));
    assert_eq!(lines(&ran.stderr).len(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("answered HTTP 404 to /Shows/NextUp: check --user"),
        "{}",
        ran.stderr
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
            "cachefs: feed plex: Plex at {} answered HTTP 500 to /library/onDeck",
            server.url()
        )]
    );
    // An answer of another shape (XML, as Plex gives without Accept: application/json).
    let xml = FakeServer::start(|_| (200, "<MediaContainer size=\"0\"/>".into()));
    let ran = feed(&plex_args(&xml.url(), &[&mp]));
    assert_eq!(ran.code, Some(1));
    assert_eq!(lines(&ran.stderr).len(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("not an On Deck answer"),
        "{}",
        ran.stderr
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
            "cachefs: feed plex: Plex at {} answered HTTP 503 to /library/onDeck",
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
