//! The gateway's settings, from environment variables (see docs/OPERATIONS.md for the table).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use common::{
    auth::DEV_PUBLIC_KEY_PEM,
    config::{AmqpSettings, Environment, env_millis, env_or, env_parse, env_secret},
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: Environment,
    /// `WARREN_HTTP_ADDR`, default `127.0.0.1:8080`. Port 0 picks a free port (tests).
    pub http_addr: SocketAddr,
    /// `WARREN_INSTANCE_ID`: names this replica's queues; random when unset.
    pub instance_id: String,
    pub amqp: AmqpSettings,
    /// `WARREN_JWT_PUBLIC_KEY` or `_FILE`: Ed25519 public key (PEM). The development key when unset, except in
    /// production, where the gateway refuses to start without one.
    pub jwt_public_key_pem: String,
    /// `WARREN_ALLOWED_ORIGINS`: comma-separated web origins allowed for CORS and WebSocket upgrades.
    pub allowed_origins: Vec<String>,
    /// `WARREN_RPC_TIMEOUT_MS`, default 5000: how long a request waits for a service.
    pub rpc_timeout: Duration,
    /// `WARREN_AUTH_RATE_PER_MINUTE` (default 30) and `WARREN_AUTH_RATE_BURST` (default 10): register and login
    /// attempts allowed per client address.
    pub auth_rate_per_minute: u32,
    pub auth_rate_burst: u32,
    /// `WARREN_TRUST_FORWARDED_FOR`: take the client address from `X-Forwarded-For` (only behind a proxy you run).
    pub trust_forwarded_for: bool,
    /// `WARREN_WEB_DIR`: the built web app to serve at `/`, if any.
    pub web_dir: Option<PathBuf>,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let environment = Environment::from_env()?;
        let jwt_public_key_pem = match env_secret("WARREN_JWT_PUBLIC_KEY")? {
            Some(pem) => pem.expose().clone(),
            None if environment == Environment::Production => {
                bail!("WARREN_JWT_PUBLIC_KEY (or WARREN_JWT_PUBLIC_KEY_FILE) is required in production")
            }
            None => DEV_PUBLIC_KEY_PEM.to_owned(),
        };
        if environment == Environment::Production && jwt_public_key_pem.trim() == DEV_PUBLIC_KEY_PEM.trim() {
            bail!("the development JWT key must not be used in production");
        }
        let web_dir = std::env::var("WARREN_WEB_DIR").ok().filter(|d| !d.trim().is_empty()).map(PathBuf::from);
        Ok(Self {
            environment,
            http_addr: env_or("WARREN_HTTP_ADDR", "127.0.0.1:8080").parse().context("WARREN_HTTP_ADDR")?,
            instance_id: env_or("WARREN_INSTANCE_ID", &default_instance_id()),
            amqp: AmqpSettings::from_env()?,
            jwt_public_key_pem,
            allowed_origins: parse_origins(&env_or(
                "WARREN_ALLOWED_ORIGINS",
                "http://127.0.0.1:8080,http://localhost:8080,http://127.0.0.1:5173,http://localhost:5173",
            )),
            rpc_timeout: env_millis("WARREN_RPC_TIMEOUT_MS", 5_000)?,
            auth_rate_per_minute: env_parse("WARREN_AUTH_RATE_PER_MINUTE", 30)?,
            auth_rate_burst: env_parse("WARREN_AUTH_RATE_BURST", 10)?,
            trust_forwarded_for: env_parse("WARREN_TRUST_FORWARDED_FOR", false)?,
            web_dir,
        })
    }

    /// Settings for tests: development key, port 0, the given broker settings.
    pub fn for_tests(amqp: AmqpSettings) -> Self {
        Self {
            environment: Environment::Development,
            http_addr: "127.0.0.1:0".parse().expect("a valid literal address"),
            instance_id: default_instance_id(),
            amqp,
            jwt_public_key_pem: DEV_PUBLIC_KEY_PEM.to_owned(),
            allowed_origins: vec!["http://localhost:5173".to_owned()],
            rpc_timeout: Duration::from_secs(5),
            auth_rate_per_minute: 6_000,
            auth_rate_burst: 1_000,
            trust_forwarded_for: false,
            web_dir: None,
        }
    }
}

fn parse_origins(list: &str) -> Vec<String> {
    list.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect()
}

pub fn default_instance_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("api-{}", &id[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_trimmed_and_normalised() {
        assert_eq!(
            parse_origins(" http://a.example/ ,,https://b.example"),
            vec!["http://a.example", "https://b.example"]
        );
    }
}
