//! What the overlay counts of the reads and lookups it serves, for `cachefs status` and
//! the Prometheus metrics (both read these atomics, through the daemon's `Status`).
//!
//! Opens served from a copy or from SOURCE are counted by the cache (`Cache::hits`,
//! `Cache::misses`); this counts bytes. Reads of a passthrough open go kernel to backing
//! file and never reach the daemon, so for those the size of the file at open is counted
//! as the bytes the copy offered: an upper bound of what was read from it.

use std::sync::atomic::AtomicU64;

#[derive(Default)]
pub struct Counters {
    /// Bytes the daemon read from cached copies for callers.
    pub cache_read_bytes: AtomicU64,
    /// Bytes the daemon read from SOURCE for callers.
    pub source_read_bytes: AtomicU64,
    /// Opens the kernel serves by passthrough from a cached copy.
    pub passthrough_opens: AtomicU64,
    /// The sizes of the files of those opens.
    pub passthrough_bytes: AtomicU64,
    /// Lookups answered by SOURCE (not by the metadata cache).
    pub source_lookups: AtomicU64,
    /// Times a successor took the mount over from a daemon that died, since it was
    /// mounted.
    pub failovers: AtomicU64,
}
