//! Sends that meet at the gateway travel to the message-service together: a burst from many sockets costs far
//! fewer `sendMessages` requests than messages, each send still gets its own answer, and a lone send goes at
//! once as a batch of one. The message-service here is a stand-in that counts the batches it receives.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    amqp::{Broker, RpcClient, RpcServer},
    protocol::{
        ApiError, RpcReply,
        messages::{Message, SendBatchResult, SendMessages},
    },
};
use serde_json::json;
use support::{Options, spawn_app_with, ws::WsClient};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sends_travels_in_few_batches_and_each_gets_its_own_answer() {
    let app = spawn_app_with(Options::default()).await;
    let batches = Arc::new(AtomicUsize::new(0));
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let broker = Broker::start(&app.amqp, "stand-in message-service".into());
    let stop = CancellationToken::new();
    let server = RpcServer::new(broker.clone(), "stand-in").handle::<SendMessages, _, _>({
        let (batches, sizes) = (batches.clone(), sizes.clone());
        move |batch, _| {
            let (batches, sizes) = (batches.clone(), sizes.clone());
            async move {
                batches.fetch_add(1, Ordering::SeqCst);
                sizes.lock().unwrap().push(batch.sends.len());
                // A commit takes a moment; sends arriving meanwhile must queue for the next batch.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let results = batch
                    .sends
                    .into_iter()
                    .map(|s| match s.request.body.as_str() {
                        "refuse me" => RpcReply::Err(ApiError::forbidden("not a member")),
                        _ => RpcReply::Ok(Message {
                            conversation_id: s.request.conversation_id.unwrap_or(0),
                            seq: 1,
                            sender_id: s.user_id,
                            client_message_id: s.request.client_message_id,
                            body: s.request.body,
                            sent_at: 0,
                        }),
                    })
                    .collect();
                Ok(SendBatchResult { results })
            }
        }
    });
    let serving = tokio::spawn(server.run(stop.clone()));
    let (token, user) = app.register("burst").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let probe = RpcClient::start(broker.clone(), "probe", &uuid::Uuid::new_v4().simple().to_string());
    while probe.consumer_count("sendMessages").await.unwrap_or(0) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stand-in never consumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A lone send: a batch of one, answered.
    let (mut lone, _) = WsClient::authenticated(&app, &token).await;
    let reply = lone.call("sendMessage", json!({ "conversationId": 1, "clientMessageId": "lone", "body": "hi" })).await;
    assert_eq!(reply["result"]["data"]["clientMessageId"], "lone");
    assert_eq!(sizes.lock().unwrap().as_slice(), [1]);

    // A burst: 8 sockets × 25 sends in flight at once.
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(WsClient::authenticated(&app, &token).await.0);
    }
    let bursts = sockets.into_iter().enumerate().map(|(s, mut socket)| async move {
        for i in 0..25 {
            let body = if i == 7 { "refuse me".to_owned() } else { format!("m{i}") };
            socket
                .send_json(&json!({ "type": "sendMessage", "id": format!("{s}-{i}"), "conversationId": s + 1,
                    "clientMessageId": format!("c{s}-{i}"), "body": body }))
                .await;
        }
        let mut answers = Vec::new();
        for _ in 0..25 {
            answers.push(socket.next_frame().await);
        }
        (s, answers)
    });
    let results = futures_util::future::join_all(bursts).await;

    for (s, answers) in results {
        for answer in answers {
            let id = answer["id"].as_str().unwrap().to_owned();
            let i: usize = id.split('-').nth(1).unwrap().parse().unwrap();
            if i == 7 {
                assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
            } else {
                assert_eq!(answer["result"]["data"]["clientMessageId"], format!("c{s}-{i}"), "{answer}");
                assert_eq!(answer["result"]["data"]["conversationId"], json!(s + 1));
                assert_eq!(answer["result"]["data"]["senderId"], json!(user));
            }
        }
    }
    let total: usize = sizes.lock().unwrap().iter().sum();
    assert_eq!(total, 201);
    let count = batches.load(Ordering::SeqCst);
    assert!(count <= 60, "201 sends took {count} batches: they were not batched");
    stop.cancel();
    serving.await.unwrap();
    broker.close().await;
    app.shutdown().await;
}
