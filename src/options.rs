//! Mount options: the one table of every `OPTION[=VALUE]` a mount accepts, and the parsers for
//! their values (sizes, durations, rates, `min_free`).
//!
//! This module owns the mapping from an option name and its text value onto [`Config`]. Both
//! spellings of an option go through [`apply_option`]: `-o max_size=500G` (one item of an
//! `-o` list, see [`apply_option_list`]) and `--max-size 500G` (see `cli`), so the two can
//! never drift apart. [`OPTIONS`] is the same table `cachefs --help` prints. Dashes and
//! underscores in names are equivalent. Pure: no I/O happens here; checking that paths exist is
//! `cli::check_paths`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Atime, Config, MinFree, Passthrough, PromoteMode};

/// Sets a flag option on a `Config`.
pub type SetFlag = fn(&mut Config);
/// Parses a value and sets it on a `Config`.
pub type SetValue = fn(&mut Config, &str) -> Result<(), String>;

/// Whether an option takes a value.
#[derive(Clone, Copy)]
pub enum Kind {
    /// `name`, never `name=VALUE`.
    Flag(SetFlag),
    /// `name=VALUE`; the string is the value's placeholder in the help (`SIZE`, `DIR`).
    Value(&'static str, SetValue),
    /// `name=VALUE` whose value may be empty (`name=` sets an empty list).
    List(&'static str, SetValue),
}

impl Kind {
    /// The value's placeholder in the help; `None` for a flag.
    pub fn metavar(&self) -> Option<&'static str> {
        match self {
            Kind::Flag(_) => None,
            Kind::Value(m, _) | Kind::List(m, _) => Some(m),
        }
    }
}

/// One documented option: what `--help` lists and what [`apply_option`] applies.
pub struct OptionSpec {
    /// Canonical spelling, with underscores (`max_size`).
    pub name: &'static str,
    pub kind: Kind,
    /// One line for `--help`, the default included.
    pub help: &'static str,
}

/// Whether an option takes a value, as the command line needs to know to read `--name VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Flag,
    Value,
}

