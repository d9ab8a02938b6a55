//! The model exerciser of the core tier: random opens (read-only, read-write, O_DIRECT,
//! through a cached dentry or a fresh lookup), reads, writes, truncates by path and by
//! handle, releases, explicit promotions and changes behind the mount, on a few files,
//! with the policy promoting in the background. Every read any handle makes is checked
//! against `model::Tree`, and every open against the kernel's io-mode rules
//! (`kernel::Kernel`). It runs with passthrough agreed and not, with inodes reopened by
//! file handle where the test may use them and by parent and name.
//!
//! The tier-one sibling of tests/integration/exerciser.rs, in milliseconds and as any
//! user; what it cannot see is what the kernel adds (page cache, mmap).

use std::path::PathBuf;

use crate::kernel::{Handle, Kernel};
use crate::model::{Rng, Tree, seen};
use crate::overlay::{Core, core};

const FILES: usize = 3;
const OPS: usize = 1000;
const MAX_LEN: usize = 512 << 10;

struct World<'a> {
    c: &'a Core,
    k: Kernel<'a>,
    model: Tree,
    handles: Vec<Vec<(Handle, bool)>>,
    log: Vec<String>,
    seed: u64,
}

fn name(i: usize) -> PathBuf {
    PathBuf::from(format!("f{i}.bin"))
}

impl World<'_> {
    fn fail(&self, what: &str) -> ! {
        let tail = self.log.len().saturating_sub(30);
        panic!(
            "{what} (seed {:#x}); kernel rules broken: {:?}; last operations:\n{}",
            self.seed,
            self.k.violations,
            self.log[tail..].join("\n")
        );
    }

    fn open(&mut self, rng: &mut Rng, i: usize, writable: bool) {
        let mut flags = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        if rng.below(8) == 0 {
            flags |= libc::O_DIRECT;
        }
        let cached = rng.below(2) == 0;
        self.k.refuse_next_backing = rng.below(10) == 0;
        let r = self.k.open_with(name(i), flags, cached);
        let h = r.unwrap_or_else(|e| self.fail(&format!("open f{i} flags {flags:#o}: {e}")));
        self.log.push(format!(
            "open f{i} flags {flags:#o} dentry {cached} -> fh {} node {:#x} passthrough {} keep_cache {}",
            h.fh,
            h.nodeid,
            h.backing.is_some(),
            h.keep_cache
        ));
        self.handles[i].push((h, writable));
    }

    fn writable(&self, i: usize) -> Option<usize> {
        self.handles[i].iter().position(|(_, w)| *w)
    }

    fn step(&mut self, rng: &mut Rng) {
        let i = rng.below(FILES);
        let len = self.model.len(name(i)).unwrap_or(0) as usize;
        match rng.below(100) {
            0..=29 => {
                if self.handles[i].is_empty() {
                    self.open(rng, i, false);
                }
                let d = rng.below(self.handles[i].len());
                let off = rng.below(len + 4096) as u64;
                let n = 1 + rng.below(200 << 10);
                let h = &self.handles[i][d].0;
                self.log
                    .push(format!("read f{i} fh {} off {off} len {n}", h.fh));
                let got = self.k.read(h, off, n);
                if let Err(e) = self.model.check_read(name(i), off, n, seen(&got)) {
                    self.fail(&e);
                }
            }
            30..=49 => {
                if self.writable(i).is_none() {
                    self.open(rng, i, true);
                }
                let d = self.writable(i).unwrap_or_else(|| self.fail("no writer"));
                let off = rng.below((len + 8192).min(MAX_LEN));
                let n = (1 + rng.below(64 << 10)).min(MAX_LEN - off);
                let data = rng.bytes(n);
                let h = &self.handles[i][d].0;
                self.log
                    .push(format!("write f{i} fh {} off {off} len {n}", h.fh));
                if let Err(e) = self.k.write(h, off as u64, &data) {
                    self.fail(&format!("write f{i}: {e}"));
                }
                self.model.write(name(i), off as u64, &data);
            }
            50..=57 => {
                let to = rng.below(MAX_LEN) as u64;
                let by_path = rng.below(2) == 0 || self.writable(i).is_none();
                self.log
                    .push(format!("truncate f{i} to {to} by_path={by_path}"));
                let r = match self.writable(i) {
                    Some(d) if !by_path => self.k.ftruncate(&self.handles[i][d].0, to),
                    _ => self.k.truncate(name(i), to),
                };
                if let Err(e) = r {
                    self.fail(&format!("truncate f{i}: {e}"));
                }
                self.model.truncate(name(i), to);
            }
            58..=72 => {
                if !self.handles[i].is_empty() && (self.handles[i].len() >= 4 || rng.below(2) == 0)
                {
                    let d = rng.below(self.handles[i].len());
                    let (h, _) = self.handles[i].remove(d);
                    self.log.push(format!("release f{i} fh {}", h.fh));
                    self.k.release(h);
                } else {
                    let w = rng.below(3) == 0;
                    self.open(rng, i, w);
                }
            }
            73..=84 => {
                self.open(rng, i, false);
                let (h, _) = self.handles[i]
                    .pop()
                    .unwrap_or_else(|| self.fail("no handle"));
                self.log.push(format!("read whole f{i} fh {}", h.fh));
                let got = self.k.read_all(&h);
                self.k.release(h);
                if let Err(e) = self.model.check_whole(name(i), seen(&got)) {
                    self.fail(&e);
                }
            }
            85..=91 => {
                self.log.push(format!("promote f{i}"));
                // Waited for, so that copies exist to be served; whatever comes of it (a
                // write may cancel it), readers must not notice.
                let job = self
                    .c
                    .cache()
                    .promote(&name(i), cachefs::cache::promoter::Priority::Explicit);
                let _ = job.wait(crate::common::DEADLINE);
            }
            92..=95 => {
                // Behind the mount, while nothing has the file open: readers holding it
                // would keep the bytes they had, which a plain directory would not do.
                if !self.handles[i].is_empty() {
                    return;
                }
                let n = rng.below(MAX_LEN);
                let data = rng.bytes(n);
                self.log.push(format!(
                    "change f{i} behind the mount: {} bytes",
                    data.len()
                ));
                std::fs::write(self.c.dirs.src(name(i)), &data)
                    .unwrap_or_else(|e| self.fail(&format!("writing SOURCE: {e}")));
                self.model.put(name(i), data);
            }
            _ => {
                self.log.push("compare SOURCE".into());
                if let Err(e) = self.model.check_dir(&self.c.dirs.src) {
                    self.fail(&format!("SOURCE: {e}"));
                }
            }
        }
    }
}

