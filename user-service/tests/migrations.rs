//! Migrations against a real PostgreSQL: replicas starting together, and our bookkeeping staying in our schema.

mod support;

use sqlx::postgres::PgPoolOptions;
use support::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_a_fresh_database_at_once_all_succeed() {
    let db = TestDb::empty().await;

    // Each "replica" has its own pool, as separate processes would.
    let replicas: Vec<_> = (0..6)
        .map(|_| {
            let options = db.options();
            tokio::spawn(async move {
                let pool = PgPoolOptions::new().max_connections(1).connect_with(options).await?;
                let result = user_service::migrate(&pool).await;
                pool.close().await;
                result
            })
        })
        .collect();
    for replica in replicas {
        replica.await.unwrap().unwrap();
    }

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM users._sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, user_service::migrator().iter().count() as i64);
}

#[tokio::test]
async fn migrating_twice_is_a_no_op() {
    let db = TestDb::new().await;

    user_service::migrate(&db.pool).await.unwrap();
}

#[tokio::test]
async fn the_migrations_table_lives_in_the_users_schema_not_public() {
    let db = TestDb::new().await;

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_name LIKE '%sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();

    assert_eq!(tables, ["users._sqlx_migrations"]);
}

#[tokio::test]
async fn a_replica_of_the_previous_release_starts_against_a_schema_a_newer_one_migrated() {
    let db = TestDb::new().await;
    // What a newer release leaves behind: a migration this build does not have.
    sqlx::query(
        "INSERT INTO users._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999999, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    user_service::migrate(&db.pool).await.expect("an older replica still starts");
}
