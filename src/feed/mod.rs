//! `cachefs feed plex|jellyfin`: ask a media server what its users are about to watch
//! (Plex's On Deck, for each token's user; Jellyfin's Next Up and Resume, for each user),
//! map the server's paths onto the mount, and promote those files and the next `--next`
//! files of each one's directory through the mount's control socket (the daemon brings
//! each one's subtitles and `.nfo` with it), once or every `--loop` seconds.
//!
//! - [`plex`], [`jellyfin`]: each server's requests, headers, paging and answers' shapes;
//! - [`xml`]: the little XML Plex's answers need;
//! - [`http`]: one GET (ureq), its failures sorted by what a person has to fix;
//! - [`plan`]: the pure core: `--map` prefixes (Unix and Windows), and the files after
//!   each file;
//! - this file: one round (ask, map, look, promote, print) and the loop.
//!
//! A round promotes what every list that answered gave, then fails (exit 1) if any request
//! failed, naming each, or if the lists named files but none of them was found under the
//! mount (a `--map` is missing: a timer would otherwise never notice).
//!
//! The server's answer only names files; what is promoted is decided here, and only files
//! under MOUNTPOINT are asked of the daemon, which checks every path again itself.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::time::Duration;

use ureq::Agent;

use crate::cli::{FeedArgs, FeedServer};
use crate::control::client::lexical_absolute;
use crate::control::{self, Cmd, Promoted, Request, RequestError};
use crate::exit::{FAILURE, SUCCESS, USAGE};

pub mod http;
pub mod jellyfin;
pub mod plan;
pub mod plex;
pub mod xml;

use http::HttpError;
use plan::{Map, Unmapped, Wanted};

/// What a round heard: every listed path with why it is promoted (`on deck`), and one line
/// for each request that failed.
#[derive(Debug, Default)]
pub struct Heard {
    pub listed: Vec<(String, &'static str)>,
    pub failed: Vec<String>,
}

/// `GET path?query` with headers, on the server's base address.
type Fetch<'a> =
    dyn Fn(&str, &[(&str, String)], &[(&str, String)]) -> Result<Vec<u8>, HttpError> + 'a;

/// A server as a round's requests reach it, and how their failures are told.
pub struct Client<'a> {
    fetch: Box<Fetch<'a>>,
    /// `Plex`: in messages.
    title: &'static str,
    url: String,
    /// What a 401 or 403 says is wrong.
    credential: &'static str,
    /// What a 404 says to check.
    not_found: &'static str,
}

impl<'a> Client<'a> {
    fn of(s: &FeedServer, agent: &'a Agent) -> Client<'a> {
        let (title, url, credential, not_found) = match s {
            FeedServer::Plex { url, .. } => (
                "Plex",
                url,
                "the token is wrong: give the server's X-Plex-Token with --token",
                "check --url",
            ),
            FeedServer::Jellyfin { url, .. } => (
                "Jellyfin",
                url,
                "the API key is wrong: give a key from Dashboard > API Keys with --api-key",
                "check --user (the user's ID) and --url",
            ),
        };
        let base = url.clone();
        Client {
            fetch: Box::new(move |path, query, headers| {
                http::get(agent, &format!("{base}{path}"), query, headers)
            }),
            title,
            url: url.clone(),
            credential,
            not_found,
        }
    }

    /// A client whose requests `fetch` answers, for the servers' tests.
    #[cfg(test)]
    pub fn fake(
        fetch: impl Fn(&str, &[(&str, String)], &[(&str, String)]) -> Result<Vec<u8>, HttpError> + 'a,
    ) -> Client<'a> {
        Client {
            fetch: Box::new(fetch),
            title: "Plex",
            url: "http://fake".into(),
            credential: "the token is wrong: give the server's X-Plex-Token with --token",
            not_found: "check --url",
        }
    }

    /// `GET path?query` with `headers`: the body of a 2xx answer.
    pub fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
    ) -> Result<Vec<u8>, HttpError> {
        (self.fetch)(path, query, headers)
    }

    /// The one line for a failed request for `what` (`Next Up of Ann`) at `path`.
    pub fn explain(&self, what: &str, path: &str, e: &HttpError) -> String {
        let at = format!("{} at {}", self.title, self.url);
        match e {
            HttpError::Auth(code) => format!(
                "{at} refused the request for {what} (HTTP {code}): {}",
                self.credential
            ),
            HttpError::Status(code, Some(to)) if (300..400).contains(code) => format!(
                "{at} redirects {path} (HTTP {code}) to {to}: give the address it answers on, \
                 in plain http, as --url"
            ),
            HttpError::Status(code @ (400 | 404), _) => format!(
                "{at} answered HTTP {code} to {path} ({what}): {}",
                self.not_found
            ),
            HttpError::Status(code, _) => {
                format!("{at} answered HTTP {code} to {path} ({what})")
            }
            HttpError::Unreachable(why) => format!("cannot reach {at}: {why}"),
            HttpError::Failed(why) => format!("{at}, asked for {what}: {why}"),
        }
    }

    /// The one line for an answer to `path` that cannot be read: `why`.
    pub fn malformed(&self, path: &str, why: &str) -> String {
        format!("{} at {} answered {path} with {why}", self.title, self.url)
    }
}

/// Runs `cachefs feed` and returns its exit code: once, or forever with `--loop`.
pub fn run(args: FeedArgs) -> u8 {
    let mount = lexical_absolute(&args.mountpoint);
    let maps = match plan::check_maps(&args.maps, &mount) {
        Ok(m) => m,
        Err(msg) => {
            eprintln!("cachefs: feed: {msg}");
            return USAGE;
        }
    };
    let agent = http::agent();
    let client = Client::of(&args.server, &agent);
    let Some(secs) = args.every else {
        return round(&args, &maps, &mount, &client);
    };
    loop {
        // A failed round has said why; the next one tries again.
        round(&args, &maps, &mount, &client);
        std::thread::sleep(Duration::from_secs(secs));
    }
}

