//! The command line: argv to a [`Command`], and the checks of a mount's paths.
//!
//! Two shapes of argv. If the first argument names a subcommand (`status`, `promote`, `pin`,
//! `unpin`, `evict`, `unmount`, `cleanup`, `feed`, the hidden `man`), clap parses it. Otherwise it is the mount form,
//! `cachefs SOURCE MOUNTPOINT [--OPTION[=VALUE] | --OPTION VALUE | -o LIST | -f]...`, walked
//! here by hand so that every `--long-option` and every `-o` item go through the one table in
//! [`crate::options`]: the two spellings cannot drift, and `--help` prints that table.
//!
//! [`parse`] is pure. [`check_paths`] does the I/O (existence, canonical paths, creating the
//! cache directory, and refusing paths that nest inside one another) and is called separately.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::Config;
use crate::options::{self, Arity};

/// What the command line asks for.
// `Mount` dwarfs the rest, but a `Command` is made once per process: not worth a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Mount(Config),
    Status {
        mountpoint: PathBuf,
        json: bool,
    },
    Promote {
        wait: bool,
        paths: Vec<PathBuf>,
    },
    Pin {
        paths: Vec<PathBuf>,
    },
    Unpin {
        paths: Vec<PathBuf>,
    },
    Evict {
        paths: Vec<PathBuf>,
    },
    Unmount {
        mountpoint: PathBuf,
    },
    Restart {
        mountpoint: PathBuf,
        binary: Option<PathBuf>,
        options: Option<String>,
    },
    Cleanup {
        mountpoints: Vec<PathBuf>,
        /// `--watch`: check every `SECS` until stopped (a host-side service for mounts a
        /// container leaves when it is killed); `None`: once.
        watch: Option<u64>,
    },
    Feed(FeedArgs),
    /// Print the manual page, cachefs(8), in roff (hidden: for the install script).
    Man,
}

/// `cachefs feed plex|jellyfin ...`, as `crate::feed` runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedArgs {
    pub server: FeedServer,
    /// `--map FROM=TO`, in the order given.
    pub maps: Vec<PathMap>,
    /// `--next N`: files after each one, in its directory, promoted with it.
    pub next: usize,
    /// `--loop SECS`: repeat every this many seconds; `None`: once.
    pub every: Option<u64>,
    pub mountpoint: PathBuf,
}

/// The media server a feed asks, and how it signs in. `url` is the base address
/// (`http://HOST:PORT[/BASE]`), without a trailing slash or a query.
#[derive(Clone, PartialEq, Eq)]
pub enum FeedServer {
    Plex {
        url: String,
        /// One or more X-Plex-Tokens, each a user's (the owner's, a managed or a shared
        /// user's): their On Deck lists are unioned. Never empty, no token twice.
        tokens: Vec<String>,
    },
    Jellyfin {
        url: String,
        api_key: String,
        users: JellyfinUsers,
    },
}

/// Whose Jellyfin lists a feed asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JellyfinUsers {
    /// `--user all`: every user the server lists (`GET /Users`) that is not disabled.
    All,
    /// These user IDs, in the order given, each once. Never empty.
    These(Vec<String>),
}

// By hand, so that a token never reaches a log or a panic message.
impl std::fmt::Debug for FeedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedServer::Plex { url, tokens } => write!(
                f,
                "Plex {{ url: {url:?}, tokens: <{} hidden> }}",
                tokens.len()
            ),
            FeedServer::Jellyfin { url, users, .. } => write!(
                f,
                "Jellyfin {{ url: {url:?}, api_key: <hidden>, users: {users:?} }}"
            ),
        }
    }
}

/// `--map FROM=TO`: a path the media server gives under `FROM` is `TO` plus the rest here.
/// `FROM` is kept as written (a Unix path, or a Windows one: `D:\Media`, `\\nas\media`);
/// `crate::feed::plan` reads and checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    pub from: String,
    pub to: PathBuf,
}

/// Why [`parse`] produced no command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Help or version text: print to stdout, exit 0.
    Info(String),
    /// One line: print to stderr, exit 2.
    Usage(String),
}

/// The subcommand names; any other first argument starts the mount form.
pub const SUBCOMMANDS: &[&str] = &[
    "status", "promote", "pin", "unpin", "evict", "unmount", "restart", "cleanup", "feed", "man",
];

const USAGE: &str = "usage: cachefs SOURCE MOUNTPOINT --cache DIR [OPTIONS] (see 'cachefs --help')";

/// Parses argv (`argv[0]` is the program name) into a command. Pure: paths are not looked at;
/// call [`check_paths`] on a mount's `Config` next.
pub fn parse(argv: Vec<OsString>) -> Result<Command, CliError> {
    match argv.get(1).and_then(|a| a.to_str()) {
        Some(first) if SUBCOMMANDS.contains(&first) => parse_subcommand(argv),
        _ => parse_mount(argv).map(Command::Mount),
    }
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn parse_mount(argv: Vec<OsString>) -> Result<Config, CliError> {
    let args: Vec<OsString> = argv.into_iter().skip(1).collect();

    // Help and version win over any error elsewhere on the line.
    for arg in args.iter().take_while(|a| *a != "--") {
        match arg.to_str() {
            Some("-h" | "--help") => return Err(CliError::Info(help_text())),
            Some("-V" | "--version") => return Err(CliError::Info(version_text())),
            _ => {}
        }
    }

    let mut cfg = Config::new(PathBuf::new(), PathBuf::new(), PathBuf::new());
    let mut positionals: Vec<OsString> = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let bytes = arg.as_encoded_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            positionals.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            return Err(usage(format!(
                "option {} is not valid UTF-8: spell options in UTF-8",
                arg.to_string_lossy()
            )));
        };
        if s == "--" {
            positionals.extend(args.by_ref());
            break;
        }
        if let Some(long) = s.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if name == "foreground" {
                if let Some(v) = inline {
                    return Err(usage(format!(
                        "option '--foreground' takes no value: write '--foreground', not \
                         '--foreground={v}'"
                    )));
                }
                cfg.foreground = true;
                continue;
            }
            let value: Option<String> = match (options::arity(name), inline) {
                (Some(Arity::Value), None) => match args.next() {
                    Some(next) => Some(next.into_string().map_err(|v| {
                        usage(format!(
                            "value '{}' of '--{name}' is not valid UTF-8: use a UTF-8 path or \
                             name",
                            v.to_string_lossy()
                        ))
                    })?),
                    None => {
                        let metavar = options::OPTIONS
                            .iter()
                            .find(|o| o.name == options::normalise(name))
                            .and_then(|o| o.kind.metavar())
                            .unwrap_or("VALUE");
                        return Err(usage(format!(
                            "option '--{name}' needs a value: write --{name} {metavar} or \
                             --{name}={metavar}"
                        )));
                    }
                },
                (_, inline) => inline.map(str::to_string),
            };
            options::apply_option(&mut cfg, name, value.as_deref()).map_err(usage)?;
            continue;
        }
        if s == "-f" {
            cfg.foreground = true;
            continue;
        }
        if let Some(rest) = s.strip_prefix("-o") {
            let list = if rest.is_empty() {
                match args.next() {
                    Some(next) => next.into_string().map_err(|v| {
                        usage(format!(
                            "option list '{}' is not valid UTF-8: use UTF-8 paths and names",
                            v.to_string_lossy()
                        ))
                    })?,
                    None => {
                        return Err(usage(
                            "option '-o' needs a list: write -o cache=DIR[,OPTION[=VALUE],...]",
                        ));
                    }
                }
            } else {
                rest.to_string()
            };
            options::apply_option_list(&mut cfg, &list).map_err(usage)?;
            continue;
        }
        return Err(usage(format!(
            "unknown option '{s}': see 'cachefs --help' for the options"
        )));
    }

    let mut positionals = positionals.into_iter();
    let (source, mountpoint) = match (positionals.next(), positionals.next()) {
        (Some(s), Some(m)) => (s, m),
        (Some(_), None) => return Err(usage(format!("missing MOUNTPOINT: {USAGE}"))),
        _ => return Err(usage(format!("missing SOURCE and MOUNTPOINT: {USAGE}"))),
    };
    if let Some(extra) = positionals.next() {
        return Err(usage(format!(
            "unexpected argument '{}': cachefs mounts one SOURCE on one MOUNTPOINT; {USAGE}",
            extra.to_string_lossy()
        )));
    }
    if cfg.cache.as_os_str().is_empty() {
        return Err(usage(
            "missing cache directory: add --cache DIR or -o cache=DIR",
        ));
    }
    cfg.source = source.into();
    cfg.mountpoint = mountpoint.into();
    Ok(cfg)
}

