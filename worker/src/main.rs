//! `cache-worker`: parse the command line, then run until SIGTERM.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cache_worker::Cli::parse();
    let settings = cli.settings();
    if let Err(err) = cache_shared::telemetry::init(&settings.telemetry) {
        eprintln!("error: setting up logging (RUST_LOG): {err}");
        return ExitCode::from(2);
    }
    match cache_worker::run(settings, cache_shared::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
