//! What an operator sees: `rabbitmqctl list_bindings` (the same data as the management UI) shows the RPC direct
//! exchange with the user-service's queues bound under the exact operation names.

use std::{process::Command, time::Duration};

use common::testing;
use tokio_util::sync::CancellationToken;

fn bindings() -> String {
    let output = Command::new("rabbitmqctl")
        .args(["list_bindings", "-q", "--no-table-headers", "source_name", "destination_name", "routing_key"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn exchanges() -> String {
    let output = Command::new("rabbitmqctl")
        .args(["list_exchanges", "-q", "--no-table-headers", "name", "type", "durable"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_broker_shows_the_direct_exchange_and_the_user_operation_queues() {
    common::telemetry::init_for_tests();
    let db = testing::TestDb::new().await;
    let amqp = testing::unique_amqp_settings();
    let prefix = amqp.prefix.clone();
    let service = user_service::startup::Application::build(user_service::config::Settings::for_tests(&db.url(), amqp))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let running = tokio::spawn(service.run_until_stopped(async move { signal.cancelled().await }));

    let expected: Vec<String> = ["register", "login", "getUsers", "getSelf"]
        .iter()
        .map(|key| format!("{prefix}.rpc\t{prefix}.user-service.{key}\t{key}"))
        .collect();
    let mut listed = String::new();
    for _ in 0..100 {
        listed = bindings();
        if expected.iter().all(|line| listed.lines().any(|l| l == line)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for line in &expected {
        assert!(listed.lines().any(|l| l == line), "missing binding {line:?} in:\n{listed}");
    }
    assert!(exchanges().lines().any(|l| l == format!("{prefix}.rpc\tdirect\ttrue")), "no durable direct exchange");
    stop.cancel();
    running.await.unwrap().unwrap();
    testing::delete_topology(&prefix).await;
}
