//! What a person sees of the control commands: `cachefs status` as text, the progress
//! lines of `promote --wait`, and the one-line summary of each command's result.
//!
//! Pure functions from the protocol's types to strings; the runner prints them.

use std::path::Path;

use super::proto::{Cmd, Evicted, Failure, Pinned, Progress, Promoted, Status, Unpinned};

/// One line per progress report: `Show/S01E02.mkv 45% (330 MiB / 700 MiB)`.
pub fn progress_line(p: &Progress) -> String {
    let (done, total) = (p.bytes_done, p.bytes_total);
    let pct = if total == 0 {
        100
    } else {
        (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
    };
    format!(
        "{} {pct}% ({} / {})",
        p.path,
        fmt_bytes(done),
        fmt_bytes(total)
    )
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

/// `cachefs status` without `--json`.
pub fn status_text(s: &Status) -> String {
    let mut out = format!(
        "cachefs mounted at {} (daemon pid {})\n",
        s.mountpoint, s.pid
    );
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<12}{value}\n"));

    line("source", s.source.clone());
    line("cache", s.cache.clone());
    line(
        "passthrough",
        if s.passthrough { "on" } else { "off" }.into(),
    );
    line(
        "cached",
        format!(
            "{} files, {} ({} pinned)",
            s.cached_files,
            fmt_bytes(s.cached_bytes),
            s.pinned_files
        ),
    );
    line(
        "limits",
        format!(
            "max size {}, min free {}",
            fmt_bytes(s.max_size),
            fmt_bytes(s.min_free)
        ),
    );
    let (h, m) = (u128::from(s.hits), u128::from(s.misses));
    let pct = (h * 100).checked_div(h + m).unwrap_or(0);
    line("opens", format!("{h} hits, {m} misses ({pct}% from cache)"));
    line(
        "promotions",
        format!(
            "{} done, {} failed, {} queued",
            s.promotions_done, s.promotions_failed, s.queued
        ),
    );
    line("evictions", s.evictions.to_string());
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
    if !s.in_flight.is_empty() {
        out.push_str("  in flight:\n");
        for p in &s.in_flight {
            out.push_str(&format!("    {}\n", progress_line(p)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_output() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(330 << 20), "330 MiB");
        assert_eq!(fmt_bytes(500 << 30), "500 GiB");
        let p = |path: &str, bytes_done, bytes_total| Progress {
            bytes_done,
            bytes_total,
            path: path.into(),
        };
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

        let s = Status {
            mountpoint: "/mnt/media".into(),
            source: "/mnt/hdd".into(),
            cache: "/ssd".into(),
            pid: 9,
            passthrough: true,
            cache_usable: true,
            cached_files: 2,
            cached_bytes: 2048,
            pinned_files: 1,
            max_size: 1 << 30,
            meta_hits: 0,
            meta_misses: 0,
            meta_nodes: 0,
            meta_ttl: 0,
            min_free: 10 << 30,
            hits: 3,
            misses: 1,
            promotions_done: 2,
            promotions_failed: 0,
            queued: 1,
            evictions: 0,
            in_flight: vec![p("a", 0, 10)],
            inodes: 7,
            inode_handles: true,
            fd_limit: 1024,
            fds_bound: 480,
            fds_cached: 3,
            fds_pinned: 1,
            fds_reopened: 0,
            fds_shed: 0,
        };
        let t = status_text(&s);
        assert_eq!(
            t,
            "cachefs mounted at /mnt/media (daemon pid 9)\n\
             \x20 source      /mnt/hdd\n\
             \x20 cache       /ssd\n\
             \x20 passthrough on\n\
             \x20 cached      2 files, 2.0 KiB (1 pinned)\n\
             \x20 limits      max size 1.0 GiB, min free 10 GiB\n\
             \x20 opens       3 hits, 1 misses (75% from cache)\n\
             \x20 promotions  2 done, 0 failed, 1 queued\n\
             \x20 evictions   0\n\
             \x20 inodes      7 known to the kernel (reopened by file handle)\n\
             \x20 descriptors 3 cached of 480, 1 held by open files (limit 1024)\n\
             \x20 in flight:\n\
             \x20   a 0% (0 B / 10 B)\n"
        );
    }
}
