//! The binary's configuration from the environment: values that would break every sign-in stop it at start-up,
//! with the variable named, instead of serving refusals.

use std::process::Command;

#[test]
fn a_zero_token_or_session_lifetime_stops_the_service_at_start_up() {
    for variable in ["WARREN_TOKEN_TTL_SECS", "WARREN_SESSION_MAX_AGE_SECS"] {
        let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
            .env(variable, "0")
            // Never reached: the configuration is read first.
            .env("WARREN_DATABASE_URL", "postgres://127.0.0.1:1/none")
            .env("WARREN_AMQP_URL", "amqp://127.0.0.1:1")
            .output()
            .expect("the user-service binary runs");

        assert!(!output.status.success(), "{variable}=0 was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
}
