//! The RPC client and server against the real RabbitMQ: each test gets its own queue prefix.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    amqp::{Broker, CallContext, RpcClient, RpcServer},
    operation,
    protocol::{ApiError, ErrorCode},
    testing,
};
use lapin::options::QueueDeclareOptions;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Text(String);

// Routing keys of real operations, reused here with test payloads: the plumbing does not care.
operation!(Echo, "getSelf", Text => Text);
operation!(Slow, "getUsers", Text => Text);
operation!(Poison, "login", Text => Text);
operation!(Unserved, "register", Text => Text);

struct Harness {
    prefix: String,
    broker: Broker,
    client: RpcClient,
    instance: String,
}

impl Harness {
    async fn start() -> Self {
        common::telemetry::init_for_tests();
        let settings = testing::unique_amqp_settings();
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let (broker, client) = connected_client(&settings, &instance).await;
        Harness { prefix: settings.prefix.clone(), broker, client, instance }
    }

    /// Another client process of the same instance id (a replica restarted under its pinned name).
    async fn restarted_client(&self) -> (Broker, RpcClient) {
        let settings = common::config::AmqpSettings::new(&testing::amqp_url(), self.prefix.clone());
        connected_client(&settings, &self.instance).await
    }

    fn server(
        &self,
        shutdown: &CancellationToken,
        server: impl FnOnce(RpcServer) -> RpcServer,
    ) -> tokio::task::JoinHandle<Broker> {
        self.server_named("test server", shutdown, server)
    }

