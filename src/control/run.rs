//! The control subcommands as `main.rs` hands them over: each located, asked of its
//! daemon, printed (results on stdout, progress and messages on stderr), and mapped to an
//! exit code from `crate::exit`. With `--json`, a failure is JSON too
//! (`{"error": "..."}` on stdout), so a script's parser never meets plain text.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::client::{self, RequestError, locate};
use super::progress;
use super::proto::{
    Cmd, Evicted, Pinned, Progress, Promoted, Request, Restarting, Status, Stopping, Unpinned,
};
use super::render::{self, Summary};
use crate::cli::Command;
use crate::exit::{FAILURE, SUCCESS};

/// How long `cachefs unmount` waits for the mount to leave mountinfo after the daemon said yes.
const UNMOUNT_WAIT: Duration = Duration::from_secs(30);

/// Runs a control subcommand and returns its exit code.
pub fn run_command(cmd: Command) -> u8 {
    match cmd {
        Command::Status { mountpoint, json } => run_status(&mountpoint, json),
        Command::Promote { wait, paths } => run_paths::<Promoted>(Cmd::Promote, &paths, wait),
        Command::Pin { paths } => run_paths::<Pinned>(Cmd::Pin, &paths, false),
        Command::Unpin { paths } => run_paths::<Unpinned>(Cmd::Unpin, &paths, false),
        Command::Evict { paths } => run_paths::<Evicted>(Cmd::Evict, &paths, false),
        Command::Unmount { mountpoint } => run_unmount(&mountpoint),
        Command::Restart {
            mountpoint,
            binary,
            options,
        } => run_restart(&mountpoint, binary, options),
        Command::Cleanup { mountpoints, watch } => {
            // Absolute without resolving: a stale mountpoint cannot be stat'ed.
            let cwd = std::env::current_dir().unwrap_or_default();
            let abs: Vec<PathBuf> = mountpoints.iter().map(|m| cwd.join(m)).collect();
            match watch {
                None => crate::mountinfo::cleanup(&abs),
                Some(secs) => crate::mountinfo::watch(&abs, Duration::from_secs(secs)),
            }
        }
        Command::Mount(_) => fail("mounting is not a control command"),
        Command::Feed(_) => fail("feed is not a control command"),
        Command::Man => fail("printing the manual page is not a control command"),
    }
}

fn fail(msg: &str) -> u8 {
    eprintln!("cachefs: {msg}");
    FAILURE
}

