//! The `cachefs` binary: argv to a command, run it, map the outcome to an exit code
//! (the table in `cachefs::exit`).

use std::process::ExitCode;

use cachefs::cli::{self, CliError, Command};
use cachefs::lifecycle::DaemonError;
use cachefs::logging;

use cachefs::exit;

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    // Hidden: what state a live restart may hand this binary (`cachefs restart`).
    if argv.get(1).is_some_and(|a| a == "state-formats") {
        println!("{}", cachefs::lifecycle::STATE_FORMAT);
        return ExitCode::SUCCESS;
    }
    let command = match cli::parse(argv.clone()) {
        Ok(c) => c,
        Err(CliError::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(CliError::Usage(msg)) if cachefs::control::run::wants_json(&argv) => {
            println!("{}", cachefs::control::run::json_error(&msg));
            return ExitCode::from(exit::USAGE);
        }
        Err(CliError::Usage(msg)) => {
            eprintln!("cachefs: {msg}");
            return ExitCode::from(exit::USAGE);
        }
    };
    match command {
        // exec'd by a running daemon (`cachefs restart`): its mount, served on; or started
        // by a watchdog whose daemon died: its mount, taken over (failover).
        Command::Mount(cfg) if cachefs::lifecycle::resuming() => {
            successor(cfg, cachefs::lifecycle::resume)
        }
        Command::Mount(cfg) if cachefs::lifecycle::taking_over() => {
            successor(cfg, cachefs::lifecycle::take_over)
        }
        Command::Mount(mut cfg) if cfg.foreground => {
            if let Err(msg) = cli::check_paths(&mut cfg) {
                eprintln!("cachefs: {msg}");
                return ExitCode::from(exit::USAGE);
            }
            if let Err(e) = logging::init(cfg.debug, logging::Target::Stderr) {
                eprintln!("cachefs: {e}");
            }
            match cachefs::lifecycle::run_foreground(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cachefs: {e}");
                    ExitCode::from(exit::FAILURE)
                }
            }
        }
        // Returns in the parent once the mount is live (or has failed, or timed out); the
        // daemon goes on in a child of its own, which checks the paths first.
        Command::Mount(cfg) => match cachefs::lifecycle::run_daemon(cfg, cli::check_paths) {
            Ok(()) => ExitCode::SUCCESS,
            Err(DaemonError::Usage(msg)) => {
                eprintln!("cachefs: {msg}");
                ExitCode::from(exit::USAGE)
            }
            Err(DaemonError::Failed(e)) => {
                eprintln!("cachefs: {e}");
                ExitCode::from(exit::FAILURE)
            }
        },
        Command::Feed(args) => ExitCode::from(cachefs::feed::run(args)),
        Command::Man => {
            use std::io::Write;
            match std::io::stdout().write_all(&cachefs::man::render()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cachefs: cannot write the manual page: {e}");
                    ExitCode::from(exit::FAILURE)
                }
            }
        }
        other => ExitCode::from(cachefs::control::run_command(other)),
    }
}

/// Runs a daemon that goes on with a predecessor's mount, logging where the mount
/// logs.
fn successor(
    cfg: cachefs::config::Config,
    run: fn(cachefs::config::Config) -> Result<(), cachefs::lifecycle::MountError>,
) -> ExitCode {
    let target = match (&cfg.log, cfg.foreground) {
        (_, true) => logging::Target::Stderr,
        (Some(p), false) => logging::Target::File(p),
        (None, false) => logging::Target::Syslog,
    };
    if let Err(e) = logging::init(cfg.debug, target) {
        eprintln!("cachefs: {e}");
    }
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cachefs: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
