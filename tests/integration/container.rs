//! The README's container recipe, run as printed with podman and runc: the image is built
//! from `scripts/Dockerfile` (its base images made locally by
//! `scripts/container-bases.sh`, as no image registry is reachable here), and the
//! recipe's `podman run` mounts at the host's `/mnt/cachefs/media`.
//!
//! "The host" is a private mount namespace in which `/srv` and `/mnt` are the test's temp
//! dirs, so that the recipe's system paths are used as printed and nothing outside the
//! temp dir is touched. podman's storage, state and configuration live in the temp dir
//! too (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF), and its containers join the host's
//! network, so that podman adds no bridge or firewall rule to the machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::{
    BIN, bind_mount, in_private_mount_ns, mounts_at, skip, statfs_ok, wait_unmounted,
};
use crate::require_mount;

const README: &str = include_str!("../../README.md");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The README's container recipe: the `sh` block of "### Containers" that runs the image.
fn readme_recipe() -> String {
    let section = &README[README.find("### Containers").expect("a Containers section")..];
    section
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("podman run"))
        .expect("a sh block with `podman run` in the Containers section")
        .to_string()
}

/// podman, configured and stored under one temp dir. Dropping it removes every container
/// of that store (so no conmon or container process is left), then what the store
/// mounted.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let conf = dir.join("containers.conf");
        fs::write(
            &conf,
            format!(
                "[containers]\n\
                 # runc cannot apply ulimits podman would add by default on this kind of host.\n\
                 default_ulimits = []\n\
                 netns = \"host\"\n\
                 [engine]\n\
                 # crun refuses the cgroup v1/hybrid layout; runc with cgroupfs works.\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 tmp_dir = \"{tmp}\"\n",
                tmp = dir.join("tmp").display()
            ),
        )
        .expect("write containers.conf");
        fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("storage").display(),
                dir.join("run").display()
            ),
        )
        .expect("write storage.conf");
        Podman {
            dir: dir.to_path_buf(),
        }
    }

    /// Sets podman's configuration on `cmd` (a `podman` or a shell running podman).
    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
    }

    /// Runs `podman ARGS`; its exit status and output.
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .env(&mut Command::new("podman"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "podman {args:?} failed:\n{out}");
        out
    }

    /// Starts the media server's container as the README says: the host's
    /// `/mnt/cachefs` bound `rslave` at `/data`. It runs until the test ends, so that it
    /// has to see every later mount of cachefs come in.
    fn start_media_server(&self) {
        self.ok(&[
            "run",
            "-d",
            "--name",
            "mediaserver",
            "-v",
            "/mnt/cachefs:/data:rslave",
            "debian:bookworm-slim",
            "sleep",
            "infinity",
        ]);
    }

    /// The sha256 of the library's `rel` as the media server reads it, or its error.
    fn media_server_sha256(&self, rel: &str) -> String {
        let out = self.ok(&[
            "exec",
            "mediaserver",
            "sha256sum",
            &format!("/data/media/{rel}"),
        ]);
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// A number from `cachefs status --json`, asked inside the container.
    fn status_number(&self, key: &str) -> u64 {
        let out = self.ok(&["exec", "cachefs", "cachefs", "status", LIBRARY, "--json"]);
        let needle = format!("\"{key}\":");
        let at = out
            .find(&needle)
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            + needle.len();
        out[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} is not a number in {out}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--force", "--all", "--time", "0"]);
        // The overlay driver's own mounts, deepest first, so that the dir can go.
        let text = fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
        let mut below: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(&self.dir) && *p != self.dir)
            .collect();
        below.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in below {
            crate::common::detach(&p);
        }
    }
}

