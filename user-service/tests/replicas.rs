//! Two user-service processes (the real binary) sharing the request queues, with one stopped or killed while
//! requests are in flight. Every request must end answered once or failed with a retryable error.

use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    amqp::{Broker, CallContext, RpcClient},
    config::AmqpSettings,
    protocol::{
        ApiError, ErrorCode,
        users::{AuthResponse, Register, RegisterRequest},
    },
    testing,
};
use sqlx::Connection;

struct Replica(Child);

impl Replica {
    fn start(db: &testing::TestDb, amqp: &AmqpSettings) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_user-service"))
            .env("WARREN_DATABASE_URL", db.url())
            .env("WARREN_AMQP_URL", testing::amqp_url())
            .env("WARREN_AMQP_PREFIX", &amqp.prefix)
            .env("RUST_LOG", std::env::var("TEST_LOG").map_or("error".to_owned(), |_| "info".to_owned()))
            .stdin(Stdio::null())
            .spawn()
            .expect("the user-service binary starts");
        Replica(child)
    }

    fn terminate(&mut self) {
        let status = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
    }

    fn kill_abruptly(&mut self) {
        self.0.kill().expect("SIGKILL delivered");
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("the replica exits")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn client(amqp: &AmqpSettings) -> (Broker, RpcClient) {
    let broker = Broker::start(amqp, "replica test".into());
    let client = RpcClient::start(broker.clone(), "test", &uuid::Uuid::new_v4().simple().to_string());
    (broker, client)
}

async fn wait_for_replicas(client: &RpcClient, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(client.is_ready() && client.consumer_count("register").await.unwrap_or(0) >= count) {
        assert!(Instant::now() < deadline, "{count} replicas never consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `n` registrations at once and returns each name with its outcome.
async fn register_many(client: &RpcClient, n: usize) -> Vec<(String, Result<AuthResponse, ApiError>)> {
    let calls = (0..n).map(|i| {
        let client = client.clone();
        async move {
            let username = format!("user{i}");
            let request = RegisterRequest { username: username.clone(), password: "correct horse battery".into() };
            let ctx = CallContext::new(format!("req-{i}"), Duration::from_secs(30));
            (username, client.call::<Register>(&request, &ctx).await)
        }
    });
    futures_util::future::join_all(calls).await
}

async fn stored_usernames(db: &testing::TestDb) -> Vec<String> {
    let mut connection = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    sqlx::query_scalar("SELECT username FROM users.users").fetch_all(&mut connection).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_replica_gracefully_mid_load_loses_no_request() {
    common::telemetry::init_for_tests();
    let db = testing::TestDb::new().await;
    let amqp = testing::unique_amqp_settings();
    let mut first = Replica::start(&db, &amqp);
    let _second = Replica::start(&db, &amqp);
    let (broker, client) = client(&amqp).await;
    wait_for_replicas(&client, 2).await;

    let load = tokio::spawn({
        let client = client.clone();
        async move { register_many(&client, 120).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.terminate();
    let results = load.await.unwrap();

    assert!(first.wait().success(), "a graceful stop exits cleanly");
    for (name, result) in &results {
        assert!(result.is_ok(), "{name}: {result:?}");
    }
    assert_eq!(stored_usernames(&db).await.len(), results.len());
    broker.close().await;
    testing::delete_topology(&amqp.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_replica_mid_load_answers_every_request_once_or_with_a_retryable_error() {
    common::telemetry::init_for_tests();
    let db = testing::TestDb::new().await;
    let amqp = testing::unique_amqp_settings();
    let mut first = Replica::start(&db, &amqp);
    let _second = Replica::start(&db, &amqp);
    let (broker, client) = client(&amqp).await;
    wait_for_replicas(&client, 2).await;

    let load = tokio::spawn({
        let client = client.clone();
        async move { register_many(&client, 120).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.kill_abruptly();
    let results = load.await.unwrap();

    let stored: HashSet<String> = stored_usernames(&db).await.into_iter().collect();
    let mut answered = 0;
    for (name, result) in &results {
        match result {
            Ok(auth) => {
                answered += 1;
                assert_eq!(&auth.user.username, name);
                assert!(stored.contains(name), "{name} was confirmed but not stored");
            }
            // Retryable: the person tries again and gets a clear answer.
            Err(error) => assert!(
                matches!(error.code, ErrorCode::Unavailable | ErrorCode::Timeout),
                "{name}: a non-retryable error {error:?}"
            ),
        }
    }
    assert!(answered >= results.len() / 2, "only {answered} of {} answered", results.len());
    // Each name is stored at most once: redelivered requests did not create twins.
    assert!(stored.len() <= results.len());
    broker.close().await;
    testing::delete_topology(&amqp.prefix).await;
}
