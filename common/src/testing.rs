//! Helpers for tests against the real RabbitMQ: a fresh name prefix per test so runs never share queues, and
//! removal of what a test declared. Compiled only with the `testing` feature (the crates' dev-dependencies).

use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};

use crate::{
    amqp::topology::{OPERATIONS, Topology},
    config::{AmqpSettings, env_or},
};

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
