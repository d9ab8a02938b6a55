//! The validated configuration of one mount: what `cli` and `options` produce from argv,
//! and what every other module reads. Plain data (and the mount flags it means); no I/O
//! happens here.

use std::path::PathBuf;
use std::time::Duration;

/// Free space to keep on the cache's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    /// Percent of the cache filesystem's size, 0..=100.
    Percent(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteMode {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    Auto,
    On,
    Off,
}

/// When the kernel updates access times (`atime`, `relatime`, `noatime`, `strictatime`,
/// `norelatime`): one mode, the last option given wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Atime {
    /// The kernel's default: only when older than the last change, or a day old.
    #[default]
    Relatime,
    Noatime,
    /// On every access (also what `norelatime` asks for: without `strictatime` the
    /// kernel falls back to relatime).
    Strictatime,
}

/// Mount flags that go to the kernel as `MS_*` bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelFlags {
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub atime: Atime,
    pub nodiratime: bool,
    pub lazytime: bool,
    pub sync: bool,
    pub dirsync: bool,
}

/// The kernel's cache lifetimes for attributes, names and missing names, by default.
/// Changes made through the mount are exact at any lifetime: the kernel updates its own
/// caches for what it does, and the daemon invalidates what the kernel cannot know (the
/// other names of a hard-linked file). Only a change made directly in SOURCE (another
/// host on a NAS, a download client writing to the array) waits for the lifetime to
/// pass; a minute keeps that short while every rescan of a library within it is answered
/// by the kernel alone.
pub const DEFAULT_KERNEL_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub cache: PathBuf,
    pub foreground: bool,
    pub max_size: Option<u64>,
    pub min_free: MinFree,
    pub max_age: Option<Duration>,
    pub promote: PromoteMode,
    pub prefetch: u32,
    /// Bytes per second; 0 is unlimited.
    pub promote_bw: u64,
    pub promote_after: u64,
    pub promote_threads: usize,
    /// Process names whose reads never count toward promotion (see `policy`).
    pub promote_ignore: Vec<String>,
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    pub negative_timeout: Duration,
    /// Zero is off.
    pub meta_ttl: Duration,
    /// Daemon mode: how long the parent waits for the mount to be live; zero is forever.
    pub mount_timeout: Duration,
    pub log: Option<PathBuf>,
    /// `ADDR:PORT` as given; resolved when the listener starts.
    pub metrics: Option<String>,
    pub passthrough: Passthrough,
    /// Reopen inodes by file handle where SOURCE allows it (else by parent and name).
    pub inode_handles: bool,
    /// Extended attributes are passed through to SOURCE (`xattr=passthrough`); false
    /// (`xattr=nosys`): the mount has none, and tells the kernel so once (ENOSYS), so
    /// that `ls -l` and Samba stop asking for every file.
    pub xattr: bool,
    pub allow_other: bool,
    /// Root may use the mount besides its owner (without `allow_other`).
    pub allow_root: bool,
    /// mount(2)'s source, what findmnt shows as SOURCE; `None`: SOURCE's path.
    pub fsname: Option<String>,
    /// Mount over a filesystem mounted at MOUNTPOINT (its own root, not a bind mount of
    /// a directory), hiding it; without it that is refused.
    pub nonempty: bool,
    /// A successor takes the mount over if the daemon dies (`lifecycle::watchdog`).
    pub failover: bool,
    pub read_only: bool,
    pub debug: bool,
    pub kernel_flags: KernelFlags,
}

impl Config {
    /// A configuration with every option at its documented default.
    pub fn new(source: PathBuf, mountpoint: PathBuf, cache: PathBuf) -> Config {
        Config {
            source,
            mountpoint,
            cache,
            foreground: false,
            max_size: None,
            min_free: MinFree::Percent(10),
            max_age: None,
            promote: PromoteMode::Auto,
            prefetch: 1,
            promote_bw: 0,
            promote_after: 16 << 20,
            promote_threads: 2,
            promote_ignore: crate::policy::DEFAULT_IGNORE
                .iter()
                .map(|s| s.to_string())
                .collect(),
            attr_timeout: DEFAULT_KERNEL_TTL,
            entry_timeout: DEFAULT_KERNEL_TTL,
            negative_timeout: DEFAULT_KERNEL_TTL,
            meta_ttl: Duration::ZERO,
            // A SOURCE that hangs (a dead NFS server) must not hang `mount -a` at boot.
            mount_timeout: Duration::from_secs(30),
            log: None,
            metrics: None,
            passthrough: Passthrough::Auto,
            inode_handles: true,
            xattr: true,
            allow_other: false,
            allow_root: false,
            fsname: None,
            nonempty: false,
            failover: true,
            read_only: false,
            debug: false,
            kernel_flags: KernelFlags::default(),
        }
    }
}

impl Config {
    /// mount(2)'s `MS_*` flags for this mount's options.
    pub fn mount_flags(&self) -> u64 {
        let k = self.kernel_flags;
        let mut flags = match k.atime {
            Atime::Relatime => libc::MS_RELATIME,
            Atime::Noatime => libc::MS_NOATIME,
            Atime::Strictatime => libc::MS_STRICTATIME,
        };
        for (on, flag) in [
            (self.read_only, libc::MS_RDONLY),
            (k.nodev, libc::MS_NODEV),
            (k.nosuid, libc::MS_NOSUID),
            (k.noexec, libc::MS_NOEXEC),
            (k.nodiratime, libc::MS_NODIRATIME),
            (k.lazytime, libc::MS_LAZYTIME),
            (k.sync, libc::MS_SYNCHRONOUS),
            (k.dirsync, libc::MS_DIRSYNC),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_flags() {
        let base = || Config::new("/s".into(), "/m".into(), "/c".into());
        assert_eq!(base().mount_flags(), libc::MS_RELATIME);
        type Set = fn(&mut Config);
        // Each flag beside the default atime mode.
        let bits: &[(Set, u64)] = &[
            (|c| c.read_only = true, libc::MS_RDONLY),
            (|c| c.kernel_flags.nodev = true, libc::MS_NODEV),
            (|c| c.kernel_flags.nosuid = true, libc::MS_NOSUID),
            (|c| c.kernel_flags.noexec = true, libc::MS_NOEXEC),
            (|c| c.kernel_flags.nodiratime = true, libc::MS_NODIRATIME),
            (|c| c.kernel_flags.lazytime = true, libc::MS_LAZYTIME),
            (|c| c.kernel_flags.sync = true, libc::MS_SYNCHRONOUS),
            (|c| c.kernel_flags.dirsync = true, libc::MS_DIRSYNC),
        ];
        for (set, bit) in bits {
            let mut c = base();
            set(&mut c);
            assert_eq!(
                c.mount_flags(),
                libc::MS_RELATIME | bit,
                "{:?}",
                c.kernel_flags
            );
        }
        for (atime, want) in [
            (Atime::Relatime, libc::MS_RELATIME),
            (Atime::Noatime, libc::MS_NOATIME),
            (Atime::Strictatime, libc::MS_STRICTATIME),
        ] {
            let mut c = base();
            c.kernel_flags.atime = atime;
            assert_eq!(c.mount_flags(), want, "{atime:?}");
        }
    }
}