/// A failure as `--json` prints it: one object with the message.
pub fn json_error(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// Whether argv asks for JSON output (`status ... --json`), for a usage error found before
/// any command was parsed.
pub fn wants_json(argv: &[OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == "status")
        && argv
            .iter()
            .skip(2)
            .take_while(|a| *a != "--")
            .any(|a| a == "--json")
}

fn run_status(path: &Path, as_json: bool) -> u8 {
    let fail = |msg: &str| {
        if as_json {
            println!("{}", json_error(msg));
            FAILURE
        } else {
            fail(msg)
        }
    };
    let (mp, _) = match locate(path) {
        Ok(l) => l,
        Err(msg) => return fail(&msg),
    };
    let status: Status = match ask(&mp, &Request::new(Cmd::Status, &[], false), &mut |_| {}) {
        Ok(s) => s,
        Err(msg) => return fail(&msg),
    };
    if as_json {
        match status.to_json() {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(&format!("cannot encode the status: {e}")),
        }
    } else {
        print!("{}", render::status_text(&status));
    }
    SUCCESS
}

/// [`client::request`], with the daemon's own errors prefixed by what was asked of which
/// mount.
fn ask<R: DeserializeOwned>(
    mp: &Path,
    req: &Request,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<R, String> {
    client::request(mp, req, on_progress).map_err(|e| match e {
        RequestError::Daemon(msg) => format!("{} {}: {msg}", req.cmd, mp.display()),
        other => other.to_string(),
    })
}

/// `promote`, `pin`, `unpin`, `evict`: paths grouped by mount, one request per mount.
fn run_paths<R: DeserializeOwned + Summary>(cmd: Cmd, paths: &[PathBuf], wait: bool) -> u8 {
    let mut code = SUCCESS;
    let mut groups: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for p in paths {
        match locate(p) {
            Ok((mp, rel)) => groups.entry(mp).or_default().push(rel),
            Err(msg) => code = fail(&msg),
        }
    }
    for (mp, rels) in &groups {
        // Only a waiting promote reports progress.
        let mut view = wait.then(progress::view);
        let asked = ask::<R>(mp, &Request::new(cmd, rels, wait), &mut |p| {
            if let Some(v) = &mut view {
                v.update(p);
            }
        });
        if let Some(mut v) = view {
            v.finish(asked.as_ref().map_or(&[], |r| r.failures()));
        }
        match asked {
            Ok(result) => {
                println!("{}", render::summary(cmd, mp, &result));
                for f in result.failures() {
                    code = fail(&render::failure_line(cmd, mp, f));
                }
            }
            Err(msg) => code = fail(&msg),
        }
    }
    code
}

fn run_unmount(path: &Path) -> u8 {
    let (mp, _) = match locate(path) {
        Ok(l) => l,
        Err(msg) => return fail(&msg),
    };
    let before = cachefs_mounts_at(&mp);
    let cache = client::status(&mp).ok().map(|s| PathBuf::from(s.cache));
    let start = Instant::now();
    let req = Request::new(Cmd::Unmount, &[], false);
    match client::request::<Stopping>(&mp, &req, &mut |_| {}) {
        Ok(_) => {}
        // A daemon that exits as soon as it is unmounted may not get to answer.
        Err(RequestError::Closed(msg)) => {
            if !wait_unmounted(&mp, before, Duration::from_secs(2)) {
                return fail(&msg);
            }
        }
        Err(e) => return fail(&e.to_string()),
    }
    if !wait_unmounted(&mp, before, UNMOUNT_WAIT) {
        return fail(&format!(
            "asked the daemon to unmount {}, but it is still mounted after {} s",
            mp.display(),
            UNMOUNT_WAIT.as_secs()
        ));
    }
    // The daemon saves its state after the unmount and holds its cache directory until
    // it exits: a mount of the same cache right after this returned would be refused.
    match cache {
        Some(cache) if !wait_cache_released(&cache, start + UNMOUNT_WAIT) => fail(&format!(
            "unmounted {}, but its daemon still holds the cache directory {} after {} s",
            mp.display(),
            cache.display(),
            UNMOUNT_WAIT.as_secs()
        )),
        _ => SUCCESS,
    }
}

/// Waits until no process holds an flock on the cache directory's `lock` file (the
/// daemon holds it until it exits), as /proc/locks shows, without taking it: a mount
/// starting meanwhile must not find it taken. True at once when the file cannot be seen
/// from here (a daemon in a container, its cache at another path), as before.
fn wait_cache_released(cache: &Path, until: Instant) -> bool {
    let Ok(st) = rustix::fs::stat(cache.join("lock")) else {
        return true;
    };
    let dev = rustix::fs::Dev::from(st.st_dev);
    let key = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        st.st_ino
    );
    let held = || {
        std::fs::read_to_string("/proc/locks").is_ok_and(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&"FLOCK") && f.contains(&key.as_str())
            })
        })
    };
    while held() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// How long `cachefs restart` waits for the new daemon to answer.
const RESTART_WAIT: Duration = Duration::from_secs(30);

/// `cachefs restart MOUNTPOINT [--binary PATH]`: asks the daemon to become `binary`, then
/// waits until the daemon answers again from the new binary, on the same mount.
fn run_restart(path: &Path, binary: Option<PathBuf>, options: Option<String>) -> u8 {
    let (mp, _) = match locate(path) {
        Ok(l) => l,
        Err(msg) => return fail(&msg),
    };
    let before = match client::status(&mp) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let mut req = Request::new(Cmd::Restart, &[], false);
    req.binary = binary.map(|b| std::env::current_dir().unwrap_or_default().join(b));
    req.options = options;
    let into = match client::request::<Restarting>(&mp, &req, &mut |_| {}) {
        Ok(r) => r.binary,
        Err(e) => return fail(&e.to_string()),
    };
    let end = Instant::now() + RESTART_WAIT;
    loop {
        if let Ok(s) = client::status(&mp)
            && s.pid == before.pid
            && s.serving_since_ms != before.serving_since_ms
        {
            println!("restarted {} as {into} (pid {})", mp.display(), s.pid);
            return SUCCESS;
        }
        if Instant::now() > end {
            return fail(&format!(
                "asked the daemon of {} to restart as {into}, but it has not answered for {} s: see its log",
                mp.display(),
                RESTART_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cachefs_mounts_at(mp: &Path) -> usize {
    crate::mountinfo::mounts()
        .map(|all| {
            all.iter()
                .filter(|m| m.fstype == "fuse.cachefs" && m.target == mp)
                .count()
        })
        .unwrap_or(0)
}

/// Waits until fewer cachefs mounts sit at `mp` than `before`.
fn wait_unmounted(mp: &Path, before: usize, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if cachefs_mounts_at(mp) < before {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