/// What a round did, for its last line.
#[derive(Default)]
struct Tally {
    queued: u64,
    cached: u64,
    skipped: u64,
    failed: u64,
}

/// One round: ask every list, map its paths, add the next files, promote each one.
fn round(args: &FeedArgs, maps: &[Map], mount: &Path, client: &Client) -> u8 {
    let name = match args.server {
        FeedServer::Plex { .. } => "plex",
        FeedServer::Jellyfin { .. } => "jellyfin",
    };
    let say = |msg: &str| eprintln!("cachefs: feed {name}: {msg}");
    let fail = |msg: &str| {
        say(msg);
        FAILURE
    };
    let (mp, base) = match control::locate(&args.mountpoint) {
        Ok(l) => l,
        Err(msg) => return fail(&msg),
    };
    let heard = match &args.server {
        FeedServer::Plex { tokens, .. } => plex::lists(client, tokens),
        FeedServer::Jellyfin { api_key, users, .. } => jellyfin::lists(client, api_key, users),
    };
    // Nothing answered: the failures are all there is to say.
    if heard.listed.is_empty() && !heard.failed.is_empty() {
        for f in &heard.failed {
            say(f);
        }
        return FAILURE;
    }

    let mut tally = Tally::default();
    let listed = heard.listed.len();
    // Each skipped path and why, said once it is known whether anything was found: when
    // nothing was, one line says what is missing instead.
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut uncovered = 0;
    let mut files = Vec::new();
    for (path, why) in heard.listed {
        let rel = match plan::map_path(maps, mount, &path) {
            Ok(rel) => rel,
            Err(e) => {
                uncovered += usize::from(matches!(e, Unmapped::Uncovered(_)));
                skipped.push((path, e.to_string()));
                continue;
            }
        };
        let here = mount.join(&rel);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.is_file() => files.push(Wanted {
                rel,
                why: why.to_string(),
            }),
            Ok(_) => skipped.push((path, format!("{} is not a regular file", here.display()))),
            Err(e) => skipped.push((path, format!("{}: {e} (is --map right?)", here.display()))),
        }
    }
    tally.skipped = skipped.len() as u64;
    let found_none =
        (files.is_empty() && listed > 0).then(|| found_none(listed, uncovered, &skipped, mount));
    if found_none.is_none() {
        for (path, why) in &skipped {
            say(&format!("skipped {path}: {why}"));
        }
    }
    let (plan, errors) = plan::with_next(&files, args.next, |dir| regular_files(&mount.join(dir)));
    for e in errors {
        say(&e);
    }

    for w in &plan {
        let shown = mount.join(&w.rel);
        let req = Request::new(Cmd::Promote, &[base.join(&w.rel)], false);
        match control::request::<Promoted>(&mp, &req, &mut |_| {}) {
            Ok(p) if !p.failed.is_empty() => {
                tally.failed += 1;
                for f in &p.failed {
                    say(&format!("cannot promote {}: {}", shown.display(), f.error));
                }
            }
            Ok(p) if p.already_cached > 0 => {
                tally.cached += 1;
                println!("already cached {} ({})", shown.display(), w.why);
            }
            Ok(_) => {
                tally.queued += 1;
                println!("queued {} ({})", shown.display(), w.why);
            }
            Err(RequestError::Daemon(msg)) => {
                tally.failed += 1;
                say(&format!("cannot promote {}: {msg}", shown.display()));
            }
            // The daemon is gone: the rest would fail alike.
            Err(e) => return fail(&e.to_string()),
        }
    }

    let mut total = format!(
        "feed {name} {}: files {}, queued {}, already cached {}, skipped {}",
        mount.display(),
        plan.len(),
        tally.queued,
        tally.cached,
        tally.skipped
    );
    if tally.failed > 0 {
        total.push_str(&format!(", failed {}", tally.failed));
    }
    println!("{total}");
    // What went wrong comes last, where a timer's log ends.
    for f in heard.failed.iter().chain(&found_none) {
        say(f);
    }
    if tally.failed > 0 || !heard.failed.is_empty() || found_none.is_some() {
        FAILURE
    } else {
        SUCCESS
    }
}

/// The one line for a round whose `listed` paths gave no file under `mount`: what
/// `--map` is missing (`uncovered` paths had none), with an example path from `skipped`.
fn found_none(
    listed: usize,
    uncovered: usize,
    skipped: &[(String, String)],
    mount: &Path,
) -> String {
    let Some((example, why)) = skipped.first() else {
        return format!(
            "no listed path (of {listed}) was found under {}",
            mount.display()
        );
    };
    let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    let suggested = plan::suggest_map(example, mount, is_file).map(|map| format!("add {map}"));
    if uncovered == listed {
        let fix = suggested.unwrap_or_else(|| {
            format!(
                "add --map FROM=TO, FROM the server's folder of that path and TO where that \
                 folder is under {}",
                mount.display()
            )
        });
        format!("no listed path (of {listed}) is covered by a --map, e.g. {example}: {fix}")
    } else {
        let fix = suggested.unwrap_or_else(|| {
            "check that each --map's TO is where its FROM is under MOUNTPOINT".to_string()
        });
        format!(
            "no listed path (of {listed}) is a file under {}, e.g. {example}: {why}; {fix}",
            mount.display()
        )
    }
}

/// The names of `dir`'s regular files, as readdir gives their types (no stat of each).
fn regular_files(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            names.push(entry.file_name());
        }
    }
    Ok(names)
}