fn version_text() -> String {
    format!("cachefs {}\n", env!("CARGO_PKG_VERSION"))
}

/// `cachefs --help`: the usage, every option of [`options::OPTIONS`], and the subcommands.
pub fn help_text() -> String {
    let mut h = String::new();
    para(
        &mut h,
        &format!(
            "cachefs {}: a FUSE filesystem that serves SOURCE at MOUNTPOINT, keeping copies \
             of the files in use in a cache directory on a faster disk.",
            env!("CARGO_PKG_VERSION")
        ),
    );
    h.push('\n');
    h.push_str(
        "Usage:\n  \
         cachefs SOURCE MOUNTPOINT --cache DIR [--OPTION[=VALUE] ...] [-f]\n  \
         cachefs SOURCE MOUNTPOINT -o cache=DIR[,OPTION[=VALUE],...] [-f]\n  \
         cachefs COMMAND ...\n\n",
    );
    para(
        &mut h,
        "Mount options. Each is --name VALUE, --name=VALUE or -o name=VALUE (flags: --name \
         or -o name); '-' and '_' in names are the same:",
    );
    for spec in options::OPTIONS {
        let dashed = spec.name.replace('_', "-");
        let left = match spec.kind.metavar() {
            None => format!("--{dashed}"),
            Some(metavar) => format!("--{dashed} {metavar}"),
        };
        item(&mut h, &left, spec.help);
    }
    item(
        &mut h,
        "-o LIST",
        "comma-separated options, as fstab and mount.fuse3 give them: cache=DIR,max_size=500G,\
         allow_other (\\, is a literal comma); may be repeated",
    );
    item(
        &mut h,
        "-f, --foreground",
        "stay in the foreground and log to stderr; SIGTERM or SIGINT unmounts",
    );
    item(&mut h, "-h, --help", "print this help");
    item(&mut h, "-V, --version", "print the version");
    let kernel: Vec<&str> = options::KERNEL_FLAGS.iter().map(|(n, _)| *n).collect();
    h.push('\n');
    para(
        &mut h,
        &format!("Kernel mount flags (flags only): {}.", kernel.join(", ")),
    );
    para(
        &mut h,
        &format!(
            "Accepted and ignored, as fstab lines carry them: {}, and any x-... option.",
            options::IGNORED.join(", ")
        ),
    );
    h.push('\n');
    para(
        &mut h,
        "Commands (each takes a MOUNTPOINT, or files and directories under one; see \
         'cachefs COMMAND --help'):",
    );
    for (left, help) in [
        ("status MOUNTPOINT [--json]", "the running mount's state"),
        (
            "promote [--wait] PATH...",
            "queue files (directories: every file below) for promotion; --wait shows \
             progress and returns when they are cached",
        ),
        ("pin PATH...", "promote and never evict"),
        ("unpin PATH...", "make pinned copies evictable again"),
        (
            "evict PATH...",
            "drop cached copies (the source is untouched)",
        ),
        (
            "unmount MOUNTPOINT",
            "graceful stop: finish or cancel promotions, unmount, daemon exits",
        ),
        (
            "restart MOUNTPOINT [--binary PATH] [-o OPTIONS]",
            "become a new binary (default: the same) on the live mount, which never leaves \
             mountinfo; open files go on; -o: options that can change live",
        ),
        (
            "cleanup [--watch [--every SECS]] [MOUNTPOINT...]",
            "find stale cachefs mounts (all, or those named) and remove them; --watch: keep \
             checking (every SECS, default 1) until stopped",
        ),
        (
            "feed plex --url URL --token TOKEN... [--map FROM=TO]... [--next N] [--loop SECS] \
             MOUNTPOINT",
            "promote the On Deck files of each token's user and the next N of each one's \
             directory",
        ),
        (
            "feed jellyfin --url URL --api-key KEY --user ID...|all [--map FROM=TO]... \
             [--next N] [--loop SECS] MOUNTPOINT",
            "the same from each user's Next Up and Resume",
        ),
    ] {
        item(&mut h, left, help);
    }
    h.push_str(
        "\nfstab:\n  /mnt/hdd  /mnt/media  fuse.cachefs  cache=/mnt/ssd/cachefs,allow_other,nofail  0 0\n\
         \nExit status: 0 success, 1 runtime failure, 2 bad usage or bad option.\n",
    );
    h
}

const HELP_WIDTH: usize = 100;