/// The host-side watcher, `cachefs cleanup --watch /mnt/cachefs/media`; ended by pid on drop.
struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `podman kill` such that the mount is certainly left dead: when PID 1 dies the kernel
/// kills the rest of the container, and cachefs's watchdog sometimes unmounts before its
/// own SIGKILL lands (3 of 5 kills measured), so it is killed first, by its host pid (the
/// child of the container's PID 1 named `cachefs-watch`).
fn kill_leaving_a_dead_mount(p: &Podman) {
    let pid = p.ok(&["inspect", "--format", "{{.State.Pid}}", "cachefs"]);
    let pid = pid.trim();
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("the container's PID 1's children");
    let watchdog: i32 = children
        .split_whitespace()
        .find(|c| {
            fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "cachefs-watch")
        })
        .and_then(|c| c.parse().ok())
        .expect("cachefs's watchdog in the container");
    // SAFETY: kill(2) on the watchdog of the container this test started.
    assert_eq!(unsafe { libc::kill(watchdog, libc::SIGKILL) }, 0);
    let end = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{watchdog}/comm")).exists()
        && fs::read_to_string(format!("/proc/{watchdog}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < end, "the watchdog did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.ok(&["kill", "cachefs"]);
}

/// The library on the host, where the recipe's cachefs mounts.
const LIBRARY: &str = "/mnt/cachefs/media";

/// Polls until the library is a live cachefs mount (statfs answers), the only mount
/// there (no dead one left below it), or fails.
fn wait_live(what: &str, p: &Podman) {
    let mnt = Path::new(LIBRARY);
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let at = mounts_at(mnt);
        if at.len() == 1 && at[0].fstype == "fuse.cachefs" && statfs_ok(mnt) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, ps) = p.run(&["ps", "-a"]);
    let (_, logs) = p.run(&["logs", "cachefs"]);
    panic!(
        "{what}: no single live cachefs mount at {LIBRARY}: {:?}\n{ps}\n{logs}",
        mounts_at(mnt)
    );
}

fn missing_tools() -> Vec<&'static str> {
    ["podman", "runc", "debootstrap", "rustc"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect()
}

