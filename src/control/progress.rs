//! What `promote --wait` shows while it waits: on a terminal, a bar per file and one for
//! the total (indicatif, on stderr, redrawn in place); anywhere else, plain lines, one per
//! file each time its percentage moves, so a log or a script reads whole lines and never a
//! carriage return or an escape sequence.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::proto::{Failure, Progress};
use super::render;

/// A way of showing progress reports as they come, and the end.
pub trait View {
    fn update(&mut self, p: Progress);
    /// The result came: the files in `failed` will never finish.
    fn finish(&mut self, failed: &[Failure]);
}

/// Bars when stderr is a terminal, plain lines otherwise.
pub fn view() -> Box<dyn View> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Lines::default())
    }
}

/// One line per file whenever its whole percentage changes.
#[derive(Default)]
pub struct Lines {
    last: HashMap<String, u64>,
}

impl View for Lines {
    fn update(&mut self, p: Progress) {
        let pct = render::percent(p.bytes_done, p.bytes_total);
        if self.last.insert(p.path.clone(), pct) != Some(pct) {
            eprintln!("{}", render::progress_line(&p));
        }
    }

    fn finish(&mut self, _failed: &[Failure]) {}
}

/// indicatif bars: one per file as it starts, and below them the total of those seen;
/// nothing at all until the first report.
struct Bars {
    multi: MultiProgress,
    total: Option<ProgressBar>,
    files: HashMap<String, (ProgressBar, Progress)>,
}

/// A file's line: its path last, so the numbers line up.
const FILE_TEMPLATE: &str = "[{bar:30}] {percent:>3}% {binary_bytes:>10} / {binary_total_bytes:<10} \
                             {binary_bytes_per_sec:>12} ETA {eta:<4} {msg}";

/// The total's line: no rate or ETA, since its length grows as files start.
const TOTAL_TEMPLATE: &str =
    "[{bar:30}] {percent:>3}% {binary_bytes:>10} / {binary_total_bytes:<10} {msg} ({elapsed})";

fn style(template: &str) -> ProgressStyle {
    // The templates are constants: a bad one is a bug the unit test below catches.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-")
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            total: None,
            files: HashMap::new(),
        }
    }

    fn retotal(&self) {
        let Some(total) = &self.total else { return };
        let (mut done, mut size, mut finished) = (0, 0, 0);
        for (_, p) in self.files.values() {
            done += p.bytes_done.min(p.bytes_total);
            size += p.bytes_total;
            finished += usize::from(p.bytes_done >= p.bytes_total);
        }
        total.set_length(size);
        total.set_position(done);
        total.set_message(format!("total: {finished} of {} files", self.files.len()));
    }
}

impl View for Bars {
    fn update(&mut self, p: Progress) {
        let multi = &self.multi;
        self.total.get_or_insert_with(|| {
            multi.add(ProgressBar::new(0).with_style(style(TOTAL_TEMPLATE)))
        });
        let (bar, last) = self.files.entry(p.path.clone()).or_insert_with(|| {
            let bar = ProgressBar::new(p.bytes_total)
                .with_style(style(FILE_TEMPLATE))
                .with_elapsed(Duration::from_millis(p.elapsed_ms))
                .with_message(p.path.clone());
            // Files above the total, in the order they start.
            (multi.insert_from_back(1, bar), p.clone())
        });
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        if p.bytes_done >= p.bytes_total {
            bar.finish();
        }
        *last = p;
        self.retotal();
    }

    fn finish(&mut self, failed: &[Failure]) {
        for f in failed {
            if let Some((bar, _)) = self.files.get(&f.path) {
                bar.abandon_with_message(format!("{}: failed: {}", f.path, f.error));
            }
        }
        self.retotal();
        if let Some(total) = &self.total {
            total.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for t in [FILE_TEMPLATE, TOTAL_TEMPLATE] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }
}
