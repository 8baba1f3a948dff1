//! Telemetry: the Prometheus metrics and the log subscriber.

pub mod latency;
pub mod metrics;

pub use latency::Latency;
pub use metrics::{resident_bytes, Metrics};

use crate::config::{LogConfig, LogFormat};

/// Installs the global log subscriber (stderr; text or JSON). `RUST_LOG`, when set, wins
/// over the configured level.
pub fn init_logging(config: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
