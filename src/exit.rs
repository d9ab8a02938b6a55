//! The process's exit codes: the one table, as docs/reference.md documents it.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | runtime failure: the message on stderr (or the JSON `error`) says what and why |
//! | 2 | bad usage or a bad option: nothing was started |
//!
//! Every `exit`, `_exit` and `ExitCode` in the crate takes its number from here.

/// The command did what it was asked.
pub const SUCCESS: u8 = 0;
/// It ran and failed: a mount that did not come up, a daemon that answered an error, a
/// path that failed to promote, a mount that did not go away.
pub const FAILURE: u8 = 1;
/// It was asked wrongly (an unknown option, a missing or unusable path) and started nothing.
pub const USAGE: u8 = 2;
