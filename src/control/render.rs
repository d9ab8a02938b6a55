//! What a person sees of the control commands: `cachefs status` as text, the progress
//! lines of `promote --wait`, and the one-line summary of each command's result.
//!
//! Pure functions from the protocol's types to strings; the runner prints them.

use std::path::Path;
use std::time::Duration;

use super::proto::{Cmd, Evicted, Failure, Pinned, Progress, Promoted, Status, Unpinned};

/// One line per progress report: `Show/S01E02.mkv 45% (315 MiB / 700 MiB, 50 MiB/s,
/// ETA 8s)`; the rate and ETA once the copy has run a while.
pub fn progress_line(p: &Progress) -> String {
    let mut parts = vec![fmt_bytes(p.bytes_done) + " / " + &fmt_bytes(p.bytes_total)];
    if p.bytes_done < p.bytes_total
        && let Some((rate, eta)) = rate_eta(p)
    {
        parts.push(fmt_rate(rate));
        parts.push(format!("ETA {eta}"));
    }
    format!(
        "{} {}% ({})",
        p.path,
        percent(p.bytes_done, p.bytes_total),
        parts.join(", ")
    )
}

/// `part` of `whole` in whole percent, at most 100; 100 for an empty whole (nothing to do).
pub fn percent(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 100;
    }
    (u128::from(part.min(whole)) * 100 / u128::from(whole)) as u64
}

/// A bar of `width` cells, `[#####-----]`, filled by `part` of `whole`.
pub fn bar(part: u64, whole: u64, width: usize) -> String {
    let filled = if whole == 0 {
        width
    } else {
        (u128::from(part.min(whole)) * width as u128 / u128::from(whole)) as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// A copy's average rate since it started (bytes per second) and the time left at that
/// rate; `None` before it has run long enough to say.
fn rate_eta(p: &Progress) -> Option<(u64, String)> {
    if p.elapsed_ms < 100 {
        return None;
    }
    let rate = (u128::from(p.bytes_done) * 1000 / u128::from(p.elapsed_ms)) as u64;
    let left = p.bytes_total.saturating_sub(p.bytes_done);
    let eta = match left.checked_div(rate) {
        Some(secs) => fmt_duration(Duration::from_secs(secs)),
        None => "?".to_string(),
    };
    Some((rate, eta))
}

fn fmt_rate(bytes_per_sec: u64) -> String {
    format!("{}/s", fmt_bytes(bytes_per_sec))
}

/// `7s`, `3m05s`, `2h04m`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A command result's counts, in the order the summary names them, and its failures.
pub trait Summary {
    fn counts(&self) -> Vec<(&'static str, u64)>;
    fn failures(&self) -> &[Failure] {
        &[]
    }
}

impl Summary for Promoted {
    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("already cached", self.already_cached),
            ("files", self.files),
            ("queued", self.queued),
        ]
    }
    fn failures(&self) -> &[Failure] {
        &self.failed
    }
}

impl Summary for Pinned {
    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![("pinned", self.pinned), ("queued", self.queued)]
    }
}

impl Summary for Unpinned {
    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![("unpinned", self.unpinned)]
    }
}

impl Summary for Evicted {
    fn counts(&self) -> Vec<(&'static str, u64)> {
        vec![("evicted", self.evicted)]
    }
}

/// The one-line summary of a command's result, e.g. `pin /mnt/media: pinned 3, queued 2`.
pub fn summary(cmd: Cmd, mp: &Path, result: &impl Summary) -> String {
    let mut parts: Vec<String> = result
        .counts()
        .into_iter()
        .map(|(label, n)| format!("{label} {n}"))
        .collect();
    let failed = result.failures().len();
    if failed > 0 {
        parts.push(format!("failed {failed}"));
    }
    if parts.is_empty() {
        format!("{cmd} {}: done", mp.display())
    } else {
        format!("{cmd} {}: {}", mp.display(), parts.join(", "))
    }
}

