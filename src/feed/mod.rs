//! `cachefs feed plex|jellyfin`: ask a media server what its users are about to watch
//! (Plex's On Deck; Jellyfin's Next Up and Resume), map the server's paths onto the mount,
//! and promote those files and the next `--next` files of each one's directory through the
//! mount's control socket, once or every `--loop` seconds.
//!
//! - [`plex`], [`jellyfin`]: each server's requests, headers, and answers' shapes;
//! - [`http`]: one GET (ureq), its failures sorted by what a person has to fix;
//! - [`plan`]: the pure core: `--map` prefixes, and the files after each file;
//! - this file: one round (ask, map, look, promote, print) and the loop.
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

use http::HttpError;
use plan::Wanted;

/// One request of a round, and how to read its answer.
pub struct Ask {
    /// Appended to the server's base address.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    /// The list's name in messages: `On Deck`.
    pub what: &'static str,
    /// Why its files are promoted, in the output: `on deck`.
    pub why: &'static str,
    /// The answer's body to the server's paths, in order.
    pub parse: fn(&[u8]) -> Result<Vec<String>, String>,
}

/// A server as a round talks to it.
struct Server {
    /// `plex`: the subcommand, in the prefix of every line.
    name: &'static str,
    /// `Plex`: in messages.
    title: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    asks: Vec<Ask>,
    /// What a 401 or 403 says is wrong.
    credential: &'static str,
    /// What a 404 says to check.
    not_found: &'static str,
}

impl Server {
    fn of(s: &FeedServer) -> Server {
        match s {
            FeedServer::Plex { url, token } => Server {
                name: "plex",
                title: "Plex",
                url: url.clone(),
                headers: plex::headers(token),
                asks: plex::asks(),
                credential: "the token is wrong: give the server's X-Plex-Token with --token",
                not_found: "check --url",
            },
            FeedServer::Jellyfin { url, api_key, user } => Server {
                name: "jellyfin",
                title: "Jellyfin",
                url: url.clone(),
                headers: jellyfin::headers(api_key),
                asks: jellyfin::asks(user),
                credential: "the API key is wrong: give a key from Dashboard > API Keys with \
                             --api-key",
                not_found: "check --user (the user's ID) and --url",
            },
        }
    }

    /// The one line for a failed request.
    fn explain(&self, ask: &Ask, e: &HttpError) -> String {
        let at = format!("{} at {}", self.title, self.url);
        match e {
            HttpError::Auth(code) => format!(
                "{at} refused the request for {} (HTTP {code}): {}",
                ask.what, self.credential
            ),
            HttpError::Status(code, Some(to)) if (300..400).contains(code) => format!(
                "{at} redirects {} (HTTP {code}) to {to}: give the address it answers on, in \
                 plain http, as --url",
                ask.path
            ),
            HttpError::Status(code @ (400 | 404), _) => format!(
                "{at} answered HTTP {code} to {}: {}",
                ask.path, self.not_found
            ),
            HttpError::Status(code, _) => format!("{at} answered HTTP {code} to {}", ask.path),
            HttpError::Unreachable(why) => format!("cannot reach {at}: {why}"),
            HttpError::Failed(why) => format!("{at}, asked for {}: {why}", ask.what),
        }
    }
}

/// Runs `cachefs feed` and returns its exit code: once, or forever with `--loop`.
pub fn run(args: FeedArgs) -> u8 {
    let mount = lexical_absolute(&args.mountpoint);
    if let Err(msg) = plan::check_maps(&args.maps, &mount) {
        eprintln!("cachefs: feed: {msg}");
        return USAGE;
    }
    let server = Server::of(&args.server);
    let agent = http::agent();
    let Some(secs) = args.every else {
        return round(&args, &mount, &server, &agent);
    };
    loop {
        // A failed round has said why; the next one tries again.
        round(&args, &mount, &server, &agent);
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
fn round(args: &FeedArgs, mount: &Path, server: &Server, agent: &Agent) -> u8 {
    let fail = |msg: &str| {
        eprintln!("cachefs: feed {}: {msg}", server.name);
        FAILURE
    };
    let (mp, base) = match control::locate(&args.mountpoint) {
        Ok(l) => l,
        Err(msg) => return fail(&msg),
    };
    let mut listed: Vec<(String, &'static str)> = Vec::new();
    for ask in &server.asks {
        let url = format!("{}{}", server.url, ask.path);
        let body = match http::get(agent, &url, &ask.query, &server.headers) {
            Ok(b) => b,
            Err(e) => return fail(&server.explain(ask, &e)),
        };
        match (ask.parse)(&body) {
            Ok(paths) => listed.extend(paths.into_iter().map(|p| (p, ask.why))),
            Err(e) => {
                return fail(&format!(
                    "{} at {} answered {} with {e}",
                    server.title, server.url, ask.path
                ));
            }
        }
    }

    let mut tally = Tally::default();
    let mut skip = |what: &str, why: &str| {
        tally.skipped += 1;
        eprintln!("cachefs: feed {}: skipped {what}: {why}", server.name);
    };
    let mut files = Vec::new();
    for (path, why) in listed {
        match plan::map_path(&args.maps, mount, &path) {
            Ok(rel) => match std::fs::symlink_metadata(mount.join(&rel)) {
                Ok(m) if m.is_file() => files.push(Wanted {
                    rel,
                    why: why.to_string(),
                }),
                Ok(_) => skip(
                    &path,
                    &format!("{} is not a regular file", mount.join(&rel).display()),
                ),
                Err(e) => skip(
                    &path,
                    &format!("{}: {e} (is --map right?)", mount.join(&rel).display()),
                ),
            },
            Err(why) => skip(&path, &why),
        }
    }
    let (plan, errors) = plan::with_next(&files, args.next, |dir| regular_files(&mount.join(dir)));
    for e in errors {
        eprintln!("cachefs: feed {}: {e}", server.name);
    }

    for w in &plan {
        let shown = mount.join(&w.rel);
        let req = Request::new(Cmd::Promote, &[base.join(&w.rel)], false);
        match control::request::<Promoted>(&mp, &req, &mut |_| {}) {
            Ok(p) if !p.failed.is_empty() => {
                tally.failed += 1;
                for f in &p.failed {
                    eprintln!(
                        "cachefs: feed {}: cannot promote {}: {}",
                        server.name,
                        shown.display(),
                        f.error
                    );
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
                eprintln!(
                    "cachefs: feed {}: cannot promote {}: {msg}",
                    server.name,
                    shown.display()
                );
            }
            // The daemon is gone: the rest would fail alike.
            Err(e) => return fail(&e.to_string()),
        }
    }

    let mut total = format!(
        "feed {} {}: files {}, queued {}, already cached {}, skipped {}",
        server.name,
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
    if tally.failed > 0 { FAILURE } else { SUCCESS }
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