    /// A server whose broker connection is named `name` (for `close_connection_named`).
    fn server_named(
        &self,
        name: &str,
        shutdown: &CancellationToken,
        server: impl FnOnce(RpcServer) -> RpcServer,
    ) -> tokio::task::JoinHandle<Broker> {
        let settings = common::config::AmqpSettings::new(&testing::amqp_url(), self.prefix.clone());
        let broker = Broker::start(&settings, name.into());
        let server = server(RpcServer::new(broker.clone(), "test-server"));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            server.run(shutdown).await;
            broker
        })
    }

    async fn wait_for_consumers(&self, key: &str, at_least: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.consumers(key).await.is_some_and(|count| count >= at_least) {
                return;
            }
            assert!(Instant::now() < deadline, "server never consumed {key}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many consumers the operation's queue has; `None` while it does not exist.
    async fn consumers(&self, key: &str) -> Option<u32> {
        let session = self.broker.current().expect("connected");
        let channel = session.channel().await.unwrap();
        let queue = self.broker.topology().rpc_queue(key);
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        channel.queue_declare(queue.into(), options, Default::default()).await.ok().map(|q| q.consumer_count())
    }

    /// Serves `getSelf` (Echo) until a call went through, then stops every replica: the durable queue stays, with
    /// no consumer, and the client's cached count has expired, so a call has to ask the broker whether anyone
    /// serves the queue.
    async fn serve_echo_then_stop(&self) {
        let stop = CancellationToken::new();
        let server = self.server(&stop, echo_server);
        self.wait_for_consumers("getSelf", 1).await;
        assert!(self.client.call::<Echo>(&Text("warm".into()), &ctx(5_000)).await.is_ok());
        stop.cancel();
        server.await.unwrap().close().await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }

    /// How many requests the dead-letter queue holds.
    async fn dead_letters(&self) -> u32 {
        let session = self.broker.current().expect("connected");
        let channel = session.channel().await.unwrap();
        channel
            .queue_declare(
                self.broker.topology().dead_letter_queue().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    async fn finish(self) {
        self.broker.close().await;
        testing::delete_topology(&self.prefix).await;
    }
}

async fn connected_client(settings: &common::config::AmqpSettings, instance: &str) -> (Broker, RpcClient) {
    let broker = Broker::start(settings, "test client".into());
    let client = RpcClient::start(broker.clone(), "test", instance);
    testing::until_ready(&client, Duration::from_secs(10)).await;
    (broker, client)
}

fn ctx(timeout_ms: u64) -> CallContext {
    CallContext::new(uuid::Uuid::new_v4().to_string(), Duration::from_millis(timeout_ms))
}

fn echo_server(server: RpcServer) -> RpcServer {
    server.handle::<Echo, _, _>(|Text(s), _| async move { Ok(Text(format!("echo {s}"))) })
}

#[tokio::test]
async fn a_call_gets_the_reply_of_its_handler() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    let server = h.server(&stop, echo_server);
    h.wait_for_consumers("getSelf", 1).await;

    let reply = h.client.call::<Echo>(&Text("hi".into()), &ctx(5_000)).await;

    assert_eq!(reply, Ok(Text("echo hi".into())));
    stop.cancel();
    server.await.unwrap().close().await;
    h.finish().await;
}

#[tokio::test]
async fn a_handler_error_reaches_the_caller_with_its_code() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    let server = h.server(&stop, |s| s.handle::<Echo, _, _>(|_, _| async { Err(ApiError::conflict("taken")) }));
    h.wait_for_consumers("getSelf", 1).await;

    let reply = h.client.call::<Echo>(&Text("x".into()), &ctx(5_000)).await;

    assert_eq!(reply, Err(ApiError::conflict("taken")));
    stop.cancel();
    server.await.unwrap().close().await;
    h.finish().await;
}

#[tokio::test]
async fn a_restarted_client_never_takes_an_answer_meant_for_its_previous_process() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    // Answers each request after a second, so the first process's request is answered after its restart.
    let server = h.server(&stop, |s| {
        s.handle::<Slow, _, _>(|Text(s), _| async move {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            Ok(Text(format!("answer to {s}")))
        })
    });
    h.wait_for_consumers("getUsers", 1).await;
    let first = {
        let client = h.client.clone();
        tokio::spawn(async move { client.call::<Slow>(&Text("the first process".into()), &ctx(5_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The first process goes (its exclusive reply queue with it) and a new one takes its instance id, and so
    // the reply queue's name, while the first request is still being worked on.
    h.broker.close().await;
    assert!(first.await.unwrap().is_err(), "the first process went before its answer came");
    let (broker, client) = h.restarted_client().await;

    let reply = client.call::<Slow>(&Text("the second process".into()), &ctx(5_000)).await;

    assert_eq!(reply, Ok(Text("answer to the second process".into())));
    stop.cancel();
    server.await.unwrap().close().await;
    broker.close().await;
    testing::delete_topology(&h.prefix).await;
}

#[tokio::test]
async fn a_client_whose_reply_queue_was_deleted_sets_it_up_again_on_the_same_connection() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    let server = h.server(&stop, echo_server);
    h.wait_for_consumers("getSelf", 1).await;
    assert!(h.client.call::<Echo>(&Text("before".into()), &ctx(5_000)).await.is_ok());

    // What an operator might do in the management UI; the client's connection stays up.
    let queue = h.broker.topology().reply_queue("test", &h.instance);
    let status =
        std::process::Command::new("rabbitmqctl").args(["delete_queue", &queue]).status().expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl delete_queue failed");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match h.client.call::<Echo>(&Text("after".into()), &ctx(1_000)).await {
            Ok(reply) => {
                assert_eq!(reply, Text("echo after".into()));
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "never answered again: {error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    server.await.unwrap().close().await;
    h.finish().await;
}

#[tokio::test]
async fn a_call_nobody_ever_served_is_unavailable_at_once() {
    let h = Harness::start().await;

    let started = Instant::now();
    let reply = h.client.call::<Unserved>(&Text("x".into()), &ctx(3_000)).await;

    assert_eq!(reply.unwrap_err().code, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(1_500), "took {:?}", started.elapsed());
    h.finish().await;
}

#[tokio::test]
async fn a_call_after_every_replica_stopped_is_unavailable_at_once() {
    let h = Harness::start().await;
    h.serve_echo_then_stop().await;

    let started = Instant::now();
    let reply = h.client.call::<Echo>(&Text("x".into()), &ctx(3_000)).await;

    assert_eq!(reply.unwrap_err().code, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(1_500), "took {:?}", started.elapsed());
    h.finish().await;
}

/// Holds the reply queue a client of `instance` would declare, exclusively on the harness's own connection, so
/// that client's attach is refused (`RESOURCE_LOCKED`) and retried until [`release_reply_queue`].
async fn hold_reply_queue(h: &Harness, instance: &str) -> (lapin::Channel, String) {
    let queue = h.broker.topology().reply_queue("test", instance);
    let channel = h.broker.current().expect("connected").channel().await.unwrap();
    h.broker.topology().declare_reply_queue(&channel, &queue).await.unwrap();
    (channel, queue)
}

async fn release_reply_queue((channel, queue): (lapin::Channel, String)) {
    channel.queue_delete(queue.as_str().into(), Default::default()).await.unwrap();
}

/// An echo server, and a second client on a connection that is up but whose reply queue is not yet consumed (a
/// process that just started, or just reconnected): the moment its own RPC server may already be taking requests
/// on the same connection. Its reply queue is held by the harness until [`Attaching::release`].
struct Attaching {
    h: Harness,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<Broker>,
    held: Option<(lapin::Channel, String)>,
    broker: Broker,
    client: RpcClient,
}

impl Attaching {
    async fn start() -> Self {
        let h = Harness::start().await;
        let stop = CancellationToken::new();
        let server = h.server(&stop, echo_server);
        h.wait_for_consumers("getSelf", 1).await;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let held = hold_reply_queue(&h, &instance).await;
        let settings = common::config::AmqpSettings::new(&testing::amqp_url(), h.prefix.clone());
        let broker = Broker::start(&settings, "attaching client".into());
        let client = RpcClient::start(broker.clone(), "test", &instance);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !broker.is_connected() {
            assert!(Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!client.is_ready(), "the held reply queue should keep the client from attaching");
        Attaching { h, stop, server, held: Some(held), broker, client }
    }

    async fn release(&mut self) {
        if let Some(held) = self.held.take() {
            release_reply_queue(held).await;
        }
    }

    async fn finish(mut self) {
        self.release().await;
        self.broker.close().await;
        self.stop.cancel();
        self.server.await.unwrap().close().await;
        self.h.finish().await;
    }
}

#[tokio::test]
async fn a_call_made_while_the_client_attaches_to_a_live_connection_waits_for_it_and_is_answered() {
    let mut a = Attaching::start().await;

    let call = tokio::spawn({
        let client = a.client.clone();
        async move { client.call::<Echo>(&Text("early".into()), &ctx(10_000)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!call.is_finished(), "the call gave up while the client was still attaching: {:?}", call.await);
    a.release().await;

    assert_eq!(call.await.unwrap(), Ok(Text("echo early".into())));
    assert!(a.client.is_ready());
    a.finish().await;
}

#[tokio::test]
async fn a_client_that_cannot_attach_answers_unavailable_after_one_bounded_wait_then_at_once_until_attached() {
    let mut a = Attaching::start().await;

    let started = Instant::now();
    let reply = a.client.call::<Echo>(&Text("x".into()), &ctx(30_000)).await;

    // The first call waited for the attach (2 s), then gave up with `unavailable`, not at its 30 s timeout.
    assert_eq!(reply.unwrap_err().code, ErrorCode::Unavailable);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1_900) && waited < Duration::from_secs(15), "took {waited:?}");
    // Later calls on the same connection do not each wait again (a gateway's sends queue behind each one).
    let started = Instant::now();
    let reply = a.client.call::<Echo>(&Text("y".into()), &ctx(30_000)).await;
    assert_eq!(reply.unwrap_err().code, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(1_500), "took {:?}", started.elapsed());
    // Once attached, calls go through again.
    a.release().await;
    testing::until_ready(&a.client, Duration::from_secs(10)).await;
    assert_eq!(a.client.call::<Echo>(&Text("z".into()), &ctx(5_000)).await, Ok(Text("echo z".into())));
    a.finish().await;
}

#[tokio::test]
async fn a_call_while_the_broker_is_unreachable_is_unavailable_at_once() {
    common::telemetry::init_for_tests();
    // Nothing listens on this port: the connection is never up, so there is nothing to wait for.
    let settings = common::config::AmqpSettings::new(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", testing::free_port()),
        format!("test-{}", uuid::Uuid::new_v4().simple()),
    );
    let broker = Broker::start(&settings, "unreachable".into());
    let client = RpcClient::start(broker.clone(), "test", "unreachable");

    let started = Instant::now();
    let reply = client.call::<Echo>(&Text("x".into()), &ctx(10_000)).await;

    assert_eq!(reply.unwrap_err().code, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(1_500), "took {:?}", started.elapsed());
    broker.close().await;
}

#[tokio::test]
async fn a_burst_of_calls_to_a_stopped_service_shares_its_probes_and_is_answered_unavailable() {
    let h = Harness::start().await;
    h.serve_echo_then_stop().await;

    let before = h.client.probes_sent();
    let calls = (0..100).map(|i| {
        let client = h.client.clone();
        async move { client.call::<Echo>(&Text(format!("{i}")), &ctx(10_000)).await }
    });
    let replies = futures_util::future::join_all(calls).await;

    for reply in replies {
        assert_eq!(reply.unwrap_err().code, ErrorCode::Unavailable);
    }
    // One probe for the first call, one (started after they all asked) for the 99 that waited for it.
    let probes = h.client.probes_sent() - before;
    assert!(probes <= 3, "{probes} probes for 100 calls made at once");
    h.finish().await;
}

#[tokio::test]
async fn a_slow_service_times_out_and_the_queued_request_is_dropped_never_executed_nor_dead_lettered() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    let executed = Arc::new(AtomicU32::new(0));
    let counter = executed.clone();
    // One request at a time, each taking longer than the caller waits.
    let server = h.server(&stop, move |s| {
        s.prefetch(1).handle::<Slow, _, _>(move |text, _| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                Ok(text)
            }
        })
    });
    h.wait_for_consumers("getUsers", 1).await;

    let (one, two, short) = (Text("1".into()), Text("2".into()), ctx(500));
    let (first, second) = tokio::join!(h.client.call::<Slow>(&one, &short), h.client.call::<Slow>(&two, &short));
    assert_eq!(first.unwrap_err().code, ErrorCode::Timeout);
    assert_eq!(second.unwrap_err().code, ErrorCode::Timeout);
    // Long enough for the first to finish and the second to have been picked up, had it not expired.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    assert_eq!(executed.load(Ordering::SeqCst), 1, "the expired request must not run late");
    // Dropped, not set aside: the dead-letter queue is for requests that failed, not for ones nobody waited for.
    assert_eq!(h.dead_letters().await, 0);
    stop.cancel();
    server.await.unwrap().close().await;
    h.finish().await;
}

#[tokio::test]
async fn a_poison_request_is_dead_lettered_after_the_delivery_limit_and_others_are_still_served() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let server = h.server(&stop, move |s| {
        echo_server(s).handle::<Poison, _, _>(move |_, _| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                panic!("this request always crashes its handler");
                #[allow(unreachable_code)]
                Ok(Text(String::new()))
            }
        })
    });
    h.wait_for_consumers("login", 1).await;
    // The server consumes its queues one after another: the echo queue may not be served yet.
    h.wait_for_consumers("getSelf", 1).await;

    let (boom, fine, patient) = (Text("boom".into()), Text("fine".into()), ctx(10_000));
    let (poisoned, healthy) =
        tokio::join!(h.client.call::<Poison>(&boom, &patient), h.client.call::<Echo>(&fine, &patient));

    assert_eq!(poisoned.unwrap_err().code, ErrorCode::Internal);
    assert_eq!(healthy, Ok(Text("echo fine".into())));
    assert_eq!(attempts.load(Ordering::SeqCst), common::amqp::topology::DELIVERY_LIMIT);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held = h.dead_letters().await;
        if held == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "dead-letter queue holds {held} messages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.client.call::<Echo>(&Text("after".into()), &ctx(5_000)).await, Ok(Text("echo after".into())));
    stop.cancel();
    server.await.unwrap().close().await;
    h.finish().await;
}

#[tokio::test]
async fn a_request_whose_replica_dies_is_retried_and_one_that_kills_every_replica_is_dead_lettered() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    let name = format!("test crashing server {}", uuid::Uuid::new_v4().simple());
    let runs = Arc::new(std::sync::Mutex::new(Vec::<(String, u32)>::new()));
    let (log, crash) = (runs.clone(), name.clone());
    // "Dying" here is losing the broker connection while holding the request, as a killed process would; the
    // handler then answers, but its reply and ack have no channel left to go out on.
    let server = h.server_named(&name, &stop, move |s| {
        echo_server(s).handle::<Poison, _, _>(move |Text(text), ctx| {
            let (log, crash) = (log.clone(), crash.clone());
            async move {
                log.lock().unwrap().push((text.clone(), ctx.attempt));
                if text == "always" || ctx.attempt == 1 {
                    tokio::task::spawn_blocking(move || testing::close_connection_named(&crash)).await.unwrap();
                }
                Ok(Text(format!("{text} on attempt {}", ctx.attempt)))
            }
        })
    });
    h.wait_for_consumers("login", 1).await;

    let once = h.client.call::<Poison>(&Text("once".into()), &ctx(30_000)).await;
    assert_eq!(once, Ok(Text("once on attempt 2".into())), "the death counted as the first attempt");

    h.wait_for_consumers("login", 1).await;
    let always = h.client.call::<Poison>(&Text("always".into()), &ctx(30_000)).await;
    assert_eq!(always.unwrap_err().code, ErrorCode::Internal);
    let attempts: Vec<u32> =
        runs.lock().unwrap().iter().filter(|(text, _)| text == "always").map(|(_, attempt)| *attempt).collect();
    let limit = common::amqp::topology::DELIVERY_LIMIT;
    assert_eq!(attempts, (1..=limit).collect::<Vec<_>>(), "each death counted once, then no more runs");

    h.wait_for_consumers("getSelf", 1).await;
    assert_eq!(h.client.call::<Echo>(&Text("after".into()), &ctx(5_000)).await, Ok(Text("echo after".into())));
    stop.cancel();
    server.await.unwrap().close().await;
    h.finish().await;
}