/// What to say about one file that failed: `promote /mnt/media/a.mkv: EIO`.
pub fn failure_line(cmd: Cmd, mp: &Path, f: &Failure) -> String {
    format!("{cmd} {}: {}", mp.join(&f.path).display(), f.error)
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `330 MiB`.
/// A unix time as UTC, and how long ago: "2026-12-07 18:54:02 UTC (12 s ago)".
pub fn fmt_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m, sec) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{sec:02} UTC ({} ago)",
        fmt_duration(Duration::from_secs(now.saturating_sub(secs)))
    )
}

pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if v < 9.95 {
        format!("{v:.1} {}", UNITS[i])
    } else {
        format!("{v:.0} {}", UNITS[i])
    }
}

/// Width of the bars in `cachefs status`.
const BAR: usize = 20;

/// How much the cache may hold now: `max_size`, or what `min_free` leaves of the cache
/// filesystem beside the copies, whichever is less; with the limit that binds. `None`
/// when neither is known.
fn allowed(s: &Status) -> Option<(u64, &'static str)> {
    let room =
        (s.cache_fs_size > 0).then(|| s.cached_bytes + s.cache_fs_avail.saturating_sub(s.min_free));
    match (s.max_size, room) {
        (0, None) => None,
        (0, Some(room)) => Some((room, "min free")),
        (max, Some(room)) if room < max => Some((room, "min free")),
        (max, _) => Some((max, "max size")),
    }
}