/// Every documented option, in the order `--help` lists them.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "cache",
        kind: Kind::Value("DIR", |c, v| {
            c.cache = nonempty_path("cache", v, "cache=/mnt/ssd/cachefs")?;
            Ok(())
        }),
        help: "the SSD cache directory, created if missing; not inside SOURCE or MOUNTPOINT \
               (required)",
    },
    OptionSpec {
        name: "max_size",
        kind: Kind::Value("SIZE", |c, v| {
            let n = parse_size(v).map_err(|e| in_option("max_size", e))?;
            if n == 0 {
                return Err(
                    "option 'max_size' must be more than 0: leave it out for no limit \
                            but min_free"
                        .to_string(),
                );
            }
            c.max_size = Some(n);
            Ok(())
        }),
        help: "most bytes the cache may hold, e.g. 500G (K, M, G, T are powers of 1024) \
               (default: no limit but min_free)",
    },
    OptionSpec {
        name: "min_free",
        kind: Kind::Value("SIZE|PCT%", |c, v| {
            c.min_free = parse_min_free(v).map_err(|e| in_option("min_free", e))?;
            Ok(())
        }),
        help: "free space kept on the cache's filesystem, e.g. 50G or 10% (default: 10%)",
    },
    OptionSpec {
        name: "max_age",
        kind: Kind::Value("DURATION", |c, v| {
            let d = parse_duration(v).map_err(|e| in_option("max_age", e))?;
            c.max_age = if d.is_zero() { None } else { Some(d) };
            Ok(())
        }),
        help: "evict copies not opened for this long, e.g. 90m, 12h, 30d; pinned copies are \
               exempt; 0 is off (default: off)",
    },
    OptionSpec {
        name: "promote",
        kind: Kind::Value("auto|manual", |c, v| {
            c.promote = match v.to_ascii_lowercase().as_str() {
                "auto" => PromoteMode::Auto,
                "manual" => PromoteMode::Manual,
                _ => return Err(bad_choice("promote", v, "auto or manual")),
            };
            Ok(())
        }),
        help: "auto: promote files as they are used; manual: only 'cachefs promote' and \
               'cachefs pin' do (default: auto)",
    },
    OptionSpec {
        name: "prefetch",
        kind: Kind::Value("N", |c, v| {
            c.prefetch = parse_count(v).map_err(|e| in_option("prefetch", e))?;
            Ok(())
        }),
        help: "with promote=auto, also promote the next N files of the same directory \
               (default: 1)",
    },
    OptionSpec {
        name: "promote_bw",
        kind: Kind::Value("RATE", |c, v| {
            c.promote_bw = parse_rate(v).map_err(|e| in_option("promote_bw", e))?;
            Ok(())
        }),
        help: "promoter bandwidth cap in bytes/s, e.g. 100M; 0 is unlimited (default: 0)",
    },
    OptionSpec {
        name: "promote_after",
        kind: Kind::Value("SIZE", |c, v| {
            c.promote_after = parse_size(v).map_err(|e| in_option("promote_after", e))?;
            Ok(())
        }),
        help: "with promote=auto, bytes one open must read before its file is promoted \
               (default: 16M)",
    },
    OptionSpec {
        name: "promote_threads",
        kind: Kind::Value("N", |c, v| {
            let n: u32 = parse_count(v).map_err(|e| in_option("promote_threads", e))?;
            if !(1..=MAX_PROMOTE_THREADS).contains(&n) {
                return Err(format!(
                    "option 'promote_threads' must be 1 to {MAX_PROMOTE_THREADS}, not {n}: \
                     use promote=manual to stop automatic promotion"
                ));
            }
            c.promote_threads = n as usize;
            Ok(())
        }),
        help: "promoter worker threads (default: 2)",
    },
    OptionSpec {
        name: "promote_ignore",
        kind: Kind::List("NAME,...", |c, v| {
            c.promote_ignore =
                crate::policy::parse_ignore(v).map_err(|e| in_option("promote_ignore", e))?;
            Ok(())
        }),
        help: "with promote=auto, process names (as /proc/PID/comm shows them) whose reads \
               never count toward promotion, nor those of processes they started; +NAME,... \
               adds to the default, empty turns it off (default: Plex Media Scanner, Plex \
               Media Fingerprinter, Plex Commercial Skipper, PMS ScannerPipe, ffprobe, \
               mediainfo)",
    },
    OptionSpec {
        name: "attr_timeout",
        kind: Kind::Value("SECS", |c, v| {
            c.attr_timeout = parse_duration(v).map_err(|e| in_option("attr_timeout", e))?;
            Ok(())
        }),
        help: "how long the kernel caches attributes (default: 60)",
    },
    OptionSpec {
        name: "entry_timeout",
        kind: Kind::Value("SECS", |c, v| {
            c.entry_timeout = parse_duration(v).map_err(|e| in_option("entry_timeout", e))?;
            Ok(())
        }),
        help: "how long the kernel caches names (default: 60)",
    },
    OptionSpec {
        name: "negative_timeout",
        kind: Kind::Value("SECS", |c, v| {
            c.negative_timeout = parse_duration(v).map_err(|e| in_option("negative_timeout", e))?;
            Ok(())
        }),
        help: "how long the kernel caches missing names (default: 60)",
    },
    OptionSpec {
        name: "meta_ttl",
        kind: Kind::Value("SECS", |c, v| {
            c.meta_ttl = parse_duration(v).map_err(|e| in_option("meta_ttl", e))?;
            Ok(())
        }),
        help: "answer stat and readdir from the daemon's own metadata cache while younger \
               than this; 0 is off (default: 0)",
    },
    OptionSpec {
        name: "mount_timeout",
        kind: Kind::Value("SECS", |c, v| {
            c.mount_timeout = parse_duration(v).map_err(|e| in_option("mount_timeout", e))?;
            Ok(())
        }),
        help: "without -f, how long to wait for the mount to be live before giving up (a \
               SOURCE that hangs); 0 waits forever (default: 30)",
    },
    OptionSpec {
        name: "log",
        kind: Kind::Value("FILE", |c, v| {
            c.log = Some(nonempty_path("log", v, "log=/var/log/cachefs.log")?);
            Ok(())
        }),
        help: "where a background mount logs (default: syslog)",
    },
    OptionSpec {
        name: "metrics",
        kind: Kind::Value("ADDR:PORT", |c, v| {
            c.metrics = Some(parse_listen_addr(v).map_err(|e| in_option("metrics", e))?);
            Ok(())
        }),
        help: "serve Prometheus metrics on this address, e.g. 127.0.0.1:9100 (default: off)",
    },
    OptionSpec {
        name: "passthrough",
        kind: Kind::Value("auto|on|off", |c, v| {
            c.passthrough = match v.to_ascii_lowercase().as_str() {
                "auto" => Passthrough::Auto,
                "on" => Passthrough::On,
                "off" => Passthrough::Off,
                _ => return Err(bad_choice("passthrough", v, "auto, on or off")),
            };
            Ok(())
        }),
        help: "kernel passthrough for cached reads; on fails the mount where the kernel \
               refuses (default: auto)",
    },
    OptionSpec {
        name: "inode_handles",
        kind: Kind::Value("auto|off", |c, v| {
            c.inode_handles = match v.to_ascii_lowercase().as_str() {
                "auto" => true,
                "off" => false,
                _ => return Err(bad_choice("inode_handles", v, "auto or off")),
            };
            Ok(())
        }),
        help: "reopen inodes by file handle where SOURCE's filesystem allows it; off: by \
               parent and name (default: auto)",
    },
    OptionSpec {
        name: "failover",
        kind: Kind::Value("on|off", |c, v| {
            c.failover = match v.to_ascii_lowercase().as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(bad_choice("failover", v, "on or off")),
            };
            Ok(())
        }),
        help: "if the daemon dies (SIGKILL, a crash), its watchdog starts a successor that \
               takes the live mount over, open files included; off: the watchdog unmounts \
               (default: on)",
    },
    OptionSpec {
        name: "xattr",
        kind: Kind::Value("passthrough|nosys", |c, v| {
            c.xattr = match v.to_ascii_lowercase().as_str() {
                "passthrough" => true,
                "nosys" => false,
                _ => return Err(bad_choice("xattr", v, "passthrough or nosys")),
            };
            Ok(())
        }),
        help: "extended attributes: passthrough to SOURCE (a SOURCE without any is \
               told to the kernel once), or nosys: none at all, and the kernel stops \
               asking (ls -l then costs one request less per file) (default: passthrough)",
    },
    OptionSpec {
        name: "allow_other",
        kind: Kind::Flag(|c| c.allow_other = true),
        help: "let other users use the mount, with kernel permission checks (default: off)",
    },
    OptionSpec {
        name: "allow_root",
        kind: Kind::Flag(|c| c.allow_root = true),
        help: "let root use the mount besides its owner, with kernel permission checks; the \
               same as the default when the daemon runs as root (default: off)",
    },
    OptionSpec {
        name: "fsname",
        kind: Kind::Value("NAME", |c, v| {
            c.fsname = Some(v.to_string());
            Ok(())
        }),
        help: "what findmnt and df show as the mount's source (default: SOURCE's path)",
    },
    OptionSpec {
        name: "nonempty",
        kind: Kind::Flag(|c| c.nonempty = true),
        help: "mount over another filesystem mounted at MOUNTPOINT, hiding it (a bind mount of \
               a directory, such as a container's volume, needs no option; a live FUSE mount \
               is always refused) (default: off)",
    },
    OptionSpec {
        name: "ro",
        kind: Kind::Flag(|c| c.read_only = true),
        help: "read-only mount (default: off)",
    },
    OptionSpec {
        name: "debug",
        kind: Kind::Flag(|c| c.debug = true),
        help: "verbose logging (default: off)",
    },
];

