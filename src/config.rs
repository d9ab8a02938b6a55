//! The validated configuration of one mount: what `cli` and `options` produce from argv,
//! and what every other module reads. Plain data; no I/O happens here.

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

/// Mount flags that go to the kernel as `MS_*` bits (`nodev`, `nosuid`, `noexec`, `noatime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelFlags {
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub noatime: bool,
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
    pub allow_other: bool,
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
            allow_other: false,
            read_only: false,
            debug: false,
            kernel_flags: KernelFlags::default(),
        }
    }
}
