//! The core tier: the library driven in process, without FUSE and without root. It runs
//! as any user, in seconds, on temp dirs the test process owns.
//!
//! Modules, one per area:
//! - `common`: temp SOURCE and CACHE, configurations, a cache filesystem of the tests'
//!   own making (`SimulatedFs`, behind `cache::FreeSpace`), polling.
//! - `kernel`: a stand-in for the kernel's side of FUSE: path walks (again after
//!   ESTALE), backing registration, and the io-mode rules every open must obey.
//! - `ledger`: reserve and evict arithmetic: max_size, min_free, pins, LRU order,
//!   reservations racing publishes.
//! - `promoter`: single flight, cancellation, priorities, prefetch, with a gate in the
//!   promoter's `Events` seam holding copies where a test wants them.
//! - `overlay`: which mode an open is served in (source, copy, passthrough-capable),
//!   transitions at open and release, writes and truncates while readers hold a copy,
//!   stale copies never served, and a model exerciser.
//! - `exerciser`: random operations on a few files, every read checked against the
//!   model and every open against the kernel's rules.
//! - `model` (shared with the integration tests): what a reader must see.

#[path = "core/common.rs"]
mod common;

#[path = "core/exerciser.rs"]
mod exerciser;

#[path = "core/kernel.rs"]
mod kernel;

#[path = "core/ledger.rs"]
mod ledger;

#[path = "core/overlay.rs"]
mod overlay;

#[path = "core/promoter.rs"]
mod promoter;

mod model;