/// Mount flags that go to the kernel; flags, never `name=VALUE`.
pub const KERNEL_FLAGS: &[(&str, SetFlag)] = &[
    ("dev", |c| c.kernel_flags.nodev = false),
    ("nodev", |c| c.kernel_flags.nodev = true),
    ("suid", |c| c.kernel_flags.nosuid = false),
    ("nosuid", |c| c.kernel_flags.nosuid = true),
    ("exec", |c| c.kernel_flags.noexec = false),
    ("noexec", |c| c.kernel_flags.noexec = true),
    ("atime", |c| c.kernel_flags.atime = Atime::Relatime),
    ("relatime", |c| c.kernel_flags.atime = Atime::Relatime),
    ("noatime", |c| c.kernel_flags.atime = Atime::Noatime),
    ("strictatime", |c| c.kernel_flags.atime = Atime::Strictatime),
    // The kernel applies relatime unless told strictatime: that is what "not relatime" is.
    ("norelatime", |c| c.kernel_flags.atime = Atime::Strictatime),
    ("diratime", |c| c.kernel_flags.nodiratime = false),
    ("nodiratime", |c| c.kernel_flags.nodiratime = true),
    ("lazytime", |c| c.kernel_flags.lazytime = true),
    ("nolazytime", |c| c.kernel_flags.lazytime = false),
    ("sync", |c| c.kernel_flags.sync = true),
    ("async", |c| c.kernel_flags.sync = false),
    ("dirsync", |c| c.kernel_flags.dirsync = true),
];

/// Accepted and ignored, with or without a value: fstab and mount helpers carry them. Any
/// option starting `x-` (`x-systemd.automount`) is ignored too. `default_permissions` is
/// implied by `allow_other` and `allow_root` and adds nothing without them (SOURCE checks
/// every request as its caller, and only the owner gets in); `subtype` is what mount
/// helpers add.
pub const IGNORED: &[&str] = &[
    "defaults",
    "rw",
    "nofail",
    "_netdev",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "default_permissions",
    "subtype",
];

/// Highest `promote_threads` accepted.
pub const MAX_PROMOTE_THREADS: u32 = 256;

/// What a lookup of an option name found.
enum Found {
    Spec(&'static OptionSpec),
    Kernel(SetFlag),
    Ignored,
}

/// Canonical spelling of an option name: dashes become underscores. `x-` options keep their
/// spelling (they are ignored anyway); a leading `_` stays (`_netdev`).
pub fn normalise(key: &str) -> String {
    key.replace('-', "_")
}

fn lookup(key: &str) -> Option<Found> {
    if key.starts_with("x-") || key.starts_with("x_") {
        return Some(Found::Ignored);
    }
    let key = normalise(key);
    if let Some(spec) = OPTIONS.iter().find(|s| s.name == key) {
        return Some(Found::Spec(spec));
    }
    if let Some((_, f)) = KERNEL_FLAGS.iter().find(|(n, _)| *n == key) {
        return Some(Found::Kernel(*f));
    }
    if IGNORED.contains(&key.as_str()) {
        return Some(Found::Ignored);
    }
    None
}

/// Whether `key` (either spelling) is an option and takes a value; `None` if it is not an
/// option. Ignored options count as flags (on the command line give them a value only as
/// `--name=VALUE`).
pub fn arity(key: &str) -> Option<Arity> {
    match lookup(key)? {
        Found::Spec(OptionSpec {
            kind: Kind::Value(..) | Kind::List(..),
            ..
        }) => Some(Arity::Value),
        _ => Some(Arity::Flag),
    }
}

fn unknown(key: &str) -> String {
    format!("unknown option '{key}': see 'cachefs --help' for the options")
}

/// Applies one option, `key` or `key=value`, to `cfg`. `key` may be spelt with dashes or
/// underscores. Errors are one line naming the option and the fix.
pub fn apply_option(cfg: &mut Config, key: &str, value: Option<&str>) -> Result<(), String> {
    apply_one(cfg, key, value).map_err(|e| one_line(&e))
}

/// An error quotes what it was given: control characters in it (a newline in an fstab
/// field, escape sequences) are shown escaped, so the message stays one line and cannot
/// rewrite the terminal or forge log lines.
fn one_line(msg: &str) -> String {
    if !msg.contains(char::is_control) {
        return msg.to_string();
    }
    msg.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

fn apply_one(cfg: &mut Config, key: &str, value: Option<&str>) -> Result<(), String> {
    if key.is_empty() {
        return Err(match value {
            Some(v) => format!("option '={v}' has no name: write NAME=VALUE"),
            None => "empty option name: write NAME or NAME=VALUE".to_string(),
        });
    }
    match lookup(key).ok_or_else(|| unknown(key))? {
        Found::Ignored => Ok(()),
        Found::Kernel(set) => {
            flag_without_value(key, value)?;
            set(cfg);
            Ok(())
        }
        Found::Spec(spec) => match spec.kind {
            Kind::Flag(set) => {
                flag_without_value(spec.name, value)?;
                set(cfg);
                Ok(())
            }
            Kind::Value(metavar, set) => match value {
                None | Some("") => Err(format!(
                    "option '{}' needs a value: write {}={}",
                    spec.name, spec.name, metavar
                )),
                Some(v) => set(cfg, v),
            },
            Kind::List(metavar, set) => match value {
                None => Err(format!(
                    "option '{}' needs a value: write {}={} ({}= for none)",
                    spec.name, spec.name, metavar, spec.name
                )),
                Some(v) => set(cfg, v),
            },
        },
    }
}

fn flag_without_value(name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        None => Ok(()),
        Some(v) => Err(format!(
            "option '{name}' takes no value: write '{name}', not '{name}={v}'"
        )),
    }
}

/// Splits an `-o` list into items: commas separate, `\,` is a literal comma and `\\` a
/// backslash (as libfuse reads them); empty items are skipped. Each item is `(key, value)`,
/// split at the first `=`.
pub fn split_option_list(list: &str) -> Vec<(String, Option<String>)> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars();
    let mut push = |cur: &mut String| {
        if !cur.is_empty() {
            let item = std::mem::take(cur);
            items.push(match item.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (item, None),
            });
        }
    };
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => match chars.next() {
                Some(next) => cur.push(next),
                None => cur.push('\\'),
            },
            ',' => push(&mut cur),
            _ => cur.push(ch),
        }
    }
    push(&mut cur);
    items
}

