//! The `switchboard` command line as a test binary (the tests package
//! cannot name the host package's binary): `serve` end to end, as an
//! operator runs it.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    switchboard::server::tokio_runtime()
        .expect("an async runtime")
        .block_on(run())
}

async fn run() -> std::process::ExitCode {
    let cli = switchboard::cli::Cli::parse();
    switchboard::cli::init_logging(&cli);
    match switchboard::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
