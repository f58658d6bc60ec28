//! message-service: owns conversations, their members and their messages.
//!
//! Where a message goes when someone presses Enter: the gateway's `sendMessage` RPC lands in
//! [`handlers::send_message`], which validates it ([`domain`]) and hands it to the group committer
//! ([`commit`]): one transaction per batch allocates dense per-conversation sequence numbers and stores the
//! messages; then the callers are answered and the batch is published on the fanout exchange ([`events`]) for
//! every gateway to push to the members' sockets. [`store`] holds every other query; history and `sync` read by
//! seq ranges. Migrations are embedded and run at start-up ([`migrate`]).

use anyhow::Context as _;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions};

pub mod commit;
pub mod config;
pub mod domain;
pub mod events;
pub mod handlers;
pub mod startup;
pub mod store;

/// The schema message-service owns. user-service shares the database with its own schema.
pub const SCHEMA: &str = "messages";

/// The embedded migrations, with their bookkeeping table in our own schema so the two services' histories never
/// meet.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!();
    migrator.create_schema(SCHEMA);
    migrator.dangerous_set_table_name(format!("{SCHEMA}._sqlx_migrations"));
    // A replica of the previous release must still start against a schema a newer replica has migrated (a
    // rolling upgrade, a rollback): our migrations only add what old code can live with (docs/OPERATIONS.md,
    // "Upgrading"), and by default sqlx refuses to start when the database has a migration it does not know.
    migrator.set_ignore_missing(true);
    migrator
}

/// Brings the schema up to date on a dedicated connection (sqlx holds an advisory lock while migrating, so
/// replicas starting together take turns, and a failed run cannot leave the lock on a pooled connection).
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let pool =
        PgPoolOptions::new().max_connections(1).connect(database_url).await.context("connecting to PostgreSQL")?;
    let result = migrator().run(&pool).await;
    pool.close().await;
    result.context("running message-service migrations")
}
