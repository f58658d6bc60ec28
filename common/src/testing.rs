//! Helpers for tests against the real RabbitMQ: a fresh name prefix per test so runs never share queues, and
//! removal of what a test declared. Compiled only with the `testing` feature (the crates' dev-dependencies).

use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};

use crate::{
    amqp::{
        RpcClient,
        topology::{OPERATIONS, Topology},
    },
    config::{AmqpSettings, env_or},
};

/// Waits until `client` can call (connected, its reply queue consumed) and each operation in `keys` has a
/// consumer (a service, or a test's stand-in, is serving it); panics naming what is missing after `within`.
/// Consumers alone are not enough: they are probed on a channel of their own, so they can be seen before the
/// client's reply queue is, and a call made then fails as "unavailable".
pub async fn until_served(client: &RpcClient, keys: &[&str], within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    until_ready(client, within).await;
    for key in keys {
        while client.consumer_count(key).await.unwrap_or(0) == 0 {
            assert!(std::time::Instant::now() < deadline, "{key} never served");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Waits until `client` can call (connected, its reply queue consumed); panics after `within`.
pub async fn until_ready(client: &RpcClient, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    while !client.is_ready() {
        assert!(std::time::Instant::now() < deadline, "the RPC client never became ready to call");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The workspace binary `name`, found beside `own` (a test's own `env!("CARGO_BIN_EXE_…")`): tests that start
/// Warren's services as processes use the binaries built with them. Panics, saying how to build them, when missing.
pub fn workspace_binary(own: &str, name: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(own).with_file_name(name);
    assert!(path.exists(), "{} is missing: build the workspace first (`make test` does)", path.display());
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a process under test to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The broker tests use: `WARREN_AMQP_URL` or the local default.
pub fn amqp_url() -> String {
    env_or("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// Settings with a prefix no other test uses: `test-<random>`.
pub fn unique_amqp_settings() -> AmqpSettings {
    AmqpSettings::new(&amqp_url(), format!("test-{}", uuid::Uuid::new_v4().simple()))
}

/// Deletes the durable queues and exchanges under `prefix` (exclusive ones go with their connections).
/// Best effort: a test that crashed leaves its queues, which `make test` sweeps before each run.
pub async fn delete_topology(prefix: &str) {
    let Ok(connection) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else { return };
    let topology = Topology::new(prefix);
    let mut queues: Vec<String> = OPERATIONS.iter().map(|(key, _)| topology.rpc_queue(key)).collect();
    queues.push(topology.dead_letter_queue());
    for queue in queues {
        // Each failed delete (a queue never declared) closes its channel, so use a fresh one each time.
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
        }
    }
    for exchange in [topology.rpc_exchange(), topology.events_exchange(), topology.dead_letter_exchange()] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
        }
    }
    let _ = connection.close(200, "test cleanup".into()).await;
}

/// A publisher of events on `settings`' prefix, standing in for the message-service, returned once its connection
/// is up (with its broker, to close at the end).
pub async fn connected_publisher(settings: &AmqpSettings) -> (crate::amqp::Broker, crate::amqp::EventPublisher) {
    let broker = crate::amqp::Broker::start(settings, "test publisher".into());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !broker.is_connected() {
        assert!(std::time::Instant::now() < deadline, "the publisher never connected");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let publisher = crate::amqp::EventPublisher::new(broker.clone());
    (broker, publisher)
}

/// Closes the broker side of the AMQP connection whose client-given name contains `name` — what a network fault
/// or an operator would do — leaving every other test's connections alone.
pub fn close_connection_named(name: &str) {
    use std::process::Command;
    // Tab-separated output: its pids (`<rabbit@host.1.2.0>`) are what close_connection accepts; the JSON
    // formatter's `#PID<…>` are not.
    let output = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl list_connections failed");
    let listing = String::from_utf8_lossy(&output.stdout);
    let pid = listing
        .lines()
        .find(|line| line.starts_with('<') && line.contains(name))
        .and_then(|line| line.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {name} is listed"))
        .to_owned();
    let status = Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "test: simulated connection loss"])
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl close_connection failed");
}

/// A fresh, empty PostgreSQL database per test (`warren_test_<uuid>`), so tests run in parallel without seeing
/// each other's rows. Services under test migrate it themselves at start-up, as in production. Dropping the value
/// drops the database (best effort, `WITH (FORCE)`); `make test` sweeps any a crashed run left behind.
/// `TEST_DATABASE_URL` points at the maintenance database (default `postgres://postgres@127.0.0.1:5432/postgres`).
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        use sqlx::Connection;
        let name = format!("warren_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url()).await.expect("connect to the maintenance database");
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let _ = admin.close().await;
        Self { name }
    }

    /// Starts an outage of this database alone, as a PostgreSQL restart or failover looks to its clients: new
    /// connections are refused (`ALLOW_CONNECTIONS false`) and every open one is terminated. Returns how many were
    /// terminated; [`TestDb::end_outage`] lets connections in again. Other tests' databases are not touched.
    pub async fn begin_outage(&self) -> i64 {
        let mut admin = self.allow_connections(false).await;
        let terminated: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1) t",
        )
        .bind(&self.name)
        .fetch_one(&mut admin)
        .await
        .expect("terminate the database's connections");
        let _ = sqlx::Connection::close(admin).await;
        terminated
    }

    /// Ends [`TestDb::begin_outage`]: the database accepts connections again.
    pub async fn end_outage(&self) {
        let _ = sqlx::Connection::close(self.allow_connections(true).await).await;
    }

    /// Sets whether this database accepts connections; returns the maintenance connection that did it.
    async fn allow_connections(&self, allow: bool) -> sqlx::PgConnection {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&admin_url()).await.expect("connect to the maintenance database");
        let name = &self.name;
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS {allow}"#)))
            .execute(&mut admin)
            .await
            .expect("set ALLOW_CONNECTIONS");
        admin
    }

    /// The URL of this test's database.
    pub fn url(&self) -> String {
        let admin = admin_url();
        match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{}", self.name),
            None => admin,
        }
    }
}

fn admin_url() -> String {
    env_or("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the work.
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let mut admin = sqlx::PgConnection::connect(&admin_url()).await.ok()?;
                let drop = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.ok()?;
                admin.close().await.ok()
            })
        })
        .join();
    }
}