/// The README's recipe as printed: the image builds from the shipped Dockerfile; the
/// mount shows on the host; the media server's container (`rslave`) reads the right
/// bytes; a read promotes the film and the next one is served by passthrough; `podman
/// stop` exits 0 on SIGTERM and leaves no mount; after `podman kill` the host-side
/// watcher removes the dead mount and a start mounts again; after a crash (the
/// container's PID 1 killed) the restart policy brings a live mount back.
#[test]
fn readme_container_recipe_mounts_serves_stops_and_recovers() {
    require_mount!();
    let missing = missing_tools();
    if !missing.is_empty() {
        skip(
            "readme_container_recipe_mounts_serves_stops_and_recovers",
            &format!("missing {missing:?} (scripts/prereqs.sh installs them)"),
        );
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let w = tmp.path().canonicalize().expect("canonicalize");
    in_private_mount_ns(|| run_recipe(&w));
}

fn run_recipe(w: &Path) {
    // The host's paths, as the recipe names them: /srv/hdd (SOURCE), /srv/ssd (the SSD)
    // and /mnt (where the library appears), on a shared mount as under systemd.
    for d in ["srv", "mnt", "podman"] {
        fs::create_dir_all(w.join(d)).expect("mkdir");
    }
    bind_mount(&w.join("srv"), Path::new("/srv")).expect("bind /srv");
    bind_mount(&w.join("mnt"), Path::new("/mnt")).expect("bind /mnt");
    let st = Command::new("mount")
        .args(["--make-rshared", "/mnt"])
        .status()
        .expect("mount");
    assert!(st.success(), "mount --make-rshared /mnt");
    fs::create_dir_all("/srv/hdd/Films").expect("mkdir SOURCE");
    let film: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write("/srv/hdd/Films/Film (2024).mkv", &film).expect("write the film");
    let want = sha256_of(Path::new("/srv/hdd/Films/Film (2024).mkv"));

    let p = Podman::new(&w.join("podman"));
    let bases = p
        .env(&mut Command::new("bash"))
        .arg(Path::new(REPO).join("scripts/container-bases.sh"))
        .arg(w.join("bases"))
        .status()
        .expect("run container-bases.sh");
    assert!(bases.success(), "scripts/container-bases.sh failed");

    // The recipe, as printed, from the repository's root.
    let recipe = readme_recipe();
    let out = p
        .env(Command::new("bash").args(["-euxc", &recipe]))
        .current_dir(REPO)
        .stdin(Stdio::null())
        .output()
        .expect("run the recipe");
    assert!(
        out.status.success(),
        "the README's recipe failed:\n{recipe}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_live("after podman run", &p);
    p.start_media_server();
    let library = Path::new(LIBRARY);

    // The media server reads through the host's view; the first read is from SOURCE and
    // promotes the film, a later one is served from the SSD copy by the kernel
    // (passthrough).
    let rel = "Films/Film (2024).mkv";
    assert_eq!(p.media_server_sha256(rel), want, "first read, from SOURCE");
    let end = Instant::now() + Duration::from_secs(60);
    while p.status_number("promotions_done") < 1 {
        assert!(Instant::now() < end, "the film was never promoted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = p.status_number("passthrough_opens");
    assert_eq!(
        p.media_server_sha256(rel),
        want,
        "second read, from the copy"
    );
    assert_eq!(
        p.status_number("passthrough_opens"),
        before + 1,
        "the second read was not served by passthrough"
    );
    assert_eq!(sha256_of(&library.join(rel)), want, "the host's read");

    // `podman stop`: SIGTERM, and cachefs exits 0 by itself (a container that outlives
    // the grace is killed: 137), leaving no mount.
    p.ok(&["stop", "cachefs"]);
    let code = p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "cachefs"]);
    assert_eq!(code.trim(), "0", "exit code after podman stop");
    assert!(
        wait_unmounted(library, Duration::from_secs(5)),
        "podman stop left a mount: {:?}",
        mounts_at(library)
    );

    // `podman kill`: everything in the container dies, the watchdog too, and the host is
    // left with a dead mount. A start recovers it: the container binds the directory
    // above, and the new cachefs removes the dead mount and mounts.
    p.ok(&["start", "cachefs"]);
    wait_live("after podman start", &p);
    assert_eq!(p.media_server_sha256(rel), want, "after a stop and a start");
    kill_leaving_a_dead_mount(&p);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let e = fs::read_dir(library).err().and_then(|e| e.raw_os_error());
        if e == Some(libc::ENOTCONN) {
            break;
        }
        assert!(
            Instant::now() < end,
            "no dead mount after podman kill: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.ok(&["start", "cachefs"]);
    wait_live("after podman start following a kill", &p);
    let (_, logs) = p.run(&["logs", "cachefs"]);
    assert!(
        logs.contains(&format!("removing a stale fuse.cachefs mount at {LIBRARY}")),
        "the new cachefs did not recover the dead mount:\n{logs}"
    );
    assert_eq!(p.media_server_sha256(rel), want, "after a kill and a start");

    // Between a kill and a start, the host-side watcher removes the dead mount.
    let watcher = Watcher(
        Command::new(BIN)
            .args(["cleanup", "--watch", LIBRARY])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the watcher"),
    );
    kill_leaving_a_dead_mount(&p);
    assert!(
        wait_unmounted(library, Duration::from_secs(10)),
        "the dead mount outlived its container: {:?}",
        mounts_at(library)
    );
    // An empty directory, not "Transport endpoint is not connected".
    assert_eq!(fs::read_dir(library).expect("read_dir").count(), 0);
    drop(watcher);
    p.ok(&["start", "cachefs"]);
    wait_live("after podman start following a kill and the watcher", &p);
    assert_eq!(p.media_server_sha256(rel), want, "after the watcher");

    // A crash: the container's PID 1 dies on its own. The restart policy starts it again,
    // with a live mount (the watchdog may have unmounted in time, or the new cachefs
    // removes the dead mount).
    let pid = p.ok(&["inspect", "--format", "{{.State.Pid}}", "cachefs"]);
    let pid: i32 = pid.trim().parse().expect("the container's pid");
    // SAFETY: kill(2) on the pid podman reports for the container this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let restarted = p
            .run(&["inspect", "--format", "{{.State.Pid}}", "cachefs"])
            .1
            .trim()
            .parse::<i32>()
            .is_ok_and(|n| n != 0 && n != pid);
        if restarted {
            break;
        }
        assert!(
            Instant::now() < end,
            "the restart policy did not restart the container"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_live("after the restart policy's restart", &p);
    assert_eq!(p.media_server_sha256(rel), want, "after the crash");
    p.ok(&["stop", "cachefs"]);
    assert!(wait_unmounted(library, Duration::from_secs(5)));
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
