//! The event stream against the real RabbitMQ: fanout to every gateway, the length limit, and resuming after a
//! lost connection. Each test gets its own queue prefix.

use std::time::{Duration, Instant};

use common::{
    amqp::{
        Broker, EventPublisher, EventSubscriber, Received, SubscriberOptions, events::PublishError, topology::Topology,
    },
    config::AmqpSettings,
    protocol::messages::{Event, EventBatch, ReadPosition},
    testing,
};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use tokio::sync::mpsc;

/// An event whose `read_seq` numbers it, so order and identity are easy to check.
fn event(n: i64) -> Event {
    Event::Read { user_id: 1, position: ReadPosition { conversation_id: 1, read_seq: n } }
}

fn batch(numbers: &[i64]) -> EventBatch {
    EventBatch { events: numbers.iter().copied().map(event).collect() }
}

fn number(received: &Received) -> Option<i64> {
    match received {
        Received::Event(Event::Read { position, .. }) => Some(position.read_seq),
        _ => None,
    }
}

struct Gateway {
    broker: Broker,
    subscriber: EventSubscriber,
    received: mpsc::UnboundedReceiver<Received>,
}

impl Gateway {
    fn start(settings: &AmqpSettings, name: &str, options: SubscriberOptions) -> Gateway {
        let broker = Broker::start(settings, name.to_owned());
        let (tx, received) = mpsc::unbounded_channel();
        let subscriber = EventSubscriber::start(broker.clone(), name, options, move |r| {
            let _ = tx.send(r);
        });
        Gateway { broker, subscriber, received }
    }

    async fn until_live(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.subscriber.is_live() {
            assert!(Instant::now() < deadline, "the subscriber never went live");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("something arrives in time")
            .expect("the subscriber is running")
    }

    async fn nothing_more(&mut self) {
        let more = tokio::time::timeout(Duration::from_millis(300), self.received.recv()).await;
        assert!(more.is_err(), "unexpected: {more:?}");
    }
}

#[tokio::test]
async fn every_gateway_gets_every_batch_once_in_order() {
    common::telemetry::init_for_tests();
    let settings = testing::unique_amqp_settings();
    let mut one = Gateway::start(&settings, "gw-one", SubscriberOptions::default());
    let mut two = Gateway::start(&settings, "gw-two", SubscriberOptions::default());
    one.until_live().await;
    two.until_live().await;
    let (publishing, publisher) = testing::connected_publisher(&settings).await;

    for numbers in [&[1, 2][..], &[3], &[4, 5, 6]] {
        publisher.publish(&batch(numbers)).await.expect("published");
    }

    for gateway in [&mut one, &mut two] {
        assert!(matches!(gateway.next().await, Received::Attached { generation: 1 }));
        let mut got = Vec::new();
        while got.len() < 6 {
            got.push(number(&gateway.next().await).expect("an event"));
        }
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        gateway.nothing_more().await;
    }
    for broker in [one.broker, two.broker, publishing] {
        broker.close().await;
    }
    testing::delete_topology(&settings.prefix).await;
}

#[tokio::test]
async fn a_gateway_queue_at_its_length_limit_drops_the_oldest_batches() {
    common::telemetry::init_for_tests();
    let settings = testing::unique_amqp_settings();
    let (broker, publisher) = testing::connected_publisher(&settings).await;
    let topology = Topology::new(settings.prefix.clone());
    let session = broker.current().expect("connected");
    let channel = session.channel().await.unwrap();
    // The declaration the subscriber makes, without a consumer, so the queue fills up.
    let queue = topology.declare_gateway_event_queue_with_max_length(&channel, "gw-slow", 10).await.unwrap().events;

    for n in 1..=25 {
        publisher.publish(&batch(&[n])).await.expect("published");
    }

    // Publishes are not confirmed: peek at the head until the last one has pushed the 15 oldest out.
    let first = |data: &[u8]| serde_json::from_slice::<EventBatch>(data).unwrap().events[0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let head = channel.basic_get(queue.as_str().into(), BasicGetOptions::default()).await.unwrap();
        let oldest = match head {
            Some(head) => {
                let oldest = first(&head.delivery.data);
                head.delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
                Some(oldest)
            }
            // Nothing has arrived yet.
            None => None,
        };
        if oldest == Some(event(16)) {
            break;
        }
        assert!(Instant::now() < deadline, "the oldest batches were never dropped (head {oldest:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut left = Vec::new();
    while let Some(message) = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap()
    {
        left.push(first(&message.delivery.data));
    }
    assert_eq!(left, (16..=25).map(event).collect::<Vec<_>>());
    broker.close().await;
    testing::delete_topology(&settings.prefix).await;
}

async fn next(received: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), received.recv()).await.expect("in time").expect("running")
}

/// A gateway that falls so far behind that its queue drops batches is told so (the broker dead-letters them to its
/// `dropped` queue), where it used to lose them without a word; the batches that were kept still come in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_queue_dropped_batches_is_told_so_and_gets_the_rest_in_order() {
    use std::sync::atomic::{AtomicBool, Ordering};

