//! The `cachefs` binary: argv to a command, run it, map the outcome to an exit code
//! (0 success, 1 runtime failure, 2 bad usage; see CONTRACT.md).

use std::process::ExitCode;

use cachefs::cli::{self, CliError, Command};
use cachefs::logging;
use cachefs::mount::DaemonError;

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(CliError::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(CliError::Usage(msg)) => {
            eprintln!("cachefs: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Mount(mut cfg) if cfg.foreground => {
            if let Err(msg) = cli::check_paths(&mut cfg) {
                eprintln!("cachefs: {msg}");
                return ExitCode::from(EXIT_USAGE);
            }
            if let Err(e) = logging::init(cfg.debug, logging::Target::Stderr) {
                eprintln!("cachefs: {e}");
            }
            match cachefs::mount::run_foreground(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cachefs: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        // Returns in the parent once the mount is live (or has failed, or timed out); the
        // daemon goes on in a child of its own, which checks the paths first.
        Command::Mount(cfg) => match cachefs::mount::run_daemon(cfg, cli::check_paths) {
            Ok(()) => ExitCode::SUCCESS,
            Err(DaemonError::Usage(msg)) => {
                eprintln!("cachefs: {msg}");
                ExitCode::from(EXIT_USAGE)
            }
            Err(DaemonError::Failed(e)) => {
                eprintln!("cachefs: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        other => ExitCode::from(cachefs::control::run_command(other)),
    }
}
