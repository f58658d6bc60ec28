//! Configuration from environment variables, with defaults that work on a developer machine (12-factor).
//!
//! Each service has one typed settings struct built from these helpers; the full table of variables is in
//! `docs/OPERATIONS.md`. Secrets are wrapped in [`Secret`] so `Debug` (and therefore logs) never prints them.

use std::{fmt, str::FromStr, time::Duration};

use anyhow::{Context, bail};

/// Reads `name`, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, or `default` when unset or empty. A value that does not parse is an error naming the
/// variable, never a silent fallback.
pub fn env_parse<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().map_err(|e| anyhow::anyhow!("{name}={value:?} is not valid: {e}"))
        }
        _ => Ok(default),
    }
}

/// A duration given in milliseconds.
pub fn env_millis(name: &str, default_ms: u64) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(env_parse(name, default_ms)?))
}

/// Reads a secret either inline (`NAME`) or from a file (`NAME_FILE`, the Docker secrets convention).
pub fn env_secret(name: &str) -> anyhow::Result<Option<Secret<String>>> {
    if let Ok(value) = std::env::var(name)
        && !value.trim().is_empty()
    {
        return Ok(Some(Secret::new(value.replace("\\n", "\n"))));
    }
    let file_var = format!("{name}_FILE");
    if let Ok(path) = std::env::var(&file_var)
        && !path.trim().is_empty()
    {
        let value = std::fs::read_to_string(path.trim()).with_context(|| format!("reading {file_var}={path}"))?;
        return Ok(Some(Secret::new(value)));
    }
    Ok(None)
}

/// Development or production. Production refuses the built-in development keys and insecure defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

impl Environment {
    /// `WARREN_ENV`: `development` (default) or `production`.
    pub fn from_env() -> anyhow::Result<Self> {
        match env_or("WARREN_ENV", "development").to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Environment::Development),
            "production" | "prod" => Ok(Environment::Production),
            other => bail!("WARREN_ENV={other:?} is not valid: use development or production"),
        }
    }
}

/// A value that must not appear in logs. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself. Call sites are easy to grep for.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How to reach RabbitMQ and which names to use there.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `WARREN_AMQP_URL`. A heartbeat of 10 s is added when the URL sets none, so a dead peer is noticed in
    /// seconds rather than the broker's default minute. The password is redacted from `Debug`.
    pub url: Secret<String>,
    /// `WARREN_AMQP_PREFIX`: the first part of every exchange and queue name. Tests use a fresh one per run.
    pub prefix: String,
}

impl AmqpSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            url: Secret::new(with_default_heartbeat(&env_or(
                "WARREN_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ))),
            prefix: env_or("WARREN_AMQP_PREFIX", "warren"),
        })
    }

    pub fn new(url: &str, prefix: impl Into<String>) -> Self {
        Self { url: Secret::new(with_default_heartbeat(url)), prefix: prefix.into() }
    }
}

fn with_default_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat=10")
    } else {
        format!("{url}?heartbeat=10")
    }
}

/// `WARREN_DATABASE_URL`, shared by the services (each owns its own schema in it).
pub fn database_url() -> Secret<String> {
    Secret::new(env_or("WARREN_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/warren"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_added_only_when_missing() {
        assert_eq!(with_default_heartbeat("amqp://h/%2f"), "amqp://h/%2f?heartbeat=10");
        assert_eq!(with_default_heartbeat("amqp://h/%2f?frame_max=9"), "amqp://h/%2f?frame_max=9&heartbeat=10");
        assert_eq!(with_default_heartbeat("amqp://h/%2f?heartbeat=3"), "amqp://h/%2f?heartbeat=3");
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "[redacted]");
    }
}
