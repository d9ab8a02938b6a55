//! What to promote, decided without I/O.
//!
//! With `promote=auto` a file is promoted once one open has read `promote_after` bytes of it
//! (playback does, a library scanner reading headers does not), or, for a file smaller than
//! that, all of it (an album being played: each track is smaller than the threshold), see
//! [`promote_threshold`]. Reads by the processes of the ignore list ([`IgnoreList`],
//! `promote_ignore`) never count: media servers' scanners and analyzers read whole files
//! (thumbnails, intro and credit detection, loudness), and counting them would copy the
//! whole library during maintenance. The next `prefetch` files of the promoted file's
//! directory with the same extension, in natural name order ("E2" after "E1", "E10" after
//! "E9"), are queued behind it. A media file's sidecars (its subtitles and `.nfo`,
//! [`sidecar`]) come with it whatever their size, and are never "next files" themselves.

pub mod sidecar;

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Smallest file the whole-file rule promotes. Below it are the sidecar files (`.nfo`,
/// `.srt`, posters) that media servers read whole at every scan from the same process that
/// streams playback, so they cannot be ignored by name; copying every one of them would
/// fill the index with a library's worth of files no player waits for. (A media file's own
/// [`sidecar`]s are exempt: they are copied with it, whatever their size.)
pub const WHOLE_FILE_MIN: u64 = 1 << 20;

/// Bytes one open must read from SOURCE before its file, of `size` bytes when it was
/// opened, is promoted: `promote_after`, or the whole file when it is smaller than that
/// (and not smaller than [`WHOLE_FILE_MIN`]).
pub fn promote_threshold(size: u64, promote_after: u64) -> u64 {
    if (WHOLE_FILE_MIN..promote_after).contains(&size) {
        size
    } else {
        promote_after
    }
}

/// What `/proc/PID/comm` keeps of a name: the kernel's TASK_COMM_LEN (16) less its NUL.
pub const COMM_LEN: usize = 15;

/// The default `promote_ignore`: processes that read media files for a library, never for
/// someone watching or listening. Matched as `/proc/PID/comm` shows them, so the full
/// names here stand for their first 15 bytes ("Plex Media Scan"). Deliberately absent:
/// "Plex Transcoder" and Jellyfin's or Emby's "ffmpeg" (they transcode playback; their
/// analysis runs are ignored only when a listed process started them), and the servers
/// themselves, "Plex Media Server", "jellyfin" and "EmbyServer" (they stream direct play).
pub const DEFAULT_IGNORE: &[&str] = &[
    // Plex's scanner: library scans and every analysis job (media analysis, intro and
    // credit detection, voice activity, loudness, chapter thumbnails); the thumbnail and
    // detection transcodes it starts are its children.
    "Plex Media Scanner",
    // Plex's audio fingerprinting of music libraries.
    "Plex Media Fingerprinter",
    // Plex DVR's commercial detection (comskip) over recordings.
    "Plex Commercial Skipper",
    // The thread of Plex Media Server that runs scanner work in process.
    "PMS ScannerPipe",
    // Jellyfin's and Emby's prober: media info at every scan, keyframe extraction. Never
    // playback.
    "ffprobe",
    // The MediaInfo CLI, run by library managers to read media properties.
    "mediainfo",
];

/// Process names whose reads never count toward promotion (`promote_ignore`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreList {
    /// Each name as comm shows it: its first [`COMM_LEN`] bytes.
    names: Vec<Vec<u8>>,
}

