//! In-process benchmark of the cache index (no FUSE): inserting, touching, picking
//! eviction victims, and encoding/decoding the index file for 100,000 copies, with the
//! memory each entry costs. `cargo bench --bench index`; under `cargo test` it runs one
//! small pass as a smoke test. The whole-daemon figures (startup to a live mount, RSS)
//! come from scripts/bench-index.sh.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cachefs::cache::index::{Entries, Meta};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn path(i: usize) -> PathBuf {
    PathBuf::from(format!(
        "Show {:03}/Season {:02}/Show {:03} - S{:02}E{:03}.mkv",
        i / 1000,
        (i / 100) % 10,
        i / 1000,
        (i / 100) % 10,
        i % 100
    ))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 100_000 } else { 2_000 };
    let paths: Vec<PathBuf> = (0..n).map(path).collect();
    let path_bytes: usize = paths.iter().map(|p| p.as_os_str().len()).sum();

    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut e = Entries::default();
    for (i, p) in paths.iter().enumerate() {
        e.insert(
            p.clone(),
            Meta {
                size: 1 << 30,
                last_open: i as u64,
                pinned: i % 100 == 0,
            },
        );
    }
    let insert = t.elapsed();
    let rss1 = rss_bytes();

    let t = Instant::now();
    for p in paths.iter().step_by(7) {
        e.touch(p, u64::MAX);
    }
    let touch = t.elapsed();

    let t = Instant::now();
    let victim = e.victim();
    let victim_time = t.elapsed();

    let t = Instant::now();
    let data = e.encode();
    let encode = t.elapsed();
    let t = Instant::now();
    let back = Entries::decode(&data).expect("the encoded index decodes");
    let decode = t.elapsed();
    assert_eq!(back.len(), n as u64);
    assert_eq!(back.victim(), victim);
    assert!(back.get(Path::new(&paths[1])).is_some());

    let per_entry = (rss1.saturating_sub(rss0)) as f64 / n as f64;
    let mean_path = path_bytes as f64 / n as f64;
    println!("| index, {n} entries (mean path {mean_path:.1} B) | value |");
    println!("| --- | --- |");
    println!("| insert all | {:.1} ms |", insert.as_secs_f64() * 1e3);
    println!("| touch every 7th | {:.1} ms |", touch.as_secs_f64() * 1e3);
    println!(
        "| pick the LRU victim | {:.3} ms |",
        victim_time.as_secs_f64() * 1e3
    );
    println!(
        "| encode / decode ({} bytes) | {:.1} / {:.1} ms |",
        data.len(),
        encode.as_secs_f64() * 1e3,
        decode.as_secs_f64() * 1e3
    );
    println!(
        "| RSS per entry / beyond the path | {per_entry:.0} B / {:.0} B |",
        per_entry - mean_path
    );
}