/// Appends `text` word-wrapped, and a newline.
fn para(h: &mut String, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > HELP_WIDTH {
            h.push_str(&line);
            h.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    h.push_str(&line);
    h.push('\n');
}

/// Appends one help item: `left` in a column, `help` word-wrapped beside or below it.
fn item(h: &mut String, left: &str, help: &str) {
    const COL: usize = 30;
    let mut line = format!("  {left}");
    if line.len() + 2 > COL {
        h.push_str(&line);
        h.push('\n');
        line = String::new();
    }
    let mut first = true;
    for word in help.split_whitespace() {
        if first || line.len() + 1 + word.len() > HELP_WIDTH {
            if !first {
                h.push_str(line.trim_end());
                h.push('\n');
                line.clear();
            }
            while line.len() < COL {
                line.push(' ');
            }
            line.push_str(word);
            first = false;
        } else {
            line.push(' ');
            line.push_str(word);
        }
    }
    h.push_str(line.trim_end());
    h.push('\n');
}

/// The subcommands, parsed by clap.
#[derive(Parser, Debug)]
#[command(
    name = "cachefs",
    bin_name = "cachefs",
    version,
    disable_help_subcommand = true,
    color = clap::ColorChoice::Never
)]
struct SubCli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Show the running mount's state.
    Status {
        /// The mount's directory.
        mountpoint: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Queue files (directories: every file below) for promotion to the cache.
    Promote {
        /// Show progress and return when the files are cached; exit 1 if any failed.
        #[arg(long)]
        wait: bool,
        /// Files or directories under a cachefs mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Promote files and never evict them.
    Pin {
        /// Files or directories under a cachefs mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Make pinned files evictable again.
    Unpin {
        /// Files or directories under a cachefs mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Drop cached copies (the source is untouched).
    Evict {
        /// Files or directories under a cachefs mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Stop a mount gracefully: finish or cancel promotions, unmount, the daemon exits.
    Unmount {
        /// The mount's directory.
        mountpoint: PathBuf,
    },
    /// Restart the daemon into a (new) binary without unmounting: the mount never leaves
    /// mountinfo and the kernel's requests wait a moment instead of failing.
    Restart {
        /// The mount's directory.
        mountpoint: PathBuf,
        /// The binary to become (default: the one the daemon was started as).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Mount options the new binary takes on top of the running ones (those that can
        /// change on a live mount: limits, lifetimes, the policy).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Option<String>,
    },
    /// Find stale cachefs mounts (all, or those named) and remove them.
    Cleanup {
        /// Keep checking until stopped (a host-side service for the mounts a killed
        /// container leaves behind).
        #[arg(long)]
        watch: bool,
        /// With --watch: seconds between checks.
        #[arg(long, value_name = "SECS", requires = "watch", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..))]
        every: u64,
        /// Only these mountpoints.
        mountpoints: Vec<PathBuf>,
    },
    /// Print the manual page, cachefs(8), in roff.
    #[command(hide = true)]
    Man,
    /// Promote what a media server's users are about to watch, and the files after it.
    // A bare `cachefs feed` is a usage error (exit 2), not a help page (exit 0).
    #[command(arg_required_else_help = false)]
    Feed {
        #[command(subcommand)]
        server: FeedSub,
    },
}

#[derive(Subcommand, Debug)]
enum FeedSub {
    /// Promote the On Deck files of each token's user and the next N of each one's
    /// directory.
    Plex {
        /// The server's address: http://HOST:PORT (Plex listens on 32400); an
        /// X-Plex-Token=... in its query is taken as a token.
        #[arg(long, value_name = "URL")]
        url: String,
        /// An X-Plex-Token; repeatable, or several separated by commas: each user's own
        /// token (the owner's, a managed or a shared user's), as On Deck is its user's
        /// only. The environment's CACHEFS_PLEX_TOKEN keeps them out of the process list.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "CACHEFS_PLEX_TOKEN",
            hide_env_values = true,
            value_delimiter = ','
        )]
        token: Vec<String>,
        #[command(flatten)]
        opts: FeedOpts,
    },
    /// Promote each user's Jellyfin Next Up and Resume files and the next N of each one's
    /// directory.
    Jellyfin {
        /// The server's address: http://HOST:PORT[/BASE] (Jellyfin listens on 8096).
        #[arg(long, value_name = "URL")]
        url: String,
        /// An API key (Dashboard > API Keys), or the environment's CACHEFS_JELLYFIN_API_KEY.
        #[arg(
            long = "api-key",
            value_name = "KEY",
            env = "CACHEFS_JELLYFIN_API_KEY",
            hide_env_values = true
        )]
        api_key: String,
        /// A user's ID (32 hex digits, as in the user's page's URL), whose Next Up and
        /// Resume lists are asked for; repeatable. `all`: every user the server lists that
        /// is not disabled.
        #[arg(long, value_name = "ID|all", value_parser = parse_user_id, required = true)]
        user: Vec<String>,
        #[command(flatten)]
        opts: FeedOpts,
    },
}

/// What both feeds take.
#[derive(clap::Args, Debug)]
struct FeedOpts {
    /// The server's path prefix FROM is TO here (TO under MOUNTPOINT), as its container
    /// sees the mount elsewhere; repeatable, the longest matching FROM wins. A server on
    /// Windows: FROM as D:\Media, D:/Media or \\host\share, matched in any case and
    /// either slash direction.
    #[arg(long = "map", value_name = "FROM=TO", value_parser = parse_map)]
    maps: Vec<PathMap>,
    /// Also promote the next N files of each file's directory (same extension, natural
    /// name order: the next episodes).
    #[arg(long, value_name = "N", default_value_t = 1)]
    next: usize,
    /// Ask again every SECS seconds, forever (errors are logged and retried next round);
    /// without it, ask once (for a timer or cron job).
    #[arg(long = "loop", value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    every: Option<u64>,
    /// The cachefs mount the files are promoted in.
    mountpoint: PathBuf,
}

/// `FROM=TO`, split at the first `=` that starts an absolute `TO` (so a FROM may hold `=`).
/// FROM, a Unix or a Windows path, is checked with the other maps (`crate::feed::plan`).
fn parse_map(s: &str) -> Result<PathMap, String> {
    match s.find("=/") {
        Some(at) if at > 0 => Ok(PathMap {
            from: s[..at].to_string(),
            to: PathBuf::from(&s[at + 1..]),
        }),
        _ => Err(format!(
            "'{s}' is not FROM=TO with TO an absolute path: write e.g. --map \
             /data/tv=/mnt/media/tv, or --map 'D:\\Media=/mnt/media' for a server on Windows"
        )),
    }
}

/// A Jellyfin user ID goes into a URL path: only what needs no escaping there. (`all`,
/// which is no ID, passes too.)
fn parse_user_id(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a user ID: give the user's ID (32 hex digits, in the URL of the \
             user's page in the dashboard), not the name"
        ))
    }
}