fn exercise(passthrough: bool, handles: bool, seed: u64) {
    let mut rng = Rng(seed);
    let files: Vec<(String, Vec<u8>)> = (0..FILES)
        .map(|i| {
            let n = 64 << 10 | rng.below(MAX_LEN);
            (name(i).to_string_lossy().into_owned(), rng.bytes(n))
        })
        .collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (c, model) = core(&files, passthrough, |cfg| {
        cfg.promote = cachefs::config::PromoteMode::Auto;
        cfg.promote_after = 64 << 10;
        cfg.inode_handles = handles;
    });
    let mut w = World {
        c: &c,
        k: c.kernel(),
        model,
        handles: (0..FILES).map(|_| Vec::new()).collect(),
        log: Vec::new(),
        seed,
    };
    for _ in 0..OPS {
        w.step(&mut rng);
    }
    for i in 0..FILES {
        for (h, _) in std::mem::take(&mut w.handles[i]) {
            w.k.release(h);
        }
        w.open(&mut rng, i, false);
        let (h, _) = w.handles[i].pop().unwrap_or_else(|| w.fail("no handle"));
        let got = w.k.read_all(&h);
        w.k.release(h);
        if let Err(e) = w.model.check_whole(name(i), seen(&got)) {
            w.fail(&format!("at the end: {e}"));
        }
    }
    if let Err(e) = w.model.check_dir(&c.dirs.src) {
        w.fail(&format!("SOURCE at the end: {e}"));
    }
    if !w.k.violations.is_empty() {
        w.fail("the core answered opens the kernel would refuse");
    }
    if passthrough {
        let k = &w.k;
        assert!(
            k.passthrough_opens > 0 && k.retried_opens > 0,
            "passthrough opens {}, opens retried after ESTALE {}",
            k.passthrough_opens,
            k.retried_opens
        );
    }
    let (hits, _) = c.counts();
    let done = c
        .cache()
        .promoter
        .stats()
        .done
        .load(std::sync::atomic::Ordering::Relaxed);
    // The run exercised what it is for: copies made and served while files changed.
    assert!(done >= 3 && hits >= 3, "promotions {done}, hits {hits}");
}

#[test]
fn model_exerciser_core_passthrough_agreed() {
    exercise(true, true, 0xc0de_0001);
}

#[test]
fn model_exerciser_core_no_passthrough() {
    exercise(false, true, 0xc0de_0002);
}

#[test]
fn model_exerciser_core_by_parent_and_name() {
    exercise(true, false, 0xc0de_0003);
}