impl IgnoreList {
    pub fn new<S: AsRef<str>>(names: &[S]) -> IgnoreList {
        IgnoreList {
            names: names
                .iter()
                .map(|n| {
                    let b = n.as_ref().as_bytes();
                    b[..b.len().min(COMM_LEN)].to_vec()
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The first of `comms` (names as `/proc/PID/comm` gives them) on the list.
    pub fn first_match<'a>(&self, comms: &[&'a [u8]]) -> Option<&'a [u8]> {
        comms
            .iter()
            .copied()
            .find(|c| self.names.iter().any(|n| n.as_slice() == *c))
    }
}

/// Parses a `promote_ignore` value: comma-separated names; empty turns the list off; a
/// leading `+` adds the names to [`DEFAULT_IGNORE`] instead of replacing it. Spaces around
/// a name are dropped (names may contain spaces: "Plex Media Scanner").
pub fn parse_ignore(v: &str) -> Result<Vec<String>, String> {
    let (mut names, rest) = match v.strip_prefix('+') {
        Some(rest) => (DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect(), rest),
        None => (Vec::new(), v),
    };
    for name in rest.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.starts_with('/') {
            return Err(format!(
                "'{name}' is a path: write the process name as /proc/PID/comm shows it \
                 (the file's name, e.g. '{}')",
                name.rsplit('/').next().unwrap_or(name)
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Compares names the way people read them: runs of digits by value, the rest
/// case-insensitively.
pub fn natural_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na = trim_zeros(&a[si..i]);
            let nb = trim_zeros(&b[sj..j]);
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            let ord = a[i].to_ascii_lowercase().cmp(&b[j].to_ascii_lowercase());
            if ord != Ordering::Equal {
                return ord;
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let k = d.iter().position(|&c| c != b'0').unwrap_or(d.len());
    &d[k..]
}

fn extension(name: &[u8]) -> Option<Vec<u8>> {
    let dot = name.iter().rposition(|&c| c == b'.')?;
    (dot > 0).then(|| name[dot + 1..].to_ascii_lowercase())
}

/// The `n` names that come after `current` among `siblings` (regular files of the same
/// directory), in natural order, with the same extension as `current`. A sidecar has no
/// next files: sidecars come with their media file, not after one another.
pub fn next_files<'a>(current: &OsStr, siblings: &'a [&'a OsStr], n: usize) -> Vec<&'a OsStr> {
    if sidecar::is_sidecar(current) {
        return Vec::new();
    }
    let cur = current.as_bytes();
    let ext = extension(cur);
    let mut after: Vec<&OsStr> = siblings
        .iter()
        .copied()
        .filter(|s| extension(s.as_bytes()) == ext)
        .filter(|s| natural_cmp(s.as_bytes(), cur) == Ordering::Greater)
        .collect();
    after.sort_by(|a, b| natural_cmp(a.as_bytes(), b.as_bytes()));
    after.truncate(n);
    after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<&str> = names.to_vec();
        v.sort_by(|a, b| natural_cmp(a.as_bytes(), b.as_bytes()));
        v.into_iter().map(String::from).collect()
    }

    #[test]
    fn natural_order() {
        assert_eq!(
            sorted(&["E10.mkv", "E9.mkv", "E1.mkv", "e2.mkv"]),
            ["E1.mkv", "e2.mkv", "E9.mkv", "E10.mkv"]
        );
        assert_eq!(
            sorted(&["Episode 10", "Episode 2", "Episode 1"]),
            ["Episode 1", "Episode 2", "Episode 10"]
        );
        assert_eq!(
            sorted(&["S01E02", "S01E01", "S02E01", "S01E10"]),
            ["S01E01", "S01E02", "S01E10", "S02E01"]
        );
        assert_eq!(natural_cmp(b"a007", b"a7"), Ordering::Less); // equal value: decided by bytes
        assert_eq!(natural_cmp(b"a", b"a1"), Ordering::Less);
        assert_eq!(
            natural_cmp(b"x99999999999999999999999", b"x100000000000000000000000"),
            Ordering::Less
        );
    }

    #[test]
    fn next_files_same_extension() {
        let names = [
            "E1.mkv", "E1.nfo", "E2.mkv", "E10.mkv", "E3.mkv", "E2.srt", "E9.MKV",
        ];
        let sib: Vec<&OsStr> = names.iter().map(OsStr::new).collect();
        let next = next_files(OsStr::new("E2.mkv"), &sib, 3);
        assert_eq!(next, ["E3.mkv", "E9.MKV", "E10.mkv"].map(OsStr::new));
        assert!(next_files(OsStr::new("E10.mkv"), &sib, 2).is_empty());
        assert_eq!(next_files(OsStr::new("E1.mkv"), &sib, 0).len(), 0);
        // A sidecar read on its own queues no other sidecars.
        let subs = ["E1.srt", "E2.srt", "E3.srt"].map(OsStr::new);
        assert!(next_files(OsStr::new("E1.srt"), &subs, 2).is_empty());
    }

    #[test]
    fn thresholds() {
        const M: u64 = 1 << 20;
        let table: &[(u64, u64, u64)] = &[
            // (size, promote_after, threshold)
            (3 * M, 16 * M, 3 * M),         // a track: all of it
            (16 * M, 16 * M, 16 * M),       // as large as the threshold
            (4 * 1024 * M, 16 * M, 16 * M), // a film
            (M, 16 * M, M),                 // the smallest file read whole
            (M - 1, 16 * M, 16 * M),        // a sidecar file: never by reading it whole
            (0, 16 * M, 16 * M),
            (3 * M, 0, 0), // promote_after=0: the first read
            (0, 0, 0),
            (3 * M, 2 * M, 2 * M),
        ];
        for &(size, after, want) in table {
            assert_eq!(promote_threshold(size, after), want, "{size} {after}");
        }
    }

    #[test]
    fn ignore_list_matches_comm_names() {
        let list = IgnoreList::new(DEFAULT_IGNORE);
        // comm keeps 15 bytes: the full names match what the kernel shows.
        assert_eq!(
            list.first_match(&[b"Plex Media Scan"]),
            Some(&b"Plex Media Scan"[..])
        );
        assert!(list.first_match(&[b"Plex Media Fing"]).is_some());
        assert!(list.first_match(&[b"Plex Commercial"]).is_some());
        assert!(list.first_match(&[b"ffprobe"]).is_some());
        // Playback is never ignored.
        for playing in [
            &b"Plex Transcoder"[..],
            b"Plex Media Serv",
            b"ffmpeg",
            b"jellyfin",
            b"EmbyServer",
            b"mpv",
        ] {
            assert_eq!(list.first_match(&[playing]), None, "{playing:?}");
        }
        // Exact names, not prefixes: "ffprobe" does not match "ffprobe2".
        assert_eq!(list.first_match(&[b"ffprobe2", b"ffprob"]), None);
        // The first of several names that matches: thread, process, then ancestors.
        assert_eq!(
            list.first_match(&[b"worker", b"Plex Transcoder", b"Plex Media Scan"]),
            Some(&b"Plex Media Scan"[..])
        );
        assert!(IgnoreList::new::<&str>(&[]).is_empty());
        assert_eq!(
            IgnoreList::new::<&str>(&[]).first_match(&[b"ffprobe"]),
            None
        );
    }

    #[test]
    fn ignore_list_values() {
        let defaults: Vec<String> = DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect();
        let table: &[(&str, Vec<String>)] = &[
            ("", vec![]),
            (" , ", vec![]),
            ("ffprobe", vec!["ffprobe".into()]),
            (
                "Plex Media Scanner, ffprobe,,tdarr",
                vec![
                    "Plex Media Scanner".into(),
                    "ffprobe".into(),
                    "tdarr".into(),
                ],
            ),
            ("a,a", vec!["a".into()]),
            ("+", defaults.clone()),
            ("+ffmpeg", {
                let mut v = defaults.clone();
                v.push("ffmpeg".into());
                v
            }),
            ("+ffprobe", defaults.clone()),
        ];
        for (v, want) in table {
            assert_eq!(&parse_ignore(v).unwrap(), want, "{v:?}");
        }
        let err = parse_ignore("ffprobe,/usr/bin/ffmpeg").unwrap_err();
        assert!(err.contains("'/usr/bin/ffmpeg' is a path"), "{err}");
        assert!(err.contains("'ffmpeg'"), "{err}");
    }
}
