//! The media-client case with the real tools: a show's episodes, made by ffmpeg at test
//! time, probed by ffprobe as a library scanner does and played by ffmpeg as a player
//! reads them, through a mount with the default policy (`promote=auto`, `prefetch=1`,
//! the default `promote_ignore`) and `promote_after=1M`. Each episode is about 3.8 MiB:
//! playback crosses `promote_after`, a media-info probe (about 200 KiB read) does not,
//! and a keyframe extraction reads the whole file, so that only the ignore list keeps a
//! scan from promoting. Each episode has English subtitles beside it, and E09 an `.nfo`:
//! they come with their episode. ffmpeg and ffprobe come from Debian's `ffmpeg` package
//! (`scripts/prereqs.sh`); without them the tests skip (`common::skip`: fail under CI).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{self, TestMount, digest, eventually, num, status};
use crate::require_mount;

const SEASON: &str = "Show/Season 01";
const EPISODES: [&str; 3] = [
    "Show - S01E09.mkv",
    "Show - S01E10.mkv",
    "Show - S01E11.mkv",
];
const NFO: &str = "Show/Season 01/Show - S01E09.nfo";

fn episode(i: usize) -> String {
    format!("{SEASON}/{}", EPISODES[i])
}

/// Episode `i`'s subtitles.
fn subtitles(i: usize) -> String {
    episode(i).replace(".mkv", ".en.srt")
}

