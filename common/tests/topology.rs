//! The shared topology as the broker shows it (`rabbitmqctl`, the data of the management UI).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{
    amqp::{Broker, topology::DEAD_LETTER_MAX_LENGTH},
    testing,
};
use lapin::{
    Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};

/// The `arguments` column of `rabbitmqctl list_queues` for one queue.
fn queue_arguments(queue: &str) -> Option<String> {
    let output = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "arguments"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl list_queues failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{queue}\t")).map(str::to_owned))
}

async fn connected(broker: &Broker) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.current().is_none() {
        assert!(Instant::now() < deadline, "never connected (and so never declared)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_dead_letter_queue_keeps_only_the_newest_requests() {
    common::telemetry::init_for_tests();
    let settings = testing::unique_amqp_settings();
    let broker = Broker::start(&settings, "topology test".into());
    connected(&broker).await;

    let arguments = queue_arguments(&broker.topology().dead_letter_queue()).expect("the queue is listed");

    assert!(arguments.contains(&format!("x-max-length\",{DEAD_LETTER_MAX_LENGTH}")), "{arguments}");
    assert!(arguments.contains("drop-head"), "{arguments}");
    broker.close().await;
    testing::delete_topology(&settings.prefix).await;
}

/// A dead-letter queue declared by a release before the limit (queue arguments cannot change) does not stop a
/// component from starting.
#[tokio::test]
async fn a_dead_letter_queue_from_before_the_limit_is_used_as_it_is() {
    common::telemetry::init_for_tests();
    let settings = testing::unique_amqp_settings();
    let queue = common::amqp::topology::Topology::new(settings.prefix.clone()).dead_letter_queue();
    let old = Connection::connect(&testing::amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = old.create_channel().await.unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, quorum)
        .await
        .unwrap();

    let broker = Broker::start(&settings, "topology test".into());
    connected(&broker).await;

    let arguments = queue_arguments(&queue).expect("the queue is listed");
    assert!(!arguments.contains("x-max-length"), "the old queue is kept: {arguments}");
    broker.close().await;
    old.close(200, "done".into()).await.unwrap();
    testing::delete_topology(&settings.prefix).await;
}