/// `cachefs status` without `--json`: what a person needs at a glance first (degraded
/// mode, how full, how well it hits, what is copying), the details after.
pub fn status_text(s: &Status) -> String {
    let mut out = format!(
        "cachefs mounted at {} (daemon pid {})\n",
        s.mountpoint, s.pid
    );
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<12}{value}\n"));

    if !s.cache_usable {
        line(
            "DEGRADED",
            "the cache is unusable: everything is served from SOURCE (see the daemon's log)".into(),
        );
    }
    line("source", s.source.clone());
    line("cache", s.cache.clone());
    line(
        "passthrough",
        if s.passthrough { "on" } else { "off" }.into(),
    );
    if let Some((allowed, by)) = allowed(s) {
        line(
            "cache use",
            format!(
                "{} {:>3}% of {} allowed by {by}",
                bar(s.cached_bytes, allowed, BAR),
                percent(s.cached_bytes, allowed),
                fmt_bytes(allowed)
            ),
        );
    }
    line(
        "cached",
        format!(
            "{} files, {} ({} pinned)",
            s.cached_files,
            fmt_bytes(s.cached_bytes),
            s.pinned_files
        ),
    );
    let max = match s.max_size {
        0 => "none".to_string(),
        n => fmt_bytes(n),
    };
    let free = match s.cache_fs_size {
        0 => String::new(),
        _ => format!(" ({} free now)", fmt_bytes(s.cache_fs_avail)),
    };
    line(
        "limits",
        format!("max size {max}, min free {}{free}", fmt_bytes(s.min_free)),
    );
    let opens = s.hits + s.misses;
    let from_cache = s.cache_read_bytes + s.passthrough_bytes;
    let bytes = from_cache + s.source_read_bytes;
    line(
        "hit ratio",
        match (opens, bytes) {
            (0, _) => "no opens yet".into(),
            (_, 0) => format!("{}% by opens", percent(s.hits, opens)),
            _ => format!(
                "{}% by opens, {}% by bytes",
                percent(s.hits, opens),
                percent(from_cache, bytes)
            ),
        },
    );
    line(
        "opens",
        format!(
            "{} from cache ({} by passthrough), {} from source",
            s.hits, s.passthrough_opens, s.misses
        ),
    );
    line(
        "bytes",
        format!(
            "{} from cache ({} of it offered by passthrough), {} from source",
            fmt_bytes(from_cache),
            fmt_bytes(s.passthrough_bytes),
            fmt_bytes(s.source_read_bytes)
        ),
    );
    line(
        "promotions",
        format!(
            "{} done ({}), {} failed, {} queued, {} copying",
            s.promotions_done,
            fmt_bytes(s.promoted_bytes),
            s.promotions_failed,
            s.queued,
            s.in_flight.len()
        ),
    );
    line("evictions", s.evictions.to_string());
    line(
        "source use",
        format!(
            "{} lookups, {} read for callers, {} by the promoter",
            s.source_lookups,
            fmt_bytes(s.source_read_bytes),
            fmt_bytes(s.promoter_read_bytes)
        ),
    );
    let requests: u64 = s.source_ops.values().sum();
    let busiest: Vec<String> = {
        let mut ops: Vec<(&String, &u64)> = s.source_ops.iter().filter(|(_, n)| **n > 0).collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        ops.iter()
            .take(4)
            .map(|(op, n)| format!("{n} {op}"))
            .collect()
    };
    let state = if s.source_answering {
        "answering".to_string()
    } else {
        format!("NOT ANSWERING since {}", fmt_unix(s.source_stalled_since))
    };
    line(
        "source now",
        format!(
            "{state}; {requests} requests needed it{}{}",
            if busiest.is_empty() {
                String::new()
            } else {
                format!(" ({})", busiest.join(", "))
            },
            if s.source_in_flight + s.source_waiting > 0 {
                format!(
                    "; {} in flight, {} waiting",
                    s.source_in_flight, s.source_waiting
                )
            } else {
                String::new()
            }
        ),
    );
    if s.meta_ttl > 0 {
        line(
            "metadata",
            format!(
                "{} answered from memory, {} not, {} objects (meta_ttl {} s)",
                s.meta_hits, s.meta_misses, s.meta_nodes, s.meta_ttl
            ),
        );
    }
    let how = if s.inode_handles {
        "reopened by file handle"
    } else {
        "reopened by parent and name"
    };
    line(
        "inodes",
        format!("{} known to the kernel ({how})", s.inodes),
    );
    line(
        "descriptors",
        format!(
            "{} cached of {}, {} held by open files (limit {})",
            s.fds_cached, s.fds_bound, s.fds_pinned, s.fd_limit
        ),
    );
    if !s.metrics.is_empty() {
        line("metrics", format!("http://{}/metrics", s.metrics));
    } else if !s.metrics_error.is_empty() {
        line("metrics", format!("not served: {}", s.metrics_error));
    }
    if !s.in_flight.is_empty() {
        out.push_str("  copying now:\n");
        for p in &s.in_flight {
            let mut l = format!(
                "    {} {:>3}% {} / {}",
                bar(p.bytes_done, p.bytes_total, BAR),
                percent(p.bytes_done, p.bytes_total),
                fmt_bytes(p.bytes_done),
                fmt_bytes(p.bytes_total)
            );
            if let Some((rate, eta)) = rate_eta(p) {
                l.push_str(&format!(", {}, ETA {eta}", fmt_rate(rate)));
            }
            out.push_str(&format!("{l}  {}\n", p.path));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn p(path: &str, bytes_done: u64, bytes_total: u64) -> Progress {
        Progress {
            bytes_done,
            bytes_total,
            elapsed_ms: 0,
            path: path.into(),
        }
    }

    #[test]
    fn text_output() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(330 << 20), "330 MiB");
        assert_eq!(fmt_bytes(500 << 30), "500 GiB");
        assert_eq!(
            progress_line(&p("Show/S01E02.mkv", 315 << 20, 700 << 20)),
            "Show/S01E02.mkv 45% (315 MiB / 700 MiB)"
        );
        assert_eq!(progress_line(&p("empty", 0, 0)), "empty 100% (0 B / 0 B)");
        assert_eq!(progress_line(&p("over", 20, 10)), "over 100% (20 B / 10 B)");

        let gone = |path: &str| Failure {
            error: "gone".into(),
            path: path.into(),
        };
        let r = Promoted {
            already_cached: 1,
            failed: vec![gone("b"), gone("c")],
            files: 5,
            queued: 2,
        };
        let mp = Path::new("/m");
        assert_eq!(
            summary(Cmd::Promote, mp, &r),
            "promote /m: already cached 1, files 5, queued 2, failed 2"
        );
        assert_eq!(
            failure_line(Cmd::Promote, mp, &r.failed[0]),
            "promote /m/b: gone"
        );
        let ok = Promoted {
            failed: Vec::new(),
            ..r
        };
        assert_eq!(
            summary(Cmd::Promote, mp, &ok),
            "promote /m: already cached 1, files 5, queued 2"
        );
        assert_eq!(
            summary(
                Cmd::Pin,
                mp,
                &Pinned {
                    pinned: 3,
                    queued: 2
                }
            ),
            "pin /m: pinned 3, queued 2"
        );
        assert_eq!(
            summary(Cmd::Unpin, mp, &Unpinned { unpinned: 0 }),
            "unpin /m: unpinned 0"
        );
        assert_eq!(
            summary(Cmd::Evict, mp, &Evicted { evicted: 4 }),
            "evict /m: evicted 4"
        );

        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(5, 0), 100);
        assert_eq!(bar(1, 4, 8), "[##------]");
        assert_eq!(bar(9, 4, 4), "[####]");
        assert_eq!(bar(0, 0, 4), "[####]");
        assert_eq!(fmt_duration(Duration::from_secs(7)), "7s");
        assert_eq!(fmt_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(fmt_duration(Duration::from_secs(7440)), "2h04m");
        for (elapsed_ms, progress, want) in [
            // 315 MiB in 6.3 s: 50 MiB/s, 385 MiB left.
            (
                6300,
                p("Show/S01E02.mkv", 315 << 20, 700 << 20),
                "Show/S01E02.mkv 45% (315 MiB / 700 MiB, 50 MiB/s, ETA 7s)",
            ),
            (5000, p("slow", 0, 10), "slow 0% (0 B / 10 B, 0 B/s, ETA ?)"),
            (5000, p("done", 10, 10), "done 100% (10 B / 10 B)"),
            // Too soon to tell a rate.
            (50, p("young", 1, 10), "young 10% (1 B / 10 B)"),
        ] {
            let timed = Progress {
                elapsed_ms,
                ..progress
            };
            assert_eq!(progress_line(&timed), want);
        }
    }

    /// A busy mount with a max_size, passthrough, the metadata cache and two copies.
    pub(crate) fn busy() -> Status {
        Status {
            mountpoint: "/mnt/media".into(),
            source: "/mnt/hdd".into(),
            cache: "/ssd".into(),
            pid: 9,
            passthrough: true,
            cache_usable: true,
            cached_files: 12,
            cached_bytes: 2 << 30,
            pinned_files: 1,
            max_size: 8 << 30,
            min_free: 10 << 30,
            cache_fs_avail: 40 << 30,
            cache_fs_size: 100 << 30,
            hits: 3,
            misses: 1,
            passthrough_opens: 2,
            passthrough_bytes: 3 << 30,
            cache_read_bytes: 1 << 30,
            source_read_bytes: 1 << 30,
            promotions_done: 2,
            promotions_failed: 0,
            promoted_bytes: 1536 << 20,
            promoter_read_bytes: 1600 << 20,
            queued: 1,
            evictions: 0,
            source_lookups: 120,
            source_answering: true,
            source_ops: [("lookup".to_string(), 120), ("read".to_string(), 8)].into(),
            meta_hits: 40,
            meta_misses: 9,
            meta_nodes: 300,
            meta_ttl: 60,
            in_flight: vec![
                Progress {
                    elapsed_ms: 6300,
                    ..p("Show/S01E02.mkv", 315 << 20, 700 << 20)
                },
                p("Show/S01E03.mkv", 0, 650 << 20),
            ],
            inodes: 7,
            inode_handles: true,
            fd_limit: 1024,
            fds_bound: 480,
            fds_cached: 3,
            fds_pinned: 1,
            metrics: "127.0.0.1:9100".into(),
            ..Status::default()
        }
    }

    #[test]
    fn unix_times_read_as_utc_dates() {
        assert!(fmt_unix(0).starts_with("1970-01-01 00:00:00 UTC"));
        assert!(fmt_unix(951_782_400).starts_with("2000-02-29 00:00:00 UTC"));
        assert!(fmt_unix(1_796_666_042).starts_with("2026-12-07 17:54:02 UTC"));
    }

    #[test]
    fn status_at_a_glance() {
        assert_eq!(
            status_text(&busy()),
            "cachefs mounted at /mnt/media (daemon pid 9)\n\
             \x20 source      /mnt/hdd\n\
             \x20 cache       /ssd\n\
             \x20 passthrough on\n\
             \x20 cache use   [#####---------------]  25% of 8.0 GiB allowed by max size\n\
             \x20 cached      12 files, 2.0 GiB (1 pinned)\n\
             \x20 limits      max size 8.0 GiB, min free 10 GiB (40 GiB free now)\n\
             \x20 hit ratio   75% by opens, 80% by bytes\n\
             \x20 opens       3 from cache (2 by passthrough), 1 from source\n\
             \x20 bytes       4.0 GiB from cache (3.0 GiB of it offered by passthrough), 1.0 GiB from source\n\
             \x20 promotions  2 done (1.5 GiB), 0 failed, 1 queued, 2 copying\n\
             \x20 evictions   0\n\
             \x20 source use  120 lookups, 1.0 GiB read for callers, 1.6 GiB by the promoter\n\
     \x20 source now  answering; 128 requests needed it (120 lookup, 8 read)\n\
             \x20 metadata    40 answered from memory, 9 not, 300 objects (meta_ttl 60 s)\n\
             \x20 inodes      7 known to the kernel (reopened by file handle)\n\
             \x20 descriptors 3 cached of 480, 1 held by open files (limit 1024)\n\
             \x20 metrics     http://127.0.0.1:9100/metrics\n\
             \x20 copying now:\n\
             \x20   [#########-----------]  45% 315 MiB / 700 MiB, 50 MiB/s, ETA 7s  Show/S01E02.mkv\n\
             \x20   [--------------------]   0% 0 B / 650 MiB  Show/S01E03.mkv\n"
        );
    }

    #[test]
    fn status_without_limit_degraded() {
        // No max_size: the room min_free leaves is the limit; a mount whose cache failed.
        let s = Status {
            max_size: 0,
            cache_usable: false,
            passthrough: false,
            hits: 0,
            misses: 0,
            passthrough_opens: 0,
            passthrough_bytes: 0,
            cache_read_bytes: 0,
            source_read_bytes: 0,
            meta_ttl: 0,
            in_flight: Vec::new(),
            metrics: String::new(),
            metrics_error: "cannot listen on 127.0.0.1:9100: Address in use".into(),
            ..busy()
        };
        let t = status_text(&s);
        let want = "cachefs mounted at /mnt/media (daemon pid 9)\n\
             \x20 DEGRADED    the cache is unusable: everything is served from SOURCE (see the daemon's log)\n\
             \x20 source      /mnt/hdd\n\
             \x20 cache       /ssd\n\
             \x20 passthrough off\n\
             \x20 cache use   [#-------------------]   6% of 32 GiB allowed by min free\n\
             \x20 cached      12 files, 2.0 GiB (1 pinned)\n\
             \x20 limits      max size none, min free 10 GiB (40 GiB free now)\n\
             \x20 hit ratio   no opens yet\n";
        assert!(t.starts_with(want), "{t}");
        assert!(
            t.ends_with(
                "  metrics     not served: cannot listen on 127.0.0.1:9100: Address in use\n"
            ),
            "{t}"
        );
        assert!(!t.contains("metadata") && !t.contains("copying now"), "{t}");

        // Nothing known of the filesystem and no max_size: no bar, and no "max size 0 B".
        let unknown = Status {
            cache_fs_size: 0,
            cache_fs_avail: 0,
            ..s
        };
        let t = status_text(&unknown);
        assert!(!t.contains("cache use") && !t.contains("0 B,"), "{t}");
        assert!(
            t.contains("  limits      max size none, min free 10 GiB\n"),
            "{t}"
        );
    }
}
