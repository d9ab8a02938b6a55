//! The `cachefs` binary: argv to a command, run it, map the outcome to an exit code
//! (0 success, 1 runtime failure, 2 bad usage; see CONTRACT.md).

use std::process::ExitCode;

use cachefs::cli::{self, CliError, Command};

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CACHEFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

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
        Command::Mount(mut cfg) => {
            if let Err(msg) = cli::check_paths(&mut cfg) {
                eprintln!("cachefs: {msg}");
                return ExitCode::from(EXIT_USAGE);
            }
            init_logging(cfg.debug);
            match cachefs::mount::run_foreground(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cachefs: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        other => ExitCode::from(cachefs::control::run_command(other)),
    }
}