#[tokio::test]
async fn stopping_one_of_two_replicas_mid_load_loses_no_request_and_runs_none_twice() {
    let h = Harness::start().await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..400).map(|_| AtomicU32::new(0)).collect());
    let slow_echo = |runs: Arc<Vec<AtomicU32>>| {
        move |s: RpcServer| {
            s.prefetch(8).handle::<Echo, _, _>(move |Text(s), _| {
                let runs = runs.clone();
                async move {
                    runs[s.parse::<usize>().unwrap()].fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(Text(s))
                }
            })
        }
    };
    let a = h.server(&stop_a, slow_echo(runs.clone()));
    let b = h.server(&stop_b, slow_echo(runs.clone()));
    h.wait_for_consumers("getSelf", 2).await;

    let calls = (0..400).map(|i| {
        let client = h.client.clone();
        async move { client.call::<Echo>(&Text(i.to_string()), &ctx(15_000)).await }
    });
    let load = tokio::spawn(futures_util::future::join_all(calls));
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop_a.cancel();
    let replies = load.await.unwrap();

    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply, Ok(Text(i.to_string())), "request {i}");
    }
    // The stopping replica finishes what it holds on the channel it took it on: closing that channel first would
    // hand those requests to the other replica to run a second time.
    let twice: Vec<usize> = (0..400).filter(|&i| runs[i].load(Ordering::SeqCst) != 1).collect();
    assert!(twice.is_empty(), "requests not run exactly once: {twice:?}");
    a.await.unwrap().close().await;
    stop_b.cancel();
    b.await.unwrap().close().await;
    h.finish().await;
}