/// The server's address as `FeedServer` keeps it, and the query items it carried.
fn split_url(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!(
            "--url {url}: cachefs speaks plain http only (media servers answer http on the \
             LAN): give http://HOST:PORT"
        ));
    }
    if !lower.starts_with("http://") || url.len() == "http://".len() {
        return Err(format!(
            "--url {url}: give the server's address as http://HOST:PORT"
        ));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let items = query
        .split('&')
        .filter(|i| !i.is_empty())
        .map(|i| {
            let (k, v) = i.split_once('=').unwrap_or((i, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    Ok((base.trim_end_matches('/').to_string(), items))
}

fn feed_args(server: FeedServer, opts: FeedOpts) -> FeedArgs {
    FeedArgs {
        server,
        maps: opts.maps,
        next: opts.next,
        every: opts.every,
        mountpoint: opts.mountpoint,
    }
}

/// `v` in its order, each value once.
fn each_once(v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|x| seen.insert(x.clone())).collect()
}

fn parse_feed(sub: FeedSub) -> Result<Command, CliError> {
    let stray = |k: &str, url: &str| {
        usage(format!(
            "--url {url}: '{k}' in its query is not understood: give only http://HOST:PORT"
        ))
    };
    Ok(Command::Feed(match sub {
        FeedSub::Plex { url, token, opts } => {
            let (base, query) = split_url(&url).map_err(usage)?;
            let mut tokens: Vec<String> = Vec::new();
            for (k, v) in query {
                if k != "X-Plex-Token" {
                    return Err(stray(&k, &base));
                }
                tokens.push(v);
            }
            tokens.extend(token);
            tokens.retain(|t| !t.is_empty());
            let tokens = each_once(tokens);
            if tokens.is_empty() {
                return Err(usage(
                    "feed plex needs the server's token: --token TOKEN, CACHEFS_PLEX_TOKEN, or \
                     X-Plex-Token=TOKEN in --url",
                ));
            }
            feed_args(FeedServer::Plex { url: base, tokens }, opts)
        }
        FeedSub::Jellyfin {
            url,
            api_key,
            user,
            opts,
        } => {
            let (base, query) = split_url(&url).map_err(usage)?;
            if let Some((k, _)) = query.first() {
                return Err(stray(k, &base));
            }
            if api_key.is_empty() {
                return Err(usage(
                    "--api-key is empty: give an API key from Dashboard > API Keys",
                ));
            }
            let users = if user.iter().any(|u| u == "all") {
                JellyfinUsers::All
            } else {
                JellyfinUsers::These(each_once(user))
            };
            feed_args(
                FeedServer::Jellyfin {
                    url: base,
                    api_key,
                    users,
                },
                opts,
            )
        }
    }))
}

/// The subcommands' clap definitions (the man page renders them).
pub fn subcommands() -> clap::Command {
    SubCli::command()
}

fn parse_subcommand(argv: Vec<OsString>) -> Result<Command, CliError> {
    let matches = SubCli::command()
        .try_get_matches_from(argv)
        .map_err(clap_error)?;
    let cli = SubCli::from_arg_matches(&matches).map_err(clap_error)?;
    Ok(match cli.command {
        Sub::Status { mountpoint, json } => Command::Status { mountpoint, json },
        Sub::Promote { wait, paths } => Command::Promote { wait, paths },
        Sub::Pin { paths } => Command::Pin { paths },
        Sub::Unpin { paths } => Command::Unpin { paths },
        Sub::Evict { paths } => Command::Evict { paths },
        Sub::Unmount { mountpoint } => Command::Unmount { mountpoint },
        Sub::Restart {
            mountpoint,
            binary,
            options,
        } => Command::Restart {
            mountpoint,
            binary,
            options,
        },
        Sub::Cleanup {
            mountpoints,
            watch,
            every,
        } => Command::Cleanup {
            mountpoints,
            watch: watch.then_some(every),
        },
        Sub::Feed { server } => return parse_feed(server),
        Sub::Man => Command::Man,
    })
}

/// A clap error as ours: help and version as `Info`, anything else as one `Usage` line with
/// the subcommand's usage appended.
fn clap_error(err: clap::Error) -> CliError {
    use clap::error::ErrorKind;
    let mut text = err.render().to_string();
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            CliError::Info(text)
        }
        _ => {
            // clap's shape: "error: ..." and its continuation lines, a blank line, "tip: ..."
            // lines, "Usage: ...", "For more information, try '--help'.".
            let mut parts: Vec<String> = Vec::new();
            let mut lines = text.lines().map(str::trim);
            for line in lines.by_ref() {
                if line.is_empty() || line.starts_with("Usage:") {
                    break;
                }
                let line = line.strip_prefix("error: ").unwrap_or(line);
                match parts.last_mut() {
                    Some(last) => {
                        last.push(' ');
                        last.push_str(line);
                    }
                    None => parts.push(line.to_string()),
                }
            }
            for line in text.lines().map(str::trim) {
                if let Some(tip) = line.strip_prefix("tip: ") {
                    parts.push(tip.to_string());
                } else if let Some(u) = line.strip_prefix("Usage: ") {
                    parts.push(format!("usage: {u}"));
                }
            }
            CliError::Usage(parts.join("; "))
        }
    }
}

/// Checks and completes a mount's paths, with I/O: SOURCE and MOUNTPOINT must be existing
/// directories, the cache directory is created if missing, all three become absolute and
/// canonical, and none may be inside another (the cache may not contain SOURCE or
/// MOUNTPOINT either). A MOUNTPOINT whose stat fails with ENOTCONN (a stale FUSE mount) is
/// accepted: recovering it is the mount's job. `log`, if set, is made absolute. Errors are one
/// line naming the path and the fix.
pub fn check_paths(cfg: &mut Config) -> Result<(), String> {
    let source = existing_dir(
        "source",
        &cfg.source,
        "give an existing directory as SOURCE",
    )?;
    let mountpoint = resolve_mountpoint(&cfg.mountpoint)?;
    check_nesting(&source, &mountpoint, None)?;

    // Where the cache will be, checked before anything is created there.
    let planned = planned_path(&cfg.cache)
        .map_err(|e| format!("cannot resolve cache '{}': {e}", cfg.cache.display()))?;
    check_nesting(&source, &mountpoint, Some(&planned))?;
    match std::fs::metadata(&cfg.cache) {
        Ok(m) if !m.is_dir() => {
            return Err(format!(
                "cache '{}' is not a directory: give a directory (created if missing) with \
                 --cache DIR",
                cfg.cache.display()
            ));
        }
        Ok(_) => {}
        Err(_) => std::fs::create_dir_all(&cfg.cache).map_err(|e| {
            format!(
                "cannot create cache directory '{}': {e}: give a writable directory with \
                 --cache DIR",
                cfg.cache.display()
            )
        })?,
    }
    let cache = existing_dir(
        "cache",
        &cfg.cache,
        "give a directory (created if missing) with --cache DIR",
    )?;
    check_nesting(&source, &mountpoint, Some(&cache))?;

    if let Some(log) = &cfg.log {
        cfg.log = Some(
            std::path::absolute(log)
                .map_err(|e| format!("cannot resolve log file '{}': {e}", log.display()))?,
        );
    }
    cfg.source = source;
    cfg.mountpoint = mountpoint;
    cfg.cache = cache;
    Ok(())
}

/// `path`, which must be an existing directory, canonicalized.
fn existing_dir(what: &str, path: &Path, fix: &str) -> Result<PathBuf, String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{what} '{shown}' is not a directory: {fix}")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("{what} '{shown}' does not exist: {fix}"));
        }
        Err(e) if is_enotconn(&e) => {
            return Err(format!(
                "{what} '{shown}' is a stale FUSE mount (its daemon is gone): unmount it with \
                 'fusermount3 -u {shown}'"
            ));
        }
        Err(e) => return Err(format!("cannot access {what} '{shown}': {e}: {fix}")),
    }
    std::fs::canonicalize(path).map_err(|e| format!("cannot resolve {what} '{shown}': {e}"))
}

fn is_enotconn(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTCONN)
}

/// The mountpoint, absolute and canonical. When a stat of it fails with ENOTCONN (a stale FUSE
/// mount), it is resolved without looking inside: its parent is canonicalized and its name
/// appended (symlinks to it followed by `readlink`, which does not touch the mount).
fn resolve_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::canonicalize(path)
            .map_err(|e| format!("cannot resolve mountpoint '{shown}': {e}")),
        Ok(_) => Err(format!(
            "mountpoint '{shown}' is not a directory: mount on an existing directory"
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "mountpoint '{shown}' does not exist: create it first (mkdir -p '{shown}')"
        )),
        Err(e) if is_enotconn(&e) => resolve_stale(path),
        Err(e) => Err(format!(
            "cannot access mountpoint '{shown}': {e}: check its permissions, or run \
             'cachefs cleanup' if it is a stale mount"
        )),
    }
}

/// Absolute, canonical form of a stale mountpoint, the path's last component, which cannot be
/// stat'ed. Its parent must be reachable: a path further inside a stale mount is refused.
fn resolve_stale(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    let cannot = |e: io::Error| format!("cannot resolve mountpoint '{shown}': {e}");
    let mut path = std::path::absolute(path).map_err(cannot)?;
    for _ in 0..40 {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(format!(
                "mountpoint '{shown}' does not end in a directory name: give the mountpoint's \
                 own path"
            ));
        };
        let parent = match std::fs::canonicalize(parent).and_then(|p| {
            std::fs::metadata(&p)?;
            Ok(p)
        }) {
            Ok(p) => p,
            Err(e) if is_enotconn(&e) => {
                return Err(format!(
                    "mountpoint '{shown}' is inside a stale FUSE mount: unmount that with \
                     'cachefs cleanup' or 'fusermount3 -u DIR', or choose another mountpoint"
                ));
            }
            Err(e) => return Err(cannot(e)),
        };
        let resolved = parent.join(name);
        match std::fs::symlink_metadata(&resolved) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&resolved).map_err(cannot)?;
                path = std::path::absolute(parent.join(target)).map_err(cannot)?;
            }
            _ => return Ok(resolved),
        }
    }
    Err(format!(
        "cannot resolve mountpoint '{shown}': too many levels of symbolic links"
    ))
}

