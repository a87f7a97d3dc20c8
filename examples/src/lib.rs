//! Shared helpers for the examples: logging set-up and settings loading.

use std::io::IsTerminal;

/// Logs to stderr at `info` (override with `RUST_LOG`), without colours when
/// stderr is not a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Settings from the file named by `LEADER_SETTINGS` (the card's
/// appsettings.json shape) if set, overridden by the environment
/// (`LeaderElection__*`, `Store__ConnectionString`, `Redis__ConnectionString`,
/// `LEADER_STORE`).
///
/// # Errors
///
/// An unreadable file or invalid settings.
pub fn settings() -> leader::Result<leader::Settings> {
    match std::env::var("LEADER_SETTINGS") {
        Ok(path) if !path.trim().is_empty() => leader::Settings::from_file_and_env(path),
        _ => leader::Settings::from_env(),
    }
}
