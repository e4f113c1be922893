//! The log set-up of the workspace's binaries: `tracing` to stderr, filtered by `RUST_LOG`.
//!
//! Both daemons log to stderr, which systemd's journal collects with its own timestamps and
//! levels; colours only when stderr is a terminal. `RUST_LOG` (an `EnvFilter` directive, such
//! as `debug` or `info,defect_agent::pipeline=debug`) overrides each command's default. This
//! module owns that set-up, not what is logged.

use tracing_subscriber::EnvFilter;

/// The filter: `RUST_LOG` when it is set and valid, `default` otherwise.
pub fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the global subscriber: stderr, [`filter`]`(default)`, ANSI colours only on a
/// terminal. A second call (a test that already installed one) changes nothing.
pub fn init(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_applies_without_rust_log_and_a_second_init_is_harmless() {
        if std::env::var_os("RUST_LOG").is_none() {
            let text = filter("warn,rumqttd=off").to_string();
            assert!(
                text.contains("rumqttd=off") && text.contains("warn"),
                "{text}"
            );
        }
        init("info");
        init("debug");
        tracing::info!("logging is set up");
    }
}