#[tokio::test]
async fn a_consumer_the_broker_cancels_is_subscribed_again() {
    let h = Harness::start().await;
    let stop = CancellationToken::new();
    // Two operations: the other consumer keeps running while this one is cancelled.
    let server = h.server(&stop, |s| echo_server(s).handle::<Slow, _, _>(|Text(s), _| async move { Ok(Text(s)) }));
    h.wait_for_consumers("getSelf", 1).await;
    h.wait_for_consumers("getUsers", 1).await;

    // An operator deletes the queue in the management UI: RabbitMQ cancels its consumers.
    let session = h.broker.current().expect("connected");
    let channel = session.channel().await.unwrap();
    channel.queue_delete(h.broker.topology().rpc_queue("getSelf").into(), Default::default()).await.unwrap();

    h.wait_for_consumers("getSelf", 1).await;
    assert_eq!(h.client.call::<Echo>(&Text("back".into()), &ctx(5_000)).await, Ok(Text("echo back".into())));
    assert_eq!(h.client.call::<Slow>(&Text("still".into()), &ctx(5_000)).await, Ok(Text("still".into())));
    assert_eq!(
        h.consumers("getUsers").await,
        Some(1),
        "the old channel's consumer was cancelled, not left taking requests"
    );
    stop.cancel();
    server.await.unwrap().close().await;
    h.finish().await;
}