/// Applies an `-o` list, `a=b,c,d=e`, left to right (a later option wins).
pub fn apply_option_list(cfg: &mut Config, list: &str) -> Result<(), String> {
    for (key, value) in split_option_list(list) {
        apply_option(cfg, &key, value.as_deref())?;
    }
    Ok(())
}

fn in_option(name: &str, err: String) -> String {
    format!("option '{name}': {err}")
}

fn bad_choice(name: &str, v: &str, choices: &str) -> String {
    format!("option '{name}' is '{v}': write {choices}")
}

fn nonempty_path(name: &str, v: &str, example: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        Err(format!("option '{name}' needs a value: write {example}"))
    } else {
        Ok(PathBuf::from(v))
    }
}

/// Splits `s` into its leading ASCII digits and the rest.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// A size in bytes: a whole number with an optional `K`, `M`, `G` or `T` suffix (powers of
/// 1024) and an optional trailing `B`, case-insensitive: `4096`, `512K`, `500G`, `2TB`, `100b`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size '{s}': write a whole number of bytes with an optional K, M, G or T \
             suffix, e.g. 500G"
        )
    };
    let (digits, suffix) = split_digits(s);
    if digits.is_empty() {
        return Err(bad());
    }
    let suffix = suffix.to_ascii_uppercase();
    let suffix = suffix.strip_suffix('B').unwrap_or(&suffix);
    let shift = match suffix {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let too_big = || format!("size '{s}' is too large: the most is 16383P (2^64-1 bytes)");
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_big)
}

/// A rate in bytes per second: a size ([`parse_size`]) with an optional `/s`: `100M`, `100MB/s`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bare = s
        .strip_suffix("/s")
        .or_else(|| s.strip_suffix("/S"))
        .unwrap_or(s);
    parse_size(bare).map_err(|_| {
        format!("invalid rate '{s}': write bytes per second with an optional K, M, G or T suffix, e.g. 100M")
    })
}

/// Free space to keep: a size ([`parse_size`]) or a whole percentage `0%` to `100%`.
pub fn parse_min_free(s: &str) -> Result<MinFree, String> {
    match s.strip_suffix('%') {
        Some(pct) => {
            let (digits, rest) = split_digits(pct);
            if digits.is_empty() || !rest.is_empty() {
                return Err(format!(
                    "invalid percentage '{s}': write a whole number from 0% to 100%, e.g. 10%"
                ));
            }
            match digits.parse::<u8>() {
                Ok(p) if p <= 100 => Ok(MinFree::Percent(p)),
                _ => Err(format!(
                    "percentage '{s}' is more than 100%: write 0% to 100%, or a size such as 50G"
                )),
            }
        }
        None => parse_size(s).map(MinFree::Bytes).map_err(|_| {
            format!("invalid min_free '{s}': write a size such as 50G or a percentage such as 10%")
        }),
    }
}

