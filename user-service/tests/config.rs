//! The binary's configuration from the environment: values that would break every sign-in stop it at start-up,
//! with the variable named, instead of serving refusals.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[test]
fn a_token_or_session_lifetime_of_zero_or_beyond_ten_years_stops_the_service_at_start_up() {
    for variable in ["WARREN_TOKEN_TTL_SECS", "WARREN_SESSION_MAX_AGE_SECS"] {
        for value in ["0", "315360001", "18446744073709551615"] {
            let mut child = Command::new(env!("CARGO_BIN_EXE_user-service"))
                .env(variable, value)
                // Never reached when the check works: the configuration is read first.
                .env("WARREN_DATABASE_URL", "postgres://127.0.0.1:1/none")
                .env("WARREN_AMQP_URL", "amqp://127.0.0.1:1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the user-service binary runs");
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("{variable}={value} was accepted: the service went on starting");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!status.success(), "{variable}={value} was accepted");
            assert!(stderr.contains(&format!("{variable} must be 1 to")), "{variable}={value}: {stderr}");
        }
    }
}
