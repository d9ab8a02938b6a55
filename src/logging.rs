//! Where log lines go: stderr in the foreground; when daemonized, the `log=FILE` file if
//! given, else syslog (which journald collects: `journalctl -t cachefs`), or
//! /var/log/cachefs.log where there is no syslog socket.

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::sys;

pub enum Target<'a> {
    Stderr,
    File(&'a Path),
    Syslog,
}

fn filter(debug: bool) -> EnvFilter {
    EnvFilter::try_from_env("CACHEFS_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "info" }))
}

/// Where a daemon logs when syslog has no socket (a container, a minimal system).
pub const FALLBACK_LOG: &str = "/var/log/cachefs.log";

/// Installs the global subscriber. Fails only for a log file that cannot be opened.
pub fn init(debug: bool, target: Target<'_>) -> io::Result<()> {
    // Without a syslog socket, syslog(3) drops every line silently: use a file instead.
    let target = match target {
        Target::Syslog if !Path::new("/dev/log").exists() => Target::File(Path::new(FALLBACK_LOG)),
        t => t,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(debug))
        .with_target(false);
    let _ = match target {
        Target::Stderr => builder
            .with_ansi(io::stderr().is_terminal())
            .with_writer(io::stderr)
            .try_init(),
        Target::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init()
        }
        Target::Syslog => {
            sys::open_syslog();
            builder
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_writer(Syslog)
                .try_init()
        }
    };
    Ok(())
}

/// Each formatted event becomes one syslog message with its level as the priority.
struct Syslog;

struct SyslogLine {
    priority: i32,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.buf);
        let line = line.trim_end();
        if !line.is_empty() {
            sys::syslog(self.priority, line);
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let priority = match *meta.level() {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buf: Vec::new(),
        }
    }
}