/// A duration: a number with an optional unit `s`, `m`, `h` or `d` (case-insensitive); a bare
/// number is seconds. Decimals are allowed (`0.5`, `1.5h`), down to nanoseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration '{s}': write a number with an optional unit s, m, h or d, \
             e.g. 90s, 90m, 12h, 30d (a bare number is seconds)"
        )
    };
    let (whole, rest) = split_digits(s);
    let (frac, unit) = match rest.strip_prefix('.') {
        Some(after) => split_digits(after),
        None => ("", rest),
    };
    if whole.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let unit_secs: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    let too_big = || format!("duration '{s}' is too long: write less than 500 billion years");
    // Digits past nanosecond precision of the largest unit add nothing measurable.
    let frac = &frac[..frac.len().min(18)];
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_big())?
    };
    let frac_val: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let scale = 10u128.pow(frac.len() as u32);
    const NANOS: u128 = 1_000_000_000;
    let nanos = whole
        .checked_mul(unit_secs * NANOS)
        .and_then(|w| w.checked_add(frac_val * unit_secs * NANOS / scale))
        .ok_or_else(too_big)?;
    let secs = u64::try_from(nanos / NANOS).map_err(|_| too_big())?;
    Ok(Duration::new(secs, (nanos % NANOS) as u32))
}

/// A whole number, for counts (`prefetch`, `promote_threads`).
fn parse_count<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid number '{s}': write a whole number, e.g. 2"
        ));
    }
    s.parse()
        .map_err(|_| format!("number '{s}' is too large: write a smaller whole number"))
}

