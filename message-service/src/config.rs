//! message-service settings, from environment variables (see docs/OPERATIONS.md).

use std::time::Duration;

use common::config::{AmqpSettings, Secret, database_url, env_millis, env_or, env_parse};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `WARREN_INSTANCE_ID`: shown in the management UI's connection and consumer names.
    pub instance_id: String,
    pub amqp: AmqpSettings,
    /// `WARREN_DATABASE_URL`.
    pub database_url: Secret<String>,
    /// `WARREN_MESSAGE_DB_MAX_CONNECTIONS`, default 16. Plus one (the group committer's own), together with the
    /// user-service's pools, this must stay under PostgreSQL's `max_connections` (100 by default) for every replica.
    pub db_max_connections: usize,
    /// `WARREN_MESSAGE_BATCH_MAX`, default 512: most sends in one group-commit transaction.
    pub batch_max: usize,
    /// `WARREN_MESSAGE_PREFETCH`, default 512: requests of one operation a replica holds at once. It bounds the
    /// group-commit batch from above, so it is at least `batch_max`.
    pub prefetch: u16,
    /// `WARREN_RPC_TIMEOUT_MS`, default 5000: how long to wait for the user-service.
    pub rpc_timeout: Duration,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            instance_id: env_or("WARREN_INSTANCE_ID", &default_instance_id()),
            amqp: AmqpSettings::from_env()?,
            database_url: database_url(),
            db_max_connections: env_parse("WARREN_MESSAGE_DB_MAX_CONNECTIONS", 16)?,
            batch_max: env_parse("WARREN_MESSAGE_BATCH_MAX", 512)?,
            prefetch: env_parse("WARREN_MESSAGE_PREFETCH", 512)?,
            rpc_timeout: env_millis("WARREN_RPC_TIMEOUT_MS", 5_000)?,
        })
    }

    pub fn for_tests(database_url: &str, amqp: AmqpSettings) -> Self {
        Self {
            instance_id: default_instance_id(),
            amqp,
            database_url: Secret::new(database_url.to_owned()),
            db_max_connections: 4,
            batch_max: 512,
            prefetch: 512,
            rpc_timeout: Duration::from_secs(5),
        }
    }
}

fn default_instance_id() -> String {
    format!("message-service-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
