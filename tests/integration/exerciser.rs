//! The project's own exerciser, in the spirit of xfstests' fsx: random reads, writes,
//! truncates, mmap reads and reopens on several descriptors of a few files, every read
//! checked against a model of what the files must hold, while the promoter copies them
//! into the cache all the time (`promote_after=64K`). Run with passthrough on and off.
//! On a mismatch it prints the seed and the last operations.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::common::{TestMount, num, status};
use crate::model::{Rng, Tree, seen};

const FILES: usize = 3;
const OPS: usize = 2500;
const MAX_LEN: usize = 1 << 20;

struct Desc {
    file: File,
    writable: bool,
}

struct World<'a> {
    m: &'a TestMount,
    model: Tree,
    descs: Vec<Vec<Desc>>,
    log: Vec<String>,
    seed: u64,
}

impl World<'_> {
    fn name(i: usize) -> String {
        format!("f{i}.bin")
    }

    fn fail(&self, what: &str) -> ! {
        let tail = self.log.len().saturating_sub(30);
        panic!(
            "{what} (seed {:#x}); last operations:\n{}\nlog:\n{}",
            self.seed,
            self.log[tail..].join("\n"),
            self.m.log_contents()
        );
    }

    fn open(&mut self, i: usize, writable: bool) {
        let f = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(self.m.path(Self::name(i)))
            .unwrap_or_else(|e| self.fail(&format!("open f{i} writable={writable}: {e}")));
        self.descs[i].push(Desc { file: f, writable });
    }

    /// A read of up to `want` bytes at `off` saw `got`: the model must agree.
    fn check(&self, i: usize, off: usize, want: usize, got: &[u8], how: &str) {
        if let Err(e) = self
            .model
            .check_read(Self::name(i), off as u64, want, Ok(got))
        {
            self.fail(&format!("{how}: {e}"));
        }
    }

    fn step(&mut self, rng: &mut Rng) {
        let i = rng.below(FILES);
        let len = self.model.bytes(Self::name(i)).map_or(0, <[u8]>::len);
        match rng.below(100) {
            // Read through one of the open descriptors.
            0..=34 => {
                if self.descs[i].is_empty() {
                    self.open(i, false);
                }
                let d = rng.below(self.descs[i].len());
                let off = rng.below(len + 4096);
                let n = 1 + rng.below(128 << 10);
                let mut buf = vec![0u8; n];
                let got = read_at_most(&self.descs[i][d].file, &mut buf, off as u64)
                    .unwrap_or_else(|e| self.fail(&format!("read f{i}: {e}")));
                self.log
                    .push(format!("read f{i} desc {d} off {off} len {n} -> {got}"));
                self.check(i, off, n, &buf[..got], "read");
            }
            // Write through a writable descriptor.
            35..=54 => {
                if !self.descs[i].iter().any(|d| d.writable) {
                    self.open(i, true);
                }
                let d = self.descs[i].iter().position(|d| d.writable).unwrap();
                let off = rng.below((len + 8192).min(MAX_LEN));
                let n = (1 + rng.below(64 << 10)).min(MAX_LEN - off);
                let data = rng.bytes(n);
                self.log
                    .push(format!("write f{i} desc {d} off {off} len {n}"));
                self.descs[i][d]
                    .file
                    .write_all_at(&data, off as u64)
                    .unwrap_or_else(|e| self.fail(&format!("write f{i}: {e}")));
                self.model.write(Self::name(i), off as u64, &data);
            }
            // Truncate, by path or through a descriptor.
            55..=61 => {
                let to = rng.below(MAX_LEN);
                let by_path = rng.below(2) == 0 || !self.descs[i].iter().any(|d| d.writable);
                self.log
                    .push(format!("truncate f{i} to {to} by_path={by_path}"));
                let r = if by_path {
                    OpenOptions::new()
                        .write(true)
                        .open(self.m.path(Self::name(i)))
                        .and_then(|f| f.set_len(to as u64))
                } else {
                    let d = self.descs[i].iter().position(|d| d.writable).unwrap();
                    self.descs[i][d].file.set_len(to as u64)
                };
                r.unwrap_or_else(|e| self.fail(&format!("truncate f{i}: {e}")));
                self.model.truncate(Self::name(i), to as u64);
            }
            // mmap a range of an open descriptor and compare it.
            62..=71 => {
                if len == 0 {
                    return;
                }
                if self.descs[i].is_empty() {
                    self.open(i, false);
                }
                let d = rng.below(self.descs[i].len());
                let off = rng.below(len) & !4095;
                let n = (1 + rng.below(256 << 10)).min(len - off);
                self.log
                    .push(format!("mmap f{i} desc {d} off {off} len {n}"));
                let fd = self.descs[i][d].file.as_raw_fd();
                // SAFETY: a fresh private read-only mapping of n bytes, unmapped below;
                // n is within the file's size as the model (and the kernel) has it.
                let bytes = unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        n,
                        libc::PROT_READ,
                        libc::MAP_SHARED,
                        fd,
                        off as libc::off_t,
                    );
                    if p == libc::MAP_FAILED {
                        self.fail(&format!("mmap f{i}: {}", std::io::Error::last_os_error()));
                    }
                    let v = std::slice::from_raw_parts(p as *const u8, n).to_vec();
                    libc::munmap(p, n);
                    v
                };
                self.check(i, off, n, &bytes, "mmap read");
            }
            // Close one descriptor, or open another.
            72..=84 => {
                if !self.descs[i].is_empty() && (self.descs[i].len() >= 3 || rng.below(2) == 0) {
                    let d = rng.below(self.descs[i].len());
                    self.log.push(format!("close f{i} desc {d}"));
                    self.descs[i].remove(d);
                } else {
                    let w = rng.below(3) == 0;
                    self.log.push(format!("open f{i} writable={w}"));
                    self.open(i, w);
                }
            }
            // A whole read by path: a new open, often served from the cached copy.
            85..=94 => {
                self.log.push(format!("read whole f{i}"));
                let got = fs::read(self.m.path(Self::name(i)));
                if let Err(e) = self.model.check_whole(Self::name(i), seen(&got)) {
                    self.fail(&format!("whole read: {e}"));
                }
            }
            // SOURCE, the truth, holds the model.
            _ => {
                self.log.push(format!("compare SOURCE f{i}"));
                let src = fs::read(self.m.src(Self::name(i)));
                if let Err(e) = self.model.check_whole(Self::name(i), seen(&src)) {
                    self.fail(&format!("SOURCE: {e}"));
                }
            }
        }
    }
}