/// `ADDR:PORT` for a listener: checked for shape only (a non-empty address, a port 0..=65535);
/// the address is resolved when the listener starts.
fn parse_listen_addr(s: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "invalid address '{s}': write ADDR:PORT, e.g. 127.0.0.1:9100, 0.0.0.0:9100 or \
             [::1]:9100"
        )
    };
    let (addr, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if addr.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    port.parse::<u16>().map_err(|_| bad())?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KernelFlags;
    use std::path::Path;

    fn base() -> Config {
        Config::new(PathBuf::new(), PathBuf::new(), PathBuf::new())
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("4096", 4096),
            ("100b", 100),
            ("100B", 100),
            ("1K", 1024),
            ("1k", 1024),
            ("1KB", 1024),
            ("1kb", 1024),
            ("512K", 512 << 10),
            ("16M", 16 << 20),
            ("16MB", 16 << 20),
            ("500G", 500 << 30),
            ("500g", 500 << 30),
            ("2T", 2 << 40),
            ("2TB", 2 << 40),
            ("007M", 7 << 20),
            ("18446744073709551615", u64::MAX),
            ("16777215T", 16_777_215u64 << 40),
        ];
        for (s, want) in ok {
            assert_eq!(parse_size(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "invalid size"),
            ("G", "invalid size"),
            ("B", "invalid size"),
            ("-1", "invalid size"),
            ("+1", "invalid size"),
            ("1.5G", "invalid size"),
            ("1 G", "invalid size"),
            (" 1G", "invalid size"),
            ("1P", "invalid size"),
            ("1KiB", "invalid size"),
            ("1GBB", "invalid size"),
            ("1BB", "invalid size"),
            ("ten", "invalid size"),
            ("0x10", "invalid size"),
            ("18446744073709551616", "too large"),
            ("16777216T", "too large"),
            ("99999999999999999999999G", "too large"),
        ];
        for (s, want) in bad {
            let err = parse_size(s).expect_err(s);
            assert!(err.contains(want), "{s}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn durations() {
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("90", Duration::from_secs(90)),
            ("90s", Duration::from_secs(90)),
            ("90S", Duration::from_secs(90)),
            ("90m", Duration::from_secs(90 * 60)),
            ("12h", Duration::from_secs(12 * 3600)),
            ("12H", Duration::from_secs(12 * 3600)),
            ("30d", Duration::from_secs(30 * 86400)),
            ("0.5", Duration::from_millis(500)),
            ("0.25s", Duration::from_millis(250)),
            (".5", Duration::from_millis(500)),
            ("1.", Duration::from_secs(1)),
            ("1.5h", Duration::from_secs(5400)),
            ("0.000000001", Duration::from_nanos(1)),
            ("0.0000000019", Duration::from_nanos(1)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "invalid duration"),
            ("s", "invalid duration"),
            (".", "invalid duration"),
            ("-1", "invalid duration"),
            ("1w", "invalid duration"),
            ("1ms", "invalid duration"),
            ("1 h", "invalid duration"),
            ("1h30m", "invalid duration"),
            ("1.2.3", "invalid duration"),
            ("1e3", "invalid duration"),
            ("99999999999999999999999999999999999999999", "too long"),
            ("999999999999999999999d", "too long"),
        ];
        for (s, want) in bad {
            let err = parse_duration(s).expect_err(s);
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    #[test]
    fn rates_and_min_free() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("100M"), Ok(100 << 20));
        assert_eq!(parse_rate("100MB/s"), Ok(100 << 20));
        assert_eq!(parse_rate("100M/S"), Ok(100 << 20));
        assert!(
            parse_rate("fast")
                .unwrap_err()
                .contains("invalid rate 'fast'")
        );
        assert!(parse_rate("/s").is_err());

        let ok: &[(&str, MinFree)] = &[
            ("10%", MinFree::Percent(10)),
            ("0%", MinFree::Percent(0)),
            ("100%", MinFree::Percent(100)),
            ("0", MinFree::Bytes(0)),
            ("50G", MinFree::Bytes(50 << 30)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_min_free(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("101%", "more than 100%"),
            ("1000%", "more than 100%"),
            ("%", "invalid percentage"),
            ("2.5%", "invalid percentage"),
            ("-1%", "invalid percentage"),
            ("10 %", "invalid percentage"),
            ("lots", "invalid min_free"),
            ("", "invalid min_free"),
        ];
        for (s, want) in bad {
            let err = parse_min_free(s).expect_err(s);
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    /// Every valued option: input, and what it changes on a default `Config`.
    #[test]
    fn every_valued_option() {
        type Check = fn(&Config) -> bool;
        let table: &[(&str, &str, Check)] = &[
            ("cache", "/ssd/c", |c| c.cache == Path::new("/ssd/c")),
            ("max_size", "500G", |c| c.max_size == Some(500 << 30)),
            ("min_free", "5%", |c| c.min_free == MinFree::Percent(5)),
            ("min_free", "20G", |c| {
                c.min_free == MinFree::Bytes(20 << 30)
            }),
            ("max_age", "30d", |c| {
                c.max_age == Some(Duration::from_secs(30 * 86400))
            }),
            ("max_age", "0", |c| c.max_age.is_none()),
            ("promote", "manual", |c| c.promote == PromoteMode::Manual),
            ("promote", "auto", |c| c.promote == PromoteMode::Auto),
            ("promote", "MANUAL", |c| c.promote == PromoteMode::Manual),
            ("prefetch", "0", |c| c.prefetch == 0),
            ("prefetch", "5", |c| c.prefetch == 5),
            ("promote_bw", "100M", |c| c.promote_bw == 100 << 20),
            ("promote_bw", "0", |c| c.promote_bw == 0),
            ("promote_after", "0", |c| c.promote_after == 0),
            ("promote_after", "1M", |c| c.promote_after == 1 << 20),
            ("promote_threads", "4", |c| c.promote_threads == 4),
            ("promote_threads", "256", |c| c.promote_threads == 256),
            ("attr_timeout", "5", |c| {
                c.attr_timeout == Duration::from_secs(5)
            }),
            ("attr_timeout", "0.5", |c| {
                c.attr_timeout == Duration::from_millis(500)
            }),
            ("entry_timeout", "1m", |c| {
                c.entry_timeout == Duration::from_secs(60)
            }),
            ("negative_timeout", "0", |c| c.negative_timeout.is_zero()),
            ("meta_ttl", "30", |c| c.meta_ttl == Duration::from_secs(30)),
            ("log", "/var/log/c.log", |c| {
                c.log == Some(PathBuf::from("/var/log/c.log"))
            }),
            ("metrics", "127.0.0.1:9100", |c| {
                c.metrics.as_deref() == Some("127.0.0.1:9100")
            }),
            ("metrics", "[::1]:9100", |c| {
                c.metrics.as_deref() == Some("[::1]:9100")
            }),
            ("metrics", "localhost:0", |c| {
                c.metrics.as_deref() == Some("localhost:0")
            }),
            ("passthrough", "on", |c| c.passthrough == Passthrough::On),
            ("passthrough", "off", |c| c.passthrough == Passthrough::Off),
            ("passthrough", "auto", |c| {
                c.passthrough == Passthrough::Auto
            }),
            ("inode_handles", "off", |c| !c.inode_handles),
            ("failover", "off", |c| !c.failover),
            ("failover", "on", |c| c.failover),
            ("xattr", "nosys", |c| !c.xattr),
            ("xattr", "passthrough", |c| c.xattr),
            ("mount_timeout", "5", |c| {
                c.mount_timeout == Duration::from_secs(5)
            }),
            ("mount_timeout", "0", |c| c.mount_timeout.is_zero()),
            ("inode_handles", "auto", |c| c.inode_handles),
            ("promote_ignore", "ffprobe,Plex Media Scanner", |c| {
                c.promote_ignore == ["ffprobe", "Plex Media Scanner"]
            }),
            ("promote_ignore", "+tdarr", |c| {
                c.promote_ignore.len() == crate::policy::DEFAULT_IGNORE.len() + 1
                    && c.promote_ignore.last().map(String::as_str) == Some("tdarr")
            }),
            ("fsname", "hdd-array", |c| {
                c.fsname.as_deref() == Some("hdd-array")
            }),
            ("fsname", "/mnt/a b", |c| {
                c.fsname.as_deref() == Some("/mnt/a b")
            }),
        ];
        for (key, value, check) in table {
            for spelling in [key.to_string(), key.replace('_', "-")] {
                let mut c = base();
                apply_option(&mut c, &spelling, Some(value))
                    .unwrap_or_else(|e| panic!("{spelling}={value}: {e}"));
                assert!(check(&c), "{spelling}={value}: {c:?}");
            }
        }
        // Every valued option in the table is covered above.
        for spec in OPTIONS {
            if spec.kind.metavar().is_some() {
                assert!(
                    table.iter().any(|(k, _, _)| *k == spec.name),
                    "{} untested",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn every_flag_option() {
        let table: &[(&str, SetFlag)] = &[
            ("allow_other", |c| c.allow_other = true),
            ("allow-other", |c| c.allow_other = true),
            ("ro", |c| c.read_only = true),
            ("debug", |c| c.debug = true),
            ("nodev", |c| c.kernel_flags.nodev = true),
            ("nosuid", |c| c.kernel_flags.nosuid = true),
            ("noexec", |c| c.kernel_flags.noexec = true),
            ("noatime", |c| c.kernel_flags.atime = Atime::Noatime),
            ("strictatime", |c| c.kernel_flags.atime = Atime::Strictatime),
            ("norelatime", |c| c.kernel_flags.atime = Atime::Strictatime),
            ("nodiratime", |c| c.kernel_flags.nodiratime = true),
            ("lazytime", |c| c.kernel_flags.lazytime = true),
            ("sync", |c| c.kernel_flags.sync = true),
            ("dirsync", |c| c.kernel_flags.dirsync = true),
            ("allow_root", |c| c.allow_root = true),
            ("allow-root", |c| c.allow_root = true),
        ];
        for (key, expect) in table {
            let mut got = base();
            apply_option(&mut got, key, None).unwrap_or_else(|e| panic!("{key}: {e}"));
            let mut want = base();
            expect(&mut want);
            assert_eq!(got, want, "{key}");
            assert_ne!(got, base(), "{key} changed nothing");
        }
        // The positive kernel flags undo the negative ones; of the atime modes, the last
        // one given wins.
        let mut c = base();
        apply_option_list(
            &mut c,
            "nodev,nosuid,noexec,noatime,nodiratime,lazytime,sync,dirsync",
        )
        .unwrap();
        assert_eq!(
            c.kernel_flags,
            KernelFlags {
                nodev: true,
                nosuid: true,
                noexec: true,
                atime: Atime::Noatime,
                nodiratime: true,
                lazytime: true,
                sync: true,
                dirsync: true,
            }
        );
        apply_option_list(
            &mut c,
            "dirsync,dev,suid,exec,atime,diratime,nolazytime,async",
        )
        .unwrap();
        let mut want = base();
        want.kernel_flags.dirsync = true;
        assert_eq!(c, want);
        let modes: &[(&str, Atime)] = &[
            ("noatime,relatime", Atime::Relatime),
            ("relatime,noatime", Atime::Noatime),
            ("noatime,strictatime", Atime::Strictatime),
            ("strictatime,atime", Atime::Relatime),
            ("noatime,norelatime", Atime::Strictatime),
        ];
        for (list, want) in modes {
            let mut c = base();
            apply_option_list(&mut c, list).unwrap();
            assert_eq!(c.kernel_flags.atime, *want, "{list}");
        }
    }

    #[test]
    fn ignored_options_change_nothing() {
        let table: &[(&str, Option<&str>)] = &[
            ("defaults", None),
            ("rw", None),
            ("nofail", None),
            ("_netdev", None),
            ("auto", None),
            ("noauto", None),
            ("user", None),
            ("user", Some("alice")),
            ("users", None),
            ("nouser", None),
            ("x-systemd.automount", None),
            ("x-systemd.requires", Some("/mnt/hdd")),
            ("x-systemd.mount-timeout", Some("30")),
            ("x-gvfs-show", None),
            ("subtype", Some("cachefs")),
            ("default_permissions", None),
            ("default-permissions", None),
        ];
        for (key, value) in table {
            let mut c = base();
            apply_option(&mut c, key, *value).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(c, base(), "{key}");
        }
    }

    #[test]
    fn errors() {
        let table: &[(&str, Option<&str>, &str)] = &[
            (
                "foo",
                None,
                "unknown option 'foo': see 'cachefs --help' for the options",
            ),
            ("foo", Some("1"), "unknown option 'foo'"),
            ("max-sizes", Some("1G"), "unknown option 'max-sizes'"),
            ("allow_rot", None, "unknown option 'allow_rot'"),
            ("nosymfollow", None, "unknown option 'nosymfollow'"),
            ("relatime", Some("1"), "option 'relatime' takes no value"),
            (
                "allow_root",
                Some("1"),
                "option 'allow_root' takes no value",
            ),
            (
                "promote_ignore",
                None,
                "option 'promote_ignore' needs a value: write promote_ignore=NAME,... \
                 (promote_ignore= for none)",
            ),
            ("promote_ignore", Some("/usr/bin/ffprobe"), "is a path"),
            ("fsname", None, "option 'fsname' needs a value"),
            ("fsname", Some(""), "option 'fsname' needs a value"),
            ("", None, "empty option name"),
            ("", Some("x"), "has no name"),
            (
                "cache",
                None,
                "option 'cache' needs a value: write cache=DIR",
            ),
            ("cache", Some(""), "option 'cache' needs a value"),
            (
                "max_size",
                None,
                "option 'max_size' needs a value: write max_size=SIZE",
            ),
            ("max-size", None, "option 'max_size' needs a value"),
            (
                "max_size",
                Some("lots"),
                "option 'max_size': invalid size 'lots'",
            ),
            ("max_size", Some("0"), "must be more than 0"),
            (
                "min_free",
                Some("200%"),
                "option 'min_free': percentage '200%'",
            ),
            (
                "max_age",
                Some("forever"),
                "option 'max_age': invalid duration",
            ),
            ("promote", Some("sometimes"), "write auto or manual"),
            (
                "prefetch",
                Some("-1"),
                "option 'prefetch': invalid number '-1'",
            ),
            ("prefetch", Some("99999999999"), "too large"),
            (
                "promote_bw",
                Some("fast"),
                "option 'promote_bw': invalid rate",
            ),
            ("promote_after", Some("1.5M"), "invalid size"),
            ("promote_threads", Some("0"), "must be 1 to 256, not 0"),
            ("promote_threads", Some("257"), "must be 1 to 256"),
            (
                "attr_timeout",
                Some("soon"),
                "option 'attr_timeout': invalid duration",
            ),
            ("entry_timeout", Some("-1"), "invalid duration"),
            ("negative_timeout", Some("1w"), "invalid duration"),
            ("meta_ttl", Some("x"), "invalid duration"),
            (
                "metrics",
                Some("9100"),
                "option 'metrics': invalid address '9100'",
            ),
            ("metrics", Some(":9100"), "invalid address"),
            ("metrics", Some("host:99999"), "invalid address"),
            ("metrics", Some("host:"), "invalid address"),
            ("passthrough", Some("yes"), "write auto, on or off"),
            ("xattr", Some("noattr"), "write passthrough or nosys"),
            (
                "allow_other",
                Some("1"),
                "option 'allow_other' takes no value: write 'allow_other', not 'allow_other=1'",
            ),
            (
                "allow-other",
                Some(""),
                "option 'allow_other' takes no value",
            ),
            ("ro", Some("true"), "option 'ro' takes no value"),
            ("debug", Some("1"), "option 'debug' takes no value"),
            ("noatime", Some("1"), "option 'noatime' takes no value"),
        ];
        for (key, value, want) in table {
            let mut c = base();
            let err = apply_option(&mut c, key, *value)
                .expect_err(&format!("{key}={value:?} should fail"));
            assert!(err.contains(want), "{key}={value:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
            assert_eq!(c, base(), "{key}: a failed option changed the config");
        }
    }

    #[test]
    fn table_and_arity_agree() {
        for spec in OPTIONS {
            assert_eq!(spec.name, normalise(spec.name));
            let mut c = base();
            match spec.kind {
                Kind::Flag(_) => {
                    assert_eq!(arity(spec.name), Some(Arity::Flag));
                    assert!(apply_option(&mut c, spec.name, None).is_ok());
                    assert!(apply_option(&mut c, spec.name, Some("x")).is_err());
                }
                Kind::Value(..) | Kind::List(..) => {
                    assert_eq!(arity(spec.name), Some(Arity::Value));
                    assert_eq!(arity(&spec.name.replace('_', "-")), Some(Arity::Value));
                    assert!(apply_option(&mut c, spec.name, None).is_err());
                }
            }
        }
        assert_eq!(arity("nodev"), Some(Arity::Flag));
        assert_eq!(arity("nofail"), Some(Arity::Flag));
        assert_eq!(arity("x-systemd.automount"), Some(Arity::Flag));
        assert_eq!(arity("foo"), None);
    }

    #[test]
    fn option_lists() {
        let mut c = base();
        apply_option_list(
            &mut c,
            "cache=/ssd/c,allow_other,nofail,max_size=500G,x-systemd.automount,rw,dev,suid",
        )
        .unwrap();
        let mut want = base();
        want.cache = "/ssd/c".into();
        want.allow_other = true;
        want.max_size = Some(500 << 30);
        assert_eq!(c, want);

        // Later wins; empty items are skipped; `=` in a value is kept.
        let mut c = base();
        apply_option_list(&mut c, ",max_size=1G,,max-size=2G,metrics=a=b:1,").unwrap();
        assert_eq!(c.max_size, Some(2 << 30));
        assert_eq!(c.metrics.as_deref(), Some("a=b:1"));

        // Escaped commas and backslashes.
        let mut c = base();
        apply_option_list(&mut c, r"cache=/ssd/a\,b\\c,ro").unwrap();
        assert_eq!(c.cache, PathBuf::from(r"/ssd/a,b\c"));
        assert!(c.read_only);

        // promote_ignore: empty turns the default off; in a list, `\,` separates names.
        let mut c = base();
        assert!(!c.promote_ignore.is_empty());
        apply_option_list(&mut c, "promote_ignore=,ro").unwrap();
        assert!(c.promote_ignore.is_empty());
        let mut c = base();
        apply_option_list(&mut c, r"promote_ignore=ffprobe\,Plex Media Scanner,ro").unwrap();
        assert_eq!(c.promote_ignore, ["ffprobe", "Plex Media Scanner"]);
        assert!(c.read_only);

        assert_eq!(apply_option_list(&mut base(), ""), Ok(()));
        let err = apply_option_list(&mut base(), "cache=/c,bogus,ro").unwrap_err();
        assert_eq!(
            err,
            "unknown option 'bogus': see 'cachefs --help' for the options"
        );

        assert_eq!(
            split_option_list("a=1,b,c=,=d"),
            vec![
                ("a".to_string(), Some("1".to_string())),
                ("b".to_string(), None),
                ("c".to_string(), Some(String::new())),
                (String::new(), Some("d".to_string())),
            ]
        );
    }

    /// Found by tests/fuzz.rs (`fuzz_options_near_valid_lists`): an option name or value
    /// holding a newline (or an escape sequence) was echoed raw, so the error ran over
    /// several lines of the terminal or the log.
    #[test]
    fn option_errors_with_control_characters_are_one_line() {
        let mut cfg = Config::new("/s".into(), "/m".into(), "/c".into());
        for list in [
            "defa\nults",
            "\n",
            "max_size=1\nG",
            "promote=\x1b[2Jx",
            "ro=\r",
        ] {
            let err = apply_option_list(&mut cfg, list).unwrap_err();
            assert!(!err.contains(char::is_control), "{list:?}: {err:?}");
        }
        let err = apply_option_list(&mut cfg, "defa\nults").unwrap_err();
        assert_eq!(
            err,
            "unknown option 'defa\\nults': see 'cachefs --help' for the options"
        );
        // Without control characters, messages are as before.
        assert_eq!(
            apply_option_list(&mut cfg, "bogus").unwrap_err(),
            "unknown option 'bogus': see 'cachefs --help' for the options"
        );
    }
}
