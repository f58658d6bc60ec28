//! Logging set-up shared by every binary: human-readable lines by default, one JSON object per line with
//! `WARREN_LOG_FORMAT=json` (for log shippers). Filtering follows `RUST_LOG` (default `info`), with two libraries
//! kept quiet unless `RUST_LOG` names them (`info,lapin=warn` shows lapin's warnings): lapin, which logs every closed
//! channel as an error, including the expected 404 of a consumer probe for a queue no service has declared yet and
//! the channels that close with the connection when a process stops (the connection supervisor logs real connection
//! losses with their cause); and sqlx below `warn`, which logs every statement.
//!
//! Every request carries a `request_id` field from the gateway through the RPC headers into the services, so one
//! request can be followed across processes by grepping for it.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), so tests can call it.
pub fn init(service: &'static str) {
    let directives = filter_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(filter_directives(None)));
    let json = crate::config::env_or("WARREN_LOG_FORMAT", "text").eq_ignore_ascii_case("json");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt::layer().json().flatten_event(true).with_current_span(true)).try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}

/// The libraries kept quiet unless `RUST_LOG` names them, and how quiet.
const QUIETED: [(&str, &str); 2] = [("lapin", "off"), ("sqlx", "warn")];

/// `RUST_LOG` (default `info`) with [`QUIETED`]'s directives added for the libraries it does not name. Before, an
/// operator's `RUST_LOG=info` (what docker-compose.yml and `make run` set) replaced the whole default and let lapin's
/// spurious errors through.
fn filter_directives(rust_log: Option<&str>) -> String {
    let mut directives = rust_log.map(str::trim).filter(|given| !given.is_empty()).unwrap_or("info").to_owned();
    for (target, level) in QUIETED {
        let named = directives.split(',').map(str::trim).any(|directive| {
            directive.strip_prefix(target).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('=') || rest.starts_with("::") || rest.starts_with('[')
            })
        });
        if !named {
            directives.push_str(&format!(",{target}={level}"));
        }
    }
    directives
}

/// For tests: logs only when `TEST_LOG` is set, so passing runs stay quiet.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init("test");
    }
}

/// The message of a caught panic (what `panic!` was given), for the log line that reports it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&'static str>().copied())
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_keeps_lapin_off_and_sqlx_at_warn_unless_it_names_them() {
        assert_eq!(filter_directives(None), "info,lapin=off,sqlx=warn");
        assert_eq!(filter_directives(Some("  ")), "info,lapin=off,sqlx=warn");
        assert_eq!(filter_directives(Some("info")), "info,lapin=off,sqlx=warn");
        assert_eq!(filter_directives(Some("debug,api=trace")), "debug,api=trace,lapin=off,sqlx=warn");
        assert_eq!(filter_directives(Some("info,lapin=warn")), "info,lapin=warn,sqlx=warn");
        assert_eq!(filter_directives(Some("info, lapin::channel=debug")), "info, lapin::channel=debug,sqlx=warn");
        assert_eq!(filter_directives(Some("sqlx=info,lapin")), "sqlx=info,lapin");
        // A target that only starts with the same letters is another target.
        assert_eq!(filter_directives(Some("lapinx=info")), "lapinx=info,lapin=off,sqlx=warn");
        // Every result is a filter tracing accepts.
        for given in [None, Some("info"), Some("debug,api=trace"), Some("info,lapin=warn")] {
            assert!(EnvFilter::try_new(filter_directives(given)).is_ok(), "{given:?}");
        }
    }
}