    common::telemetry::init_for_tests();
    let settings = testing::unique_amqp_settings();
    // The gateway's callback blocks on the first event, like a gateway too busy to take the next: with a prefetch
    // of one, everything published meanwhile waits in its queue of 10.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Mutex::new(held);
    let first = AtomicBool::new(true);
    let (tx, mut received) = mpsc::unbounded_channel();
    let behind = Broker::start(&settings, "gw-behind".to_owned());
    let options = SubscriberOptions { prefetch: 1, max_length: 10 };
    let subscriber = EventSubscriber::start(behind.clone(), "gw-behind", options, move |r| {
        let is_event = matches!(r, Received::Event(_));
        let _ = tx.send(r);
        if is_event && first.swap(false, Ordering::SeqCst) {
            // Off the runtime's worker (tasks queued on it move on), as a long synchronous job would be.
            tokio::task::block_in_place(|| {
                let _ = held.lock().unwrap().recv();
            });
        }
    });
    // Another gateway that keeps up: once it has a batch, the broker has routed that batch to both queues.
    let mut witness = Gateway::start(&settings, "gw-witness", SubscriberOptions::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !subscriber.is_live() {
        assert!(Instant::now() < deadline, "the subscriber never went live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    witness.until_live().await;
    let (publishing, publisher) = testing::connected_publisher(&settings).await;

    assert!(matches!(next(&mut received).await, Received::Attached { .. }));
    publisher.publish(&batch(&[1])).await.expect("published");
    assert_eq!(number(&next(&mut received).await), Some(1), "the gateway now holds the first batch");
    for n in 2..=30 {
        publisher.publish(&batch(&[n])).await.expect("published");
    }
    assert!(matches!(witness.next().await, Received::Attached { .. }));
    for n in 1..=30 {
        assert_eq!(number(&witness.next().await), Some(n));
    }
    release.send(()).unwrap();

    let (mut events, mut dropped) = (Vec::new(), 0);
    while events.last() != Some(&30) || dropped == 0 {
        match next(&mut received).await {
            Received::Dropped => dropped += 1,
            other => events.push(number(&other).unwrap_or_else(|| panic!("unexpected {other:?}"))),
        }
    }
    // The ten newest were kept (on a slow machine the queue may have dropped fewer), and come in order.
    assert!(events.len() < 29 && events.ends_with(&(21..=30).collect::<Vec<_>>()), "got {events:?}");
    assert!(events.windows(2).all(|pair| pair[0] < pair[1]), "in order: {events:?}");
    for broker in [behind, witness.broker, publishing] {
        broker.close().await;
    }
    testing::delete_topology(&settings.prefix).await;
}

#[tokio::test]
async fn a_subscriber_resumes_after_its_connection_is_killed_and_reports_the_gap() {
    common::telemetry::init_for_tests();
    let settings = testing::unique_amqp_settings();
    let name = format!("gw-{}", uuid::Uuid::new_v4().simple());
    let mut gateway = Gateway::start(&settings, &name, SubscriberOptions::default());
    gateway.until_live().await;
    let (publishing, publisher) = testing::connected_publisher(&settings).await;
    assert!(matches!(gateway.next().await, Received::Attached { generation: 1 }));
    publisher.publish(&batch(&[1])).await.unwrap();
    assert_eq!(number(&gateway.next().await), Some(1));

    common::testing::close_connection_named(&name);

    assert!(matches!(gateway.next().await, Received::Attached { generation: 2 }), "the gap is reported");
    publisher.publish(&batch(&[2])).await.unwrap();
    assert_eq!(number(&gateway.next().await), Some(2));
    gateway.nothing_more().await;
    gateway.broker.close().await;
    publishing.close().await;
    testing::delete_topology(&settings.prefix).await;
}

#[tokio::test]
async fn publishing_without_a_connection_fails_at_once() {
    common::telemetry::init_for_tests();
    let broker = Broker::start(&AmqpSettings::new("amqp://guest:guest@127.0.0.1:1/%2f", "test-nowhere"), "x".into());
    let publisher = EventPublisher::new(broker.clone());

    let started = Instant::now();
    let result = publisher.publish(&batch(&[1])).await;

    assert!(matches!(result, Err(PublishError::Down)), "{result:?}");
    assert!(started.elapsed() < Duration::from_millis(100));
    broker.close().await;
}