/// Reads up to `buf.len()` bytes at `off`, looping over short reads until the end.
pub(crate) fn read_at_most(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn exercise(passthrough: &str, seed: u64) {
    let mut rng = Rng(seed);
    let initial: Vec<Vec<u8>> = (0..FILES)
        .map(|_| {
            let n = 256 << 10 | rng.below(MAX_LEN - (256 << 10));
            rng.bytes(n)
        })
        .collect();
    let init = initial.clone();
    let m = TestMount::builder()
        .option("promote_after=64K")
        .option("prefetch=0")
        .option(&format!("passthrough={passthrough}"))
        .populate(move |src| {
            for (i, data) in init.iter().enumerate() {
                fs::write(src.join(World::name(i)), data).unwrap();
            }
        })
        .start();
    let mut model = Tree::new();
    for (i, data) in initial.into_iter().enumerate() {
        model.put(World::name(i), data);
    }
    let mut w = World {
        m: &m,
        model,
        descs: (0..FILES).map(|_| Vec::new()).collect(),
        log: Vec::new(),
        seed,
    };
    for _ in 0..OPS {
        w.step(&mut rng);
    }
    w.descs.clear();
    for i in 0..FILES {
        for (what, path) in [
            ("mount", m.path(World::name(i))),
            ("SOURCE", m.src(World::name(i))),
        ] {
            if let Err(e) = w.model.check_whole(World::name(i), seen(&fs::read(path))) {
                panic!("{what} at the end: {e}");
            }
        }
    }
    let st = status(&m);
    // The run exercised what it is for: copies made and served while files changed.
    assert!(num(&st, "promotions_done") >= 3, "too few promotions: {st}");
    assert!(
        num(&st, "hits") >= 1,
        "no open was served from a copy: {st}"
    );
}

#[test]
fn model_exerciser_with_promotions_churning_passthrough_on() {
    crate::require_mount!();
    exercise("auto", 0x5eed_0001);
}

#[test]
fn model_exerciser_with_promotions_churning_passthrough_off() {
    crate::require_mount!();
    exercise("off", 0x5eed_0002);
}