/// Whether an executable `tool` is on PATH (looked up, not run: each start of ffmpeg
/// loads about a hundred libraries).
fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether ffmpeg and ffprobe are on PATH; otherwise skips (fails under `CI=true`).
fn have_ffmpeg() -> bool {
    let missing: Vec<&str> = ["ffmpeg", "ffprobe"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    common::skip(
        &common::test_name(),
        &format!(
            "{} not found (Debian's ffmpeg package; scripts/prereqs.sh installs it)",
            missing.join(" and ")
        ),
    );
    false
}

/// Runs `cmd` (stdin closed), which must succeed; its output.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Jellyfin's media-info probe of `file` (its ffprobe command line): the streams'
/// codecs. It reads the header and the first packets, about 200 KiB here.
fn probe_info(file: &Path) -> Vec<String> {
    let out = run(Command::new("ffprobe")
        .args(["-analyzeduration", "200M", "-probesize", "1G", "-i"])
        .arg(file)
        .args(["-threads", "0", "-v", "warning", "-print_format", "json"])
        .args(["-show_streams", "-show_chapters", "-show_format"]));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe prints JSON");
    info["streams"]
        .as_array()
        .expect("ffprobe lists streams")
        .iter()
        .filter_map(|s| s["codec_name"].as_str().map(String::from))
        .collect()
}

/// Jellyfin's keyframe extraction of `file` (its ffprobe command line): the number of
/// video packets listed. It reads the whole file.
fn probe_keyframes(file: &Path) -> usize {
    let out = run(Command::new("ffprobe")
        .args([
            "-loglevel",
            "error",
            "-skip_frame",
            "nokey",
            "-select_streams",
            "v:0",
        ])
        .args([
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=print_section=0",
        ])
        .arg(file));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Plays `file` as a player does (`-re`: at the playback rate) or as fast as it can
/// decode, every stream; the MD5 of every decoded frame and sample.
fn play(file: &Path, realtime: bool) -> String {
    let mut cmd = Command::new("ffmpeg");
    cmd.arg("-nostdin");
    if realtime {
        cmd.arg("-re");
    }
    cmd.args(["-loglevel", "error", "-i"])
        .arg(file)
        .args(["-map", "0", "-f", "md5", "-"]);
    String::from_utf8(run(&mut cmd).stdout).expect("an MD5 line")
}

/// Fills SOURCE with three episodes of 6 s (MPEG-4 video at 5 Mbit/s over a noisy test
/// pattern, so that it does not compress below that, and AAC audio: about 3.8 MiB each,
/// each with its own noise and tone), encoded in parallel, each with a small `.en.srt`,
/// and a small `.nfo` for E09.
fn show(src: &Path) {
    let dir = src.join(SEASON);
    fs::create_dir_all(&dir).unwrap();
    let encoders: Vec<_> = EPISODES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let seed = 9 + i;
            Command::new("ffmpeg")
                .args(["-nostdin", "-loglevel", "error", "-f", "lavfi", "-i"])
                .arg("testsrc=size=640x360:rate=25")
                .args(["-f", "lavfi", "-i"])
                .arg(format!("sine=frequency={}", 200 + 100 * seed))
                .args(["-t", "6", "-vf"])
                .arg(format!("noise=alls=40:allf=t:all_seed={seed}"))
                .args(["-c:v", "mpeg4", "-b:v", "5M", "-c:a", "aac", "-shortest"])
                .arg(dir.join(name))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run ffmpeg")
        })
        .collect();
    for (enc, name) in encoders.into_iter().zip(EPISODES) {
        let out = enc.wait_with_output().expect("wait for ffmpeg");
        assert!(
            out.status.success(),
            "ffmpeg could not make {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let size = fs::metadata(dir.join(name)).unwrap().len();
        assert!(
            size > 3 << 20,
            "{name} is {size} bytes; playback must cross promote_after=1M well"
        );
    }
    for i in 0..EPISODES.len() {
        fs::write(
            src.join(subtitles(i)),
            format!("1\n00:00:01,000 --> 00:00:04,000\nEpisode {}\n", 9 + i),
        )
        .unwrap();
    }
    fs::write(
        src.join(NFO),
        "<episodedetails><title>Nine</title><season>1</season><episode>9</episode></episodedetails>\n",
    )
    .unwrap();
}

fn mount() -> TestMount {
    TestMount::builder()
        .option("promote_after=1M")
        .populate(show)
        .start()
}

fn copy_path(m: &TestMount, rel: &str) -> PathBuf {
    m.cache.join("data").join(rel)
}

fn hash(p: &Path) -> u64 {
    digest(&fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
}

/// Waits until every file handle the daemon holds is released: the kernel sends a
/// RELEASE only after the last read of that open file (readahead included) is answered,
/// so from then on every read the callers made has been counted by the policy, and any
/// promotion it decided on is queued, in flight or done.
fn wait_all_released(m: &TestMount) {
    eventually("every open through the mount to be released", m, || {
        num(&status(m), "fds_pinned") == 0
    });
}

/// Asserts no promotion is queued, in flight, done or failed, and no copy exists.
fn assert_nothing_promoted(m: &TestMount, after: &str) {
    let s = status(m);
    for key in [
        "promotions_done",
        "promotions_failed",
        "queued",
        "cached_files",
    ] {
        assert_eq!(num(&s, key), 0, "{key} after {after}: {s}");
    }
    assert!(
        s["in_flight"].as_array().is_some_and(|a| a.is_empty()),
        "copies in flight after {after}: {s}"
    );
    for i in 0..EPISODES.len() {
        for rel in [episode(i), subtitles(i)] {
            assert!(
                !copy_path(m, &rel).exists(),
                "{rel} was copied after {after}"
            );
        }
    }
}

/// A Jellyfin library scan through the mount: per episode, the media-info probe (its
/// ffprobe command) and the keyframe extraction (ffprobe listing every video packet: the
/// whole file, past promote_after), and the `.nfo` read whole. ffprobe is on the default
/// `promote_ignore`, so none of it promotes anything, and nothing is prefetched.
#[test]
fn an_ffprobe_scan_promotes_nothing() {
    require_mount!();
    if !have_ffmpeg() {
        return;
    }
    let m = mount();

    // The episodes are probed in parallel, as a scan's tasks do.
    std::thread::scope(|scope| {
        for i in 0..EPISODES.len() {
            let (rel, ep) = (episode(i), m.path(episode(i)));
            scope.spawn(move || {
                assert_eq!(probe_info(&ep), ["mpeg4", "aac"], "streams of {rel}");
                // 6 s at 25 frames a second: every packet of the file was read.
                assert_eq!(probe_keyframes(&ep), 150, "video packets of {rel}");
            });
        }
    });
    assert_eq!(
        fs::read(m.path(NFO)).unwrap(),
        fs::read(m.src(NFO)).unwrap()
    );

    wait_all_released(&m);
    let s = status(&m);
    // Every file was opened through the mount (6 probes, the .nfo).
    assert!(num(&s, "misses") >= 7, "{s}");
    assert_nothing_promoted(&m, "an ffprobe scan");
}

/// A player (ffmpeg reading at the playback rate) plays E09 through the mount: it
/// crosses promote_after, so E09 is copied and E10 (the next of its directory, same
/// extension) prefetched, whole and with SOURCE's bytes, each with its subtitles (and
/// E09 with its `.nfo`: issue 18, sidecars travel with their media); E11 and its
/// subtitles are not. Playing E09 again is served from the copy (a hit), with the same
/// frames and bytes.
#[test]
fn ffmpeg_playback_of_an_episode_promotes_it_and_the_next() {
    require_mount!();
    if !have_ffmpeg() {
        return;
    }
    let m = mount();
    let (e09, e10, e11) = (episode(0), episode(1), episode(2));
    // What E09 decodes to from SOURCE itself, found while the player plays it.
    let (decoded, first) = std::thread::scope(|s| {
        let reference = s.spawn(|| play(&m.src(&e09), false));
        let first = play(&m.path(&e09), true);
        (reference.join().expect("decode E09 from SOURCE"), first)
    });
    assert_eq!(first, decoded, "first playback of E09");
    eventually("E09 and E10 to be cached with their sidecars", &m, || {
        let s = status(&m);
        num(&s, "cached_files") >= 5
            && num(&s, "queued") == 0
            && s["in_flight"].as_array().is_some_and(|a| a.is_empty())
    });
    for rel in [&e09, &subtitles(0), NFO, &e10, &subtitles(1)] {
        assert!(copy_path(&m, rel).exists(), "no copy of {rel}");
        assert_eq!(
            hash(&copy_path(&m, rel)),
            hash(&m.src(rel)),
            "the copy of {rel} differs from SOURCE"
        );
    }
    let s = status(&m);
    assert_eq!(num(&s, "cached_files"), 5, "{s}");
    assert_eq!(num(&s, "promotions_done"), 5, "{s}");
    assert_eq!(num(&s, "promotions_failed"), 0, "{s}");
    assert!(!copy_path(&m, &e11).exists(), "E11 was prefetched too");
    assert!(
        !copy_path(&m, &subtitles(2)).exists(),
        "E11's subtitles were copied"
    );

    // The second playback and a plain read are served from the copy.
    let hits = num(&s, "hits");
    assert_eq!(
        play(&m.path(&e09), false),
        decoded,
        "second playback of E09"
    );
    let after_play = num(&status(&m), "hits");
    assert!(after_play > hits, "the second playback missed the cache");
    let cat = run(Command::new("cat").arg(m.path(&e09)));
    assert_eq!(digest(&cat.stdout), hash(&m.src(&e09)), "cat of E09");
    assert!(
        num(&status(&m), "hits") > after_play,
        "cat of E09 missed the cache"
    );
}
