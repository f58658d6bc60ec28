//! No start order is needed: a process started while RabbitMQ is unreachable keeps trying and connects when it
//! appears. "Appears" is a forwarder to the real broker that starts listening only later in the test.

use std::{
    net::TcpListener as StdListener,
    time::{Duration, Instant},
};

use common::{
    amqp::{Broker, CallContext, RpcClient, RpcServer},
    config::AmqpSettings,
    operation, testing,
};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping(u32);

operation!(Echo, "getSelf", Ping => Ping);

/// Forwards every connection on `listener` to the real broker.
async fn forward(listener: TcpListener) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5672").await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn a_service_started_before_the_broker_waits_and_then_serves() {
    common::telemetry::init_for_tests();
    let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let direct = testing::unique_amqp_settings();
    let late = AmqpSettings::new(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"), direct.prefix.clone());

    // The service starts first, pointed at an address where no broker listens yet.
    let server_broker = Broker::start(&late, "early service".into());
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        let server =
            RpcServer::new(server_broker.clone(), "early").handle::<Echo, _, _>(|ping, _| async move { Ok(ping) });
        async move { server.run(stop).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!server_broker.is_connected(), "nothing listens yet");

    // Now the broker "comes up".
    let forwarder = tokio::spawn(forward(TcpListener::bind(("127.0.0.1", port)).await.unwrap()));
    let client_broker = Broker::start(&direct, "test client".into());
    let client = RpcClient::start(client_broker.clone(), "test", &uuid::Uuid::new_v4().simple().to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let ctx = CallContext::new("start-order", Duration::from_secs(2));
        match client.call::<Echo>(&Ping(7), &ctx).await {
            Ok(reply) => break reply,
            Err(error) => assert!(Instant::now() < deadline, "the early service never served: {error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(reply, Ping(7));
    stop.cancel();
    server.await.unwrap();
    server_broker.close().await;
    client_broker.close().await;
    forwarder.abort();
    testing::delete_topology(&direct.prefix).await;
}