/// Where `path` resolves to once created: its longest existing ancestor canonicalized, the
/// rest appended (`..` applied lexically, as `create_dir_all` would).
fn planned_path(path: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let comps: Vec<Component> = abs.components().collect();
    for i in (1..=comps.len()).rev() {
        let prefix: PathBuf = comps[..i].iter().collect();
        if let Ok(mut out) = std::fs::canonicalize(&prefix) {
            for c in &comps[i..] {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return Ok(out);
        }
    }
    Ok(abs)
}

/// Refuses paths nested in one another. Paths are canonical; comparison is by component.
fn check_nesting(source: &Path, mountpoint: &Path, cache: Option<&Path>) -> Result<(), String> {
    let (s, m) = (source.display(), mountpoint.display());
    if source == mountpoint {
        return Err(format!(
            "SOURCE and MOUNTPOINT are the same directory '{s}': cachefs cannot mount over its \
             own source; mount on another, empty directory"
        ));
    }
    if mountpoint.starts_with(source) {
        return Err(format!(
            "mountpoint '{m}' is inside source '{s}': the mount would contain itself; choose a \
             mountpoint outside SOURCE"
        ));
    }
    if source.starts_with(mountpoint) {
        return Err(format!(
            "source '{s}' is inside mountpoint '{m}': the mount would hide its own source; \
             choose a mountpoint outside SOURCE"
        ));
    }
    let Some(cache) = cache else { return Ok(()) };
    let c = cache.display();
    let fix = "put the cache directory outside SOURCE and MOUNTPOINT (e.g. on the SSD)";
    for (what, p) in [("source", source), ("mountpoint", mountpoint)] {
        let shown = p.display();
        if cache == p {
            return Err(format!("cache '{c}' is the {what} directory: {fix}"));
        }
        if cache.starts_with(p) {
            return Err(format!("cache '{c}' is inside {what} '{shown}': {fix}"));
        }
        if p.starts_with(cache) {
            return Err(format!("cache '{c}' contains {what} '{shown}': {fix}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MinFree, PromoteMode};

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("cachefs")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn mount(args: &[&str]) -> Config {
        match parse(argv(args)) {
            Ok(Command::Mount(c)) => c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn usage_err(args: &[&str]) -> String {
        match parse(argv(args)) {
            Err(CliError::Usage(msg)) => {
                assert!(!msg.contains('\n'), "{args:?}: not one line: {msg}");
                msg
            }
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    fn expected() -> Config {
        let mut c = Config::new("/hdd".into(), "/media".into(), "/ssd/c".into());
        c.max_size = Some(500 << 30);
        c.min_free = MinFree::Percent(5);
        c.promote = PromoteMode::Manual;
        c.allow_other = true;
        c.kernel_flags.nosuid = true;
        c
    }

    #[test]
    fn both_forms_give_the_same_config() {
        let forms: &[&[&str]] = &[
            &[
                "/hdd",
                "/media",
                "--cache",
                "/ssd/c",
                "--max-size",
                "500G",
                "--min-free=5%",
                "--promote",
                "manual",
                "--allow-other",
                "--nosuid",
            ],
            &[
                "/hdd",
                "/media",
                "-o",
                "cache=/ssd/c,max_size=500G,min_free=5%,promote=manual,allow_other,nosuid",
            ],
            // As mount.fuse3 gives it, with what fstab and mount(8) add.
            &[
                "/hdd",
                "/media",
                "-o",
                "rw,nofail,dev,nosuid,cache=/ssd/c,max_size=500G,min_free=5%,promote=manual,\
                 allow_other,x-systemd.automount,_netdev",
            ],
            // Options first, underscores on the command line, -oLIST, several -o.
            &[
                "--cache=/ssd/c",
                "--max_size",
                "500G",
                "-omin_free=5%",
                "/hdd",
                "-o",
                "promote=manual",
                "/media",
                "-o",
                "allow_other,nosuid",
            ],
            &[
                "--allow_other",
                "--nosuid",
                "--promote=manual",
                "--min_free",
                "5%",
                "--max-size=500G",
                "--cache",
                "/ssd/c",
                "--",
                "/hdd",
                "/media",
            ],
        ];
        for form in forms {
            assert_eq!(mount(form), expected(), "{form:?}");
        }
    }

    #[test]
    fn foreground_and_order() {
        let c = mount(&["-f", "/hdd", "/media", "--cache", "/c"]);
        assert!(c.foreground);
        let c = mount(&["/hdd", "/media", "--foreground", "-o", "cache=/c"]);
        assert!(c.foreground);
        assert!(!mount(&["/hdd", "/media", "--cache", "/c"]).foreground);

        // The last of an option wins, whichever form each came in.
        let c = mount(&[
            "/h",
            "/m",
            "--cache",
            "/c1",
            "-o",
            "cache=/c2,max_size=1G",
            "--max-size=2G",
        ]);
        assert_eq!(c.cache, PathBuf::from("/c2"));
        assert_eq!(c.max_size, Some(2 << 30));
        let c = mount(&[
            "/h",
            "/m",
            "-o",
            "max_size=2G",
            "--max-size",
            "1G",
            "--cache",
            "/c",
        ]);
        assert_eq!(c.max_size, Some(1 << 30));

        // After `--`, dashes are paths.
        let c = mount(&["--cache", "/c", "--", "-src", "--mnt"]);
        assert_eq!(c.source, PathBuf::from("-src"));
        assert_eq!(c.mountpoint, PathBuf::from("--mnt"));
        // A lone `-` is a path too.
        let c = mount(&["-", "/m", "--cache", "/c"]);
        assert_eq!(c.source, PathBuf::from("-"));
    }

    #[test]
    fn mount_errors() {
        let table: &[(&[&str], &str)] = &[
            (
                &[],
                "missing SOURCE and MOUNTPOINT: usage: cachefs SOURCE MOUNTPOINT",
            ),
            (&["/h"], "missing MOUNTPOINT"),
            (&["--cache", "/c"], "missing SOURCE and MOUNTPOINT"),
            (
                &["/h", "/m"],
                "missing cache directory: add --cache DIR or -o cache=DIR",
            ),
            (&["/h", "/m", "-o", "ro"], "missing cache directory"),
            (
                &["/h", "/m", "/x", "--cache", "/c"],
                "unexpected argument '/x'",
            ),
            (
                &["/h", "/m", "--cache", "/c", "--foo"],
                "unknown option 'foo': see 'cachefs --help' for the options",
            ),
            (
                &["/h", "/m", "--cache", "/c", "--foo=1"],
                "unknown option 'foo'",
            ),
            (&["/h", "/m", "-o", "cache=/c,foo"], "unknown option 'foo'"),
            (&["/h", "/m", "--cache", "/c", "-x"], "unknown option '-x'"),
            (
                &["/h", "/m", "--cache", "/c", "-fo"],
                "unknown option '-fo'",
            ),
            (
                &["/h", "/m", "--cache", "/c", "--max-size", "lots"],
                "option 'max_size': invalid size 'lots'",
            ),
            (
                &["/h", "/m", "-o", "cache=/c,max_size=5Q"],
                "invalid size '5Q'",
            ),
            (
                &["/h", "/m", "--cache", "/c", "--max-size"],
                "option '--max-size' needs a value: write --max-size SIZE or --max-size=SIZE",
            ),
            (&["/h", "/m", "--cache"], "option '--cache' needs a value"),
            (&["/h", "/m", "--cache="], "option 'cache' needs a value"),
            (
                &["/h", "/m", "--cache", "/c", "-o"],
                "option '-o' needs a list",
            ),
            (
                &["/h", "/m", "--cache", "/c", "--allow-other=yes"],
                "option 'allow_other' takes no value: write 'allow_other', not 'allow_other=yes'",
            ),
            (
                &["/h", "/m", "-o", "cache=/c,debug=1"],
                "option 'debug' takes no value",
            ),
            (
                &["/h", "/m", "--cache", "/c", "--foreground=1"],
                "'--foreground' takes no value",
            ),
            (
                &["/h", "/m", "--cache", "/c", "--promote", "lazy"],
                "write auto or manual",
            ),
        ];
        for (args, want) in table {
            let err = usage_err(args);
            assert!(err.contains(want), "{args:?}: {err}");
        }
        // A flag given as `--flag VALUE` leaves VALUE as a positional.
        let err = usage_err(&["/h", "/m", "--cache", "/c", "--allow-other", "yes"]);
        assert!(err.contains("unexpected argument 'yes'"), "{err}");
    }

    #[test]
    fn help_and_version() {
        for args in [
            &["--help"][..],
            &["-h"],
            &["/h", "/m", "--help"],
            &["/h", "--bogus", "-h"],
        ] {
            match parse(argv(args)) {
                Err(CliError::Info(h)) => {
                    assert!(h.contains("Usage:"), "{h}");
                    for spec in options::OPTIONS {
                        let dashed = format!("--{}", spec.name.replace('_', "-"));
                        assert!(h.contains(&dashed), "help lacks {dashed}");
                    }
                    for word in [
                        "-o LIST",
                        "--foreground",
                        "nofail",
                        "noatime",
                        "cleanup",
                        "feed plex",
                        "feed jellyfin",
                    ] {
                        assert!(h.contains(word), "help lacks {word}");
                    }
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        for args in [&["--version"][..], &["-V"]] {
            assert_eq!(
                parse(argv(args)),
                Err(CliError::Info(format!(
                    "cachefs {}\n",
                    env!("CARGO_PKG_VERSION")
                )))
            );
        }
        // After `--`, `--help` is a path.
        assert!(matches!(
            parse(argv(&["--cache", "/c", "--", "--help", "/m"])),
            Ok(Command::Mount(_))
        ));
    }

    #[test]
    fn subcommands() {
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        let table: &[(&[&str], Command)] = &[
            (
                &["status", "/media"],
                Command::Status {
                    mountpoint: "/media".into(),
                    json: false,
                },
            ),
            (
                &["status", "--json", "/media"],
                Command::Status {
                    mountpoint: "/media".into(),
                    json: true,
                },
            ),
            (
                &["status", "/media", "--json"],
                Command::Status {
                    mountpoint: "/media".into(),
                    json: true,
                },
            ),
            (
                &["promote", "/media/a", "/media/b"],
                Command::Promote {
                    wait: false,
                    paths: p(&["/media/a", "/media/b"]),
                },
            ),
            (
                &["promote", "--wait", "/media/a"],
                Command::Promote {
                    wait: true,
                    paths: p(&["/media/a"]),
                },
            ),
            (
                &["pin", "a", "b"],
                Command::Pin {
                    paths: p(&["a", "b"]),
                },
            ),
            (&["unpin", "a"], Command::Unpin { paths: p(&["a"]) }),
            (
                &["evict", "a", "--", "--b"],
                Command::Evict {
                    paths: p(&["a", "--b"]),
                },
            ),
            (
                &["unmount", "/media"],
                Command::Unmount {
                    mountpoint: "/media".into(),
                },
            ),
            (
                &["cleanup"],
                Command::Cleanup {
                    mountpoints: vec![],
                    watch: None,
                },
            ),
            (
                &["cleanup", "/m1", "/m2"],
                Command::Cleanup {
                    mountpoints: p(&["/m1", "/m2"]),
                    watch: None,
                },
            ),
            (
                &["cleanup", "--watch"],
                Command::Cleanup {
                    mountpoints: vec![],
                    watch: Some(1),
                },
            ),
            (
                &["cleanup", "--watch", "--every", "5", "/m1"],
                Command::Cleanup {
                    mountpoints: p(&["/m1"]),
                    watch: Some(5),
                },
            ),
            (
                &["restart", "/media"],
                Command::Restart {
                    mountpoint: "/media".into(),
                    binary: None,
                    options: None,
                },
            ),
            (
                &["restart", "/media", "--binary", "/b", "-o", "meta_ttl=1d"],
                Command::Restart {
                    mountpoint: "/media".into(),
                    binary: Some("/b".into()),
                    options: Some("meta_ttl=1d".into()),
                },
            ),
            (&["man"], Command::Man),
        ];
        for (args, want) in table {
            assert_eq!(parse(argv(args)).as_ref(), Ok(want), "{args:?}");
        }

        let errors: &[(&[&str], &str)] = &[
            (&["status"], "usage: cachefs status"),
            (&["status", "/a", "/b"], "unexpected argument '/b'"),
            (&["status", "/a", "--jsn"], "unexpected argument '--jsn'"),
            (&["promote"], "usage: cachefs promote"),
            (&["promote", "--wait"], "PATHS"),
            (&["pin"], "required"),
            (&["unpin"], "required"),
            (&["evict"], "required"),
            (&["unmount"], "required"),
            (&["unmount", "/a", "/b"], "unexpected argument"),
            (&["cleanup", "--all"], "unexpected argument '--all'"),
        ];
        for (args, want) in errors {
            let err = usage_err(args);
            assert!(err.contains(want), "{args:?}: {err}");
        }

        for args in [&["status", "--help"][..], &["promote", "-h"]] {
            match parse(argv(args)) {
                Err(CliError::Info(h)) => assert!(h.contains("Usage: cachefs"), "{h}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        // Not a subcommand name: the mount form.
        assert!(matches!(
            parse(argv(&["./status", "/m", "--cache", "/c"])),
            Ok(Command::Mount(_))
        ));
    }

    fn map(from: &str, to: &str) -> PathMap {
        PathMap {
            from: from.to_string(),
            to: to.into(),
        }
    }

    #[test]
    fn feed_subcommands() {
        let plex = |url: &str, tokens: &[&str]| FeedServer::Plex {
            url: url.into(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
        };
        let jf = |users| FeedArgs {
            server: FeedServer::Jellyfin {
                url: "http://j".into(),
                api_key: "k".into(),
                users,
            },
            maps: vec![],
            next: 1,
            every: None,
            mountpoint: "/m".into(),
        };
        let table: &[(&[&str], FeedArgs)] = &[
            (
                &[
                    "feed",
                    "plex",
                    "--url",
                    "http://plex:32400/",
                    "--token",
                    "t0k",
                    "/mnt/m",
                ],
                FeedArgs {
                    server: plex("http://plex:32400", &["t0k"]),
                    maps: vec![],
                    next: 1,
                    every: None,
                    mountpoint: "/mnt/m".into(),
                },
            ),
            (
                // The token in the URL's query, as Plex's own links carry it.
                &[
                    "feed",
                    "plex",
                    "--url",
                    "http://10.0.0.2:32400?X-Plex-Token=abc",
                    "--map",
                    "/data/tv=/mnt/m/TV",
                    "--map",
                    "/da=ta=/mnt/m/x=y",
                    "--next",
                    "3",
                    "--loop",
                    "600",
                    "/mnt/m",
                ],
                FeedArgs {
                    server: plex("http://10.0.0.2:32400", &["abc"]),
                    maps: vec![map("/data/tv", "/mnt/m/TV"), map("/da=ta", "/mnt/m/x=y")],
                    next: 3,
                    every: Some(600),
                    mountpoint: "/mnt/m".into(),
                },
            ),
            (
                &[
                    "feed",
                    "jellyfin",
                    "--url",
                    "HTTP://jf:8096/jellyfin/",
                    "--api-key",
                    "k",
                    "--user",
                    "0f3c-9A",
                    "--next",
                    "0",
                    "m",
                ],
                FeedArgs {
                    server: FeedServer::Jellyfin {
                        url: "HTTP://jf:8096/jellyfin".into(),
                        api_key: "k".into(),
                        users: JellyfinUsers::These(vec!["0f3c-9A".into()]),
                    },
                    maps: vec![],
                    next: 0,
                    every: None,
                    mountpoint: "m".into(),
                },
            ),
            (
                // Several tokens, in the URL, repeated and comma-separated, each once; a
                // Windows FROM kept as written.
                &[
                    "feed",
                    "plex",
                    "--url",
                    "http://p:32400?X-Plex-Token=u",
                    "--token",
                    "a",
                    "--token",
                    "b,u,a",
                    "--map",
                    "D:\\Media=/mnt/m",
                    "--map",
                    "\\\\nas\\tv=/mnt/m/tv",
                    "/mnt/m",
                ],
                FeedArgs {
                    server: plex("http://p:32400", &["u", "a", "b"]),
                    maps: vec![map("D:\\Media", "/mnt/m"), map("\\\\nas\\tv", "/mnt/m/tv")],
                    next: 1,
                    every: None,
                    mountpoint: "/mnt/m".into(),
                },
            ),
            (
                &[
                    "feed",
                    "jellyfin",
                    "--url",
                    "http://j",
                    "--api-key",
                    "k",
                    "--user",
                    "b2",
                    "--user",
                    "a1",
                    "--user",
                    "b2",
                    "/m",
                ],
                jf(JellyfinUsers::These(vec!["b2".into(), "a1".into()])),
            ),
            (
                &[
                    "feed",
                    "jellyfin",
                    "--url",
                    "http://j",
                    "--api-key",
                    "k",
                    "--user",
                    "a1",
                    "--user",
                    "all",
                    "/m",
                ],
                jf(JellyfinUsers::All),
            ),
        ];
        for (args, want) in table {
            assert_eq!(
                parse(argv(args)),
                Ok(Command::Feed(want.clone())),
                "{args:?}"
            );
        }

        let jellyfin_with = |extra: &[&'static str]| {
            let mut v = vec!["feed", "jellyfin", "--url", "http://j"];
            v.extend_from_slice(extra);
            v
        };
        let plex_with = |extra: &[&'static str]| {
            let mut v = vec!["feed", "plex", "--url", "http://p:32400", "--token", "t"];
            v.extend_from_slice(extra);
            v
        };
        let errors: Vec<(Vec<&str>, &str)> = vec![
            (vec!["feed"], "usage: cachefs feed"),
            (vec!["feed", "emby"], "unrecognized subcommand 'emby'"),
            (
                vec!["feed", "plex", "--url", "http://p", "/m"],
                "needs the server's token",
            ),
            (
                vec!["feed", "plex", "--url", "http://p?X-Plex-Token=", "/m"],
                "needs the server's token",
            ),
            (
                vec![
                    "feed",
                    "plex",
                    "--url",
                    "https://p:32400",
                    "--token",
                    "t",
                    "/m",
                ],
                "plain http only",
            ),
            (
                vec!["feed", "plex", "--url", "p:32400", "--token", "t", "/m"],
                "as http://HOST:PORT",
            ),
            (
                vec![
                    "feed",
                    "plex",
                    "--url",
                    "http://p/?a=b",
                    "--token",
                    "t",
                    "/m",
                ],
                "'a' in its query is not understood",
            ),
            (plex_with(&["--map", "/a:/m/b", "/m"]), "is not FROM=TO"),
            (plex_with(&["--map", "=/m/b", "/m"]), "is not FROM=TO"),
            (plex_with(&["--map", "/a=m/b", "/m"]), "is not FROM=TO"),
            (plex_with(&["--map", "D:\\a=m\\b", "/m"]), "is not FROM=TO"),
            (
                vec!["feed", "plex", "--url", "http://p", "--token", "", "/m"],
                "needs the server's token",
            ),
            (
                plex_with(&["--next", "-1", "/m"]),
                "unexpected argument '-1'",
            ),
            (plex_with(&["--next", "x", "/m"]), "--next"),
            (plex_with(&["--loop", "0", "/m"]), "--loop"),
            (plex_with(&["--loop", "5m", "/m"]), "--loop"),
            (plex_with(&[]), "MOUNTPOINT"),
            (jellyfin_with(&["--user", "u", "/m"]), "--api-key"),
            (jellyfin_with(&["--api-key", "k", "/m"]), "--user"),
            (
                jellyfin_with(&["--api-key", "k", "--user", "Ann Lee", "/m"]),
                "not the name",
            ),
            (
                jellyfin_with(&["--api-key", "", "--user", "u", "/m"]),
                "--api-key is empty",
            ),
        ];
        for (args, want) in &errors {
            let err = usage_err(args);
            assert!(err.contains(want), "{args:?}: {err}");
        }

        // The token stays out of debug output.
        let dbg = format!("{:?}", plex("http://p", &["s3cret", "t2"]));
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(b"/h\xff".to_vec());
        let args = vec![
            "cachefs".into(),
            bad.clone(),
            "/m".into(),
            "--cache".into(),
            "/c".into(),
        ];
        match parse(args) {
            Ok(Command::Mount(c)) => assert_eq!(c.source.into_os_string(), bad),
            other => panic!("{other:?}"),
        }
        let args = vec!["cachefs".into(), "pin".into(), bad.clone()];
        assert_eq!(
            parse(args),
            Ok(Command::Pin {
                paths: vec![bad.into()]
            })
        );
    }

    // check_paths

    struct Dirs {
        _tmp: tempfile::TempDir,
        root: PathBuf,
    }

    fn dirs(names: &[&str]) -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        for n in names {
            std::fs::create_dir_all(root.join(n)).unwrap();
        }
        Dirs { _tmp: tmp, root }
    }

    fn cfg(d: &Dirs, source: &str, mountpoint: &str, cache: &str) -> Config {
        Config::new(
            d.root.join(source),
            d.root.join(mountpoint),
            d.root.join(cache),
        )
    }

    #[test]
    fn check_paths_accepts_and_canonicalizes() {
        let d = dirs(&["hdd", "media", "ssd"]);
        let mut c = cfg(&d, "hdd/../hdd", "./media", "ssd/new/../cache");
        c.log = Some("rel.log".into());
        check_paths(&mut c).unwrap();
        assert_eq!(c.source, d.root.join("hdd"));
        assert_eq!(c.mountpoint, d.root.join("media"));
        assert_eq!(c.cache, d.root.join("ssd/cache"));
        assert!(c.cache.is_dir(), "cache not created");
        assert!(c.log.as_ref().is_some_and(|l| l.is_absolute()));

        // An existing cache is fine; so is a deeper one created whole.
        let mut c = cfg(&d, "hdd", "media", "ssd/a/b/c");
        check_paths(&mut c).unwrap();
        assert!(d.root.join("ssd/a/b/c").is_dir());
        check_paths(&mut c).unwrap();

        // Siblings sharing a prefix are not nested: /a/b vs /a/bc.
        let d = dirs(&["a/b", "a/bc", "a/bcd"]);
        let mut c = cfg(&d, "a/b", "a/bc", "a/bcd");
        check_paths(&mut c).unwrap();
        let mut c = cfg(&d, "a/bc", "a/bcd", "a/b");
        check_paths(&mut c).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn check_paths_follows_symlinks() {
        let d = dirs(&["hdd", "media", "ssd"]);
        std::os::unix::fs::symlink(d.root.join("hdd"), d.root.join("src-link")).unwrap();
        std::os::unix::fs::symlink(d.root.join("hdd"), d.root.join("cache-link")).unwrap();
        let mut c = cfg(&d, "src-link", "media", "ssd/c");
        check_paths(&mut c).unwrap();
        assert_eq!(c.source, d.root.join("hdd"));
        // A cache reached through a symlink to the source is still the source.
        let mut c = cfg(&d, "hdd", "media", "cache-link/c");
        let err = check_paths(&mut c).unwrap_err();
        assert!(err.contains("is inside source"), "{err}");
        assert!(!d.root.join("hdd/c").exists(), "created inside the source");
    }

    #[test]
    fn check_paths_errors() {
        type Case<'a> = (&'a [&'a str], (&'a str, &'a str, &'a str), &'a str);
        let table: &[Case] = &[
            (
                &["media", "ssd"],
                ("hdd", "media", "ssd/c"),
                "does not exist: give an existing",
            ),
            (&["hdd", "ssd"], ("hdd", "media", "ssd/c"), "mountpoint '"),
            (
                &["hdd", "ssd"],
                ("hdd", "media", "ssd/c"),
                "does not exist: create it first",
            ),
            (
                &["hdd/d", "media"],
                ("hdd/d", "media", "hdd/d/cache"),
                "is inside source",
            ),
            (
                &["hdd", "media"],
                ("hdd", "media", "hdd"),
                "is the source directory",
            ),
            (
                &["hdd", "media"],
                ("hdd", "media", "media/c"),
                "is inside mountpoint",
            ),
            (
                &["hdd", "media"],
                ("hdd", "media", "media"),
                "is the mountpoint directory",
            ),
            (
                &["c/hdd", "media"],
                ("c/hdd", "media", "c"),
                "contains source",
            ),
            (
                &["hdd", "c/media"],
                ("hdd", "c/media", "c"),
                "contains mountpoint",
            ),
            (
                &["hdd", "ssd"],
                ("hdd", "hdd", "ssd/c"),
                "are the same directory",
            ),
            (
                &["hdd/m", "ssd"],
                ("hdd", "hdd/m", "ssd/c"),
                "is inside source",
            ),
            (
                &["m/hdd", "ssd"],
                ("m/hdd", "m", "ssd/c"),
                "is inside mountpoint",
            ),
        ];
        for (make, (s, m, c), want) in table {
            let d = dirs(make);
            let mut conf = cfg(&d, s, m, c);
            let before = conf.clone();
            let err = check_paths(&mut conf).unwrap_err();
            assert!(err.contains(want), "{s} {m} {c}: {err}");
            assert!(!err.contains('\n'), "{err}");
            assert_eq!(conf, before, "a failed check changed the config");
        }
        // Nothing was created inside the source or mountpoint on the way to failing.
        let d = dirs(&["hdd", "media"]);
        assert!(check_paths(&mut cfg(&d, "hdd", "media", "media/x/y")).is_err());
        assert!(!d.root.join("media/x").exists());

        // Files where directories are needed.
        let d = dirs(&["hdd", "media", "ssd"]);
        std::fs::write(d.root.join("file"), b"x").unwrap();
        for ((s, m, c), want) in [
            (("file", "media", "ssd/c"), "source '"),
            (("hdd", "file", "ssd/c"), "mountpoint '"),
            (("hdd", "media", "file"), "cache '"),
            (("hdd", "media", "file/c"), "cannot create cache directory"),
        ] {
            let err = check_paths(&mut cfg(&d, s, m, c)).unwrap_err();
            assert!(err.contains(want), "{s} {m} {c}: {err}");
            if !want.starts_with("cannot") {
                assert!(err.contains("is not a directory"), "{err}");
            }
        }
    }

    /// A mountpoint whose stat fails with ENOTCONN (a FUSE mount whose daemon is gone) is
    /// accepted and resolved without looking inside it. Needs CAP_SYS_ADMIN and /dev/fuse; it
    /// says "skipped" and passes without them. The stale mount lives in a private mount
    /// namespace of a thread of its own, so it vanishes with that thread.
    #[cfg(target_os = "linux")]
    #[test]
    fn check_paths_accepts_a_stale_mountpoint() {
        let d = dirs(&["hdd", "media", "ssd"]);
        let root = d.root.clone();
        let result = std::thread::spawn(move || -> Result<(), String> {
            use rustix::mount::{MountFlags, MountPropagationFlags};
            use std::os::fd::AsRawFd;
            crate::sys::unshare_mount_namespace().map_err(|e| format!("unshare: {e}"))?;
            let private = MountPropagationFlags::REC | MountPropagationFlags::PRIVATE;
            rustix::mount::mount_change("/", private).map_err(|e| format!("make-private: {e}"))?;
            let flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC;
            let fuse = rustix::fs::open("/dev/fuse", flags, rustix::fs::Mode::empty())
                .map_err(|e| format!("/dev/fuse: {e}"))?;
            let fd = fuse.as_raw_fd();
            let opts =
                std::ffi::CString::new(format!("fd={fd},rootmode=40000,user_id=0,group_id=0"))
                    .map_err(|e| e.to_string())?;
            let target = root.join("media");
            rustix::mount::mount(
                "stale",
                &target,
                "fuse.cachefs",
                MountFlags::empty(),
                &*opts,
            )
            .map_err(|e| format!("mount: {e}"))?;
            // Closed: the mount's daemon is gone, as after a crash.
            drop(fuse);
            let stat = std::fs::metadata(root.join("media")).map(|_| ());
            assert!(stat.as_ref().is_err_and(is_enotconn), "not stale: {stat:?}");

            let mut c = Config::new(root.join("hdd"), root.join("media"), root.join("ssd/c"));
            check_paths(&mut c).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.mountpoint, root.join("media"));

            // Relative, with a trailing slash, and through a symlink.
            std::os::unix::fs::symlink(root.join("media"), root.join("link")).unwrap();
            for m in [root.join("./media/"), root.join("link")] {
                let mut c = Config::new(root.join("hdd"), m.clone(), root.join("ssd/c"));
                check_paths(&mut c).unwrap_or_else(|e| panic!("{m:?}: {e}"));
                assert_eq!(c.mountpoint, root.join("media"), "{m:?}");
            }

            // A cache inside it is still refused, and a path further inside one is not a
            // stale mountpoint.
            let mut c = Config::new(root.join("hdd"), root.join("media"), root.join("media/c"));
            let err = check_paths(&mut c).unwrap_err();
            assert!(err.contains("is inside mountpoint"), "{err}");
            let mut c = Config::new(root.join("hdd"), root.join("media/sub"), root.join("ssd/c"));
            let err = check_paths(&mut c).unwrap_err();
            assert!(err.contains("is inside a stale FUSE mount"), "{err}");
            let mut c = Config::new(root.join("media"), root.join("hdd"), root.join("ssd/c"));
            let err = check_paths(&mut c).unwrap_err();
            assert!(err.contains("is a stale FUSE mount"), "{err}");
            Ok(())
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(why)) => eprintln!("skipped: cannot make a stale FUSE mount here: {why}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
