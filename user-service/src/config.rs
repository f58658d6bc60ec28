//! user-service settings, from environment variables (see docs/OPERATIONS.md).

use std::time::Duration;

use anyhow::bail;
use common::{
    auth::{DEV_PRIVATE_KEY_PEM, is_development_key},
    config::{AmqpSettings, Environment, Secret, database_url, env_or, env_parse, env_secret},
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: Environment,
    /// `WARREN_INSTANCE_ID`: shown in the management UI's connection and consumer names.
    pub instance_id: String,
    pub amqp: AmqpSettings,
    /// `WARREN_DATABASE_URL`.
    pub database_url: Secret<String>,
    /// `WARREN_USER_DB_MAX_CONNECTIONS`, default 10.
    pub db_max_connections: u32,
    /// `WARREN_JWT_PRIVATE_KEY` or `_FILE`: the Ed25519 signing key (PEM, PKCS#8). Required in production.
    pub jwt_private_key_pem: Secret<String>,
    /// `WARREN_TOKEN_TTL_SECS`, default one day: how long one token is accepted.
    pub token_ttl: Duration,
    /// `WARREN_SESSION_MAX_AGE_SECS`, default 30 days: how long `refreshToken` keeps a sign-in going.
    pub session_max_age: Duration,
    /// `WARREN_USER_PREFETCH`, default 32: requests of one operation a replica holds at once.
    pub prefetch: u16,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let environment = Environment::from_env()?;
        let jwt_private_key_pem = match env_secret("WARREN_JWT_PRIVATE_KEY")? {
            Some(pem) => pem,
            None if environment == Environment::Production => {
                bail!("WARREN_JWT_PRIVATE_KEY (or WARREN_JWT_PRIVATE_KEY_FILE) is required in production")
            }
            None => Secret::new(DEV_PRIVATE_KEY_PEM.to_owned()),
        };
        if is_development_key(jwt_private_key_pem.expose()) {
            if environment == Environment::Production {
                bail!("the development JWT key must not be used in production");
            }
            tracing::warn!(
                "signing tokens with the development key, which is public: anyone can forge a token. Outside a \
                 developer machine set WARREN_ENV=production and WARREN_JWT_PRIVATE_KEY"
            );
        }
        let token_ttl = lifetime("WARREN_TOKEN_TTL_SECS", 86_400)?;
        let session_max_age = lifetime("WARREN_SESSION_MAX_AGE_SECS", 30 * 86_400)?;
        Ok(Self {
            environment,
            instance_id: env_or("WARREN_INSTANCE_ID", &default_instance_id()),
            amqp: AmqpSettings::from_env()?,
            database_url: database_url(),
            db_max_connections: env_parse("WARREN_USER_DB_MAX_CONNECTIONS", 10)?,
            jwt_private_key_pem,
            token_ttl,
            session_max_age,
            prefetch: env_parse("WARREN_USER_PREFETCH", 32)?,
        })
    }

    /// Settings for tests: development key, the given database and broker.
    pub fn for_tests(database_url: &str, amqp: AmqpSettings) -> Self {
        Self {
            environment: Environment::Development,
            instance_id: default_instance_id(),
            amqp,
            database_url: Secret::new(database_url.to_owned()),
            db_max_connections: 5,
            jwt_private_key_pem: Secret::new(DEV_PRIVATE_KEY_PEM.to_owned()),
            token_ttl: Duration::from_secs(3_600),
            session_max_age: Duration::from_secs(30 * 86_400),
            prefetch: 32,
        }
    }
}

/// Longest token or session lifetime accepted: ten years.
const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

/// A token or session lifetime in seconds. Zero would make every sign-in fail, and so would one too long to be a
/// timestamp: both stop the service at start-up instead. (A session shorter than a token only shortens its
/// tokens.)
fn lifetime(name: &str, default: u64) -> anyhow::Result<Duration> {
    let seconds: u64 = env_parse(name, default)?;
    if !(1..=MAX_LIFETIME_SECS).contains(&seconds) {
        bail!("{name} must be 1 to {MAX_LIFETIME_SECS} seconds, not {seconds}");
    }
    Ok(Duration::from_secs(seconds))
}

fn default_instance_id() -> String {
    format!("user-service-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
