//! A fresh PostgreSQL database per test, so tests run in parallel without seeing each other's rows.
//!
//! `TestDb::new()` creates `warren_test_<uuid>` (through `common::testing`) and runs the migrations; dropping it
//! drops the database, so a failing test cleans up too.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use user_service::domain::{Password, Username};
use user_service::password::{PasswordHash, PasswordHasher};

/// A fresh database (see `common::testing::TestDb`) with a pool on it.
#[derive(Debug)]
pub struct TestDb {
    pub pool: PgPool,
    // Dropped last: drops the database.
    db: common::testing::TestDb,
}

impl TestDb {
    /// A new, migrated database.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        user_service::migrate(&db.pool).await.expect("migrations run");
        db
    }

    /// A new database with nothing in it, not even the schema.
    pub async fn empty() -> Self {
        let db = common::testing::TestDb::new().await;
        let pool = PgPoolOptions::new().max_connections(5).connect_with(options_for(&db)).await.expect("connect");
        Self { pool, db }
    }

    /// This test's database URL.
    pub fn url(&self) -> String {
        self.db.url()
    }

    /// Connection options for this test's database, for tests that need their own pools.
    pub fn options(&self) -> PgConnectOptions {
        options_for(&self.db)
    }
}

fn options_for(db: &common::testing::TestDb) -> PgConnectOptions {
    db.url().parse::<PgConnectOptions>().expect("a PostgreSQL URL").disable_statement_logging()
}

pub fn username(name: &str) -> Username {
    Username::parse(name).expect("valid username")
}

/// A real argon2id hash, computed once per test binary (hashing costs ~30 ms and the store never reads it).
pub async fn some_hash() -> PasswordHash {
    static HASH: tokio::sync::OnceCell<PasswordHash> = tokio::sync::OnceCell::const_new();
    HASH.get_or_init(|| async {
        let password = Password::parse("correct horse battery").expect("valid password");
        PasswordHasher::new().hash(&password, None).await.expect("hash")
    })
    .await
    .clone()
}
