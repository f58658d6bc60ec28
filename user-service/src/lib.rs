//! user-service: owns Warren's users — registration, login, lookup and search.
//!
//! A tour: [`domain`] turns request strings into valid `Username`s and `Password`s; [`password`] hashes them with
//! argon2id off the async runtime; [`store`] is the only code that touches the `users` schema. The schema's
//! migrations are embedded in the binary ([`migrator`]) and run at start-up ([`migrate`]).

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

pub mod config;
pub mod domain;
pub mod handlers;
pub mod password;
pub mod startup;
pub mod store;

/// The schema user-service owns. message-service shares the database but has its own schema.
pub const SCHEMA: &str = "users";

/// The embedded migrations, configured to keep their bookkeeping table in our own schema
/// (`users._sqlx_migrations`), so message-service's migrator, sharing the database, never sees our history.
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

/// Brings the schema up to date. Safe when several replicas start at once: sqlx takes a PostgreSQL advisory lock
/// (per database) before creating the schema and tables, so one replica migrates and the others wait, then find
/// nothing to do.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // The advisory lock is session-level and sqlx releases it only on success. Run on a connection of our own, closed
    // afterwards, so that a failed or cancelled run cannot leave a lock-holding connection idle in the service's pool
    // (blocking every other replica's migrations for as long as this process lives).
    let dedicated = PgPoolOptions::new().max_connections(1).connect_lazy_with(pool.connect_options().as_ref().clone());
    let result = migrator().run(&dedicated).await;
    dedicated.close().await;
    result.context("running user-service migrations")
}
