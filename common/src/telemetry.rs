//! Logging set-up shared by every binary: human-readable lines by default, one JSON object per line with
//! `WARREN_LOG_FORMAT=json` (for log shippers). Filtering follows `RUST_LOG` (default `info`).
//!
//! Every request carries a `request_id` field from the gateway through the RPC headers into the services, so one
//! request can be followed across processes by grepping for it.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), so tests can call it.
pub fn init(service: &'static str) {
    // lapin logs every closed channel as an error, including the expected 404 of a consumer probe for a queue no
    // service has declared yet; the connection supervisor logs real connection losses with their cause.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=off,sqlx=warn"));
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
