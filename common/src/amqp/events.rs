//! The event stream: what the message-service publishes after each commit, and how every gateway gets its copy.
//!
//! The message-service publishes one [`EventBatch`] per commit on the durable fanout exchange
//! ([`Topology::events_exchange`]) with [`EventPublisher`]. Each gateway replica runs one [`EventSubscriber`]: its
//! own named, exclusive, length-limited queue bound to that exchange, so every batch reaches every gateway once and
//! the cost grows with gateways, not with connected users. The gateway then routes each event to the local sockets
//! of its recipients.
//!
//! Live push is allowed to lose (DESIGN §2.4): the queue drops its oldest events when a gateway falls behind, and
//! whatever is published while a gateway is disconnected never reaches it. Loss is made *visible* instead:
//! every time the subscriber attaches to a connection (the first time too, since events committed before the queue
//! was bound are just as missing), it reports [`Received::Attached`], and the gateway tells its clients to `sync`.
//! Events it cannot read (a kind added by a newer message-service during a rolling upgrade) are dropped one by one,
//! the rest of their batch delivered, and reported as [`Received::Unreadable`], with the same effect. A batch the
//! queue drops at its length limit is dead-lettered to the gateway's `dropped` queue, which the subscriber consumes
//! too, and reported as [`Received::Dropped`], again with the same effect.
//!
//! Deliveries are acknowledged manually, after they were handed on, with a `basic_qos` prefetch: lapin's consumer
//! buffer is unbounded, so the prefetch is the only thing that keeps a slow gateway's memory bounded; past it,
//! events wait in the broker's queue, which drops its head at its length limit.

use std::{
    pin::pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions},
    types::FieldTable,
};

use super::{
    connection::{Broker, Session, session_lost},
    topology::{GATEWAY_EVENT_QUEUE_MAX_LENGTH, Topology},
};
use crate::protocol::messages::{Event, EventBatch};

/// How many unacknowledged deliveries a subscriber holds at once.
pub const DEFAULT_PREFETCH: u16 = 256;

/// How a subscriber sizes its queue and its prefetch window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriberOptions {
    /// Unacknowledged deliveries (batches) held at once.
    pub prefetch: u16,
    /// Batches the gateway's queue holds before the broker drops the oldest.
    pub max_length: u32,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        Self { prefetch: DEFAULT_PREFETCH, max_length: GATEWAY_EVENT_QUEUE_MAX_LENGTH }
    }
}

/// What a subscriber hands to its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// One event, in the order it was published (events of a batch in batch order).
    Event(Event),
    /// The subscription started consuming on connection `generation`. Whatever was published before this, while
    /// the queue did not exist or was not bound, was lost: clients must `sync`. Reported on every attach.
    Attached { generation: u64 },
    /// Events of a batch could not be read (a newer publisher's event kind during a rolling upgrade, or a garbled
    /// batch) and were dropped: clients must `sync`. Reported after the batch's readable events.
    Unreadable { events: usize },
    /// The queue dropped batches at its length limit: the gateway fell that far behind, and clients must `sync`.
    /// Reported once per notice the broker kept (the `dropped` queue holds one), so not once per batch dropped.
    Dropped,
}

/// A running subscription. Cheap to clone; it follows the broker across reconnects and stops when the broker is
/// closed.
#[derive(Debug, Clone)]
pub struct EventSubscriber {
    live: Arc<AtomicBool>,
    queue: String,
}

impl EventSubscriber {
    /// Starts consuming in the background. `on_receive` runs on the consumer task for every event and must not
    /// block: a gateway routes into bounded per-socket queues with `try_send`.
    pub fn start<F>(broker: Broker, instance_id: &str, options: SubscriberOptions, on_receive: F) -> EventSubscriber
    where
        F: Fn(Received) + Send + Sync + 'static,
    {
        let live = Arc::new(AtomicBool::new(false));
        let queue = broker.topology().gateway_event_queue(instance_id);
        tokio::spawn(follow(broker, instance_id.to_owned(), options, live.clone(), on_receive));
        EventSubscriber { live, queue }
    }

    /// Whether the queue is declared, bound and consumed on the current connection.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The name of this subscriber's queue (as the management UI shows it).
    pub fn queue(&self) -> &str {
        &self.queue
    }
}

async fn follow<F>(
    broker: Broker,
    instance_id: String,
    options: SubscriberOptions,
    live: Arc<AtomicBool>,
    on_receive: F,
) where
    F: Fn(Received) + Send + Sync + 'static,
{
    let mut generation = 0;
    loop {
        let Some(session) = broker.next_session(generation).await else { break };
        generation = session.generation;
        match attach(broker.topology(), &session, &instance_id, options).await {
            Ok((channel, consumers)) => {
                live.store(true, Ordering::Release);
                tracing::info!(generation, "event subscription live");
                on_receive(Received::Attached { generation });
                consume(&session, consumers, &on_receive).await;
                live.store(false, Ordering::Release);
                if session.connection.status().connected() {
                    // Only the consumer or its channel went (the queue was deleted, a channel error): attach again
                    // on this connection rather than wait for a reconnect that may never come.
                    tracing::warn!(generation, "event consumer ended on a live connection; re-attaching");
                    let _ = channel.close(200, "re-attaching".into()).await;
                    generation = generation.saturating_sub(1);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                } else {
                    tracing::info!(generation, "event subscription ended with its connection");
                }
            }
            Err(error) => {
                tracing::warn!(%error, generation, "cannot set up the event queue; will retry");
                // Retry on the same connection if it is still alive.
                generation = generation.saturating_sub(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    live.store(false, Ordering::Release);
    tracing::debug!("event subscription stopped");
}

/// The two consumers of a subscription.
struct Consumers {
    events: lapin::Consumer,
    dropped: lapin::Consumer,
}

async fn attach(
    topology: &Topology,
    session: &Session,
    instance_id: &str,
    options: SubscriberOptions,
) -> lapin::Result<(Channel, Consumers)> {
    let channel = session.channel().await?;
    let queues =
        topology.declare_gateway_event_queue_with_max_length(&channel, instance_id, options.max_length).await?;
    let consume = |queue: String| {
        let channel = channel.clone();
        async move {
            let options = BasicConsumeOptions { exclusive: true, ..Default::default() };
            channel.basic_consume(queue.as_str().into(), queue.as_str().into(), options, FieldTable::default()).await
        }
    };
    // A prefetch applies to each consumer started after it on the channel.
    channel.basic_qos(options.prefetch, BasicQosOptions::default()).await?;
    let events = consume(queues.events).await?;
    // One notice at a time: a gateway that falls behind gets one delivery, not a copy of every batch it lost.
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let dropped = consume(queues.dropped).await?;
    Ok((channel, Consumers { events, dropped }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Events,
    Dropped,
}

async fn consume<F>(session: &Session, consumers: Consumers, on_receive: &F)
where
    F: Fn(Received),
{
    let Consumers { events: mut batches, mut dropped } = consumers;
    let mut lost = pin!(session_lost(session));
    loop {
        let (delivery, queue) = tokio::select! {
            _ = &mut lost => return,
            delivery = batches.next() => (delivery, Queue::Events),
            delivery = dropped.next() => (delivery, Queue::Dropped),
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::warn!(%error, ?queue, "event consumer failed");
                return;
            }
            None => return,
        };
        if queue == Queue::Events {
            // Acknowledged however it reads: a batch that cannot be read now never will be, and `sync` repairs
            // what was dropped.
            let (events, unreadable) = read_batch(&delivery.data);
            events.into_iter().for_each(|event| on_receive(Received::Event(event)));
            if unreadable > 0 {
                on_receive(Received::Unreadable { events: unreadable });
            }
        } else {
            // One notice per batch the broker could deliver while the gateway is behind: the gateway logs what it
            // does about them, at its own pace.
            tracing::debug!("the event queue dropped batches at its length limit: this gateway fell behind");
            on_receive(Received::Dropped);
        }
        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, ?queue, "cannot acknowledge a delivery");
            return;
        }
    }
}

/// The events of a batch, and how many of its events could not be read (a whole unreadable batch counts as one).
/// Read as a whole first; only a batch that fails is read event by event, so one event of a kind this gateway does
/// not know costs the others nothing.
fn read_batch(data: &[u8]) -> (Vec<Event>, usize) {
    let error = match serde_json::from_slice::<EventBatch>(data) {
        Ok(batch) => return (batch.events, 0),
        Err(error) => error,
    };
    #[derive(serde::Deserialize)]
    struct Loose {
        events: Vec<serde_json::Value>,
    }
    let Ok(Loose { events }) = serde_json::from_slice::<Loose>(data) else {
        tracing::error!(%error, bytes = data.len(), "discarding an unreadable event batch");
        return (Vec::new(), 1);
    };
    let total = events.len();
    let events: Vec<Event> = events.into_iter().filter_map(|event| serde_json::from_value(event).ok()).collect();
    let unreadable = total - events.len();
    // Per batch, so debug: during an upgrade that adds an event kind this is every commit; the gateway logs the
    // resyncs it sends for them.
    tracing::debug!(%error, unreadable, of = total, "discarding unreadable events of a batch");
    (events, unreadable)
}

/// Why a batch was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not connected to RabbitMQ right now.
    #[error("the message broker is unreachable")]
    Down,
    #[error("cannot encode the event batch")]
    Encode(#[from] serde_json::Error),
    #[error("publishing the event batch failed")]
    Amqp(#[from] lapin::Error),
}

/// Publishes [`EventBatch`]es on the fanout exchange, on a channel of the current connection (opened on first use
/// after each reconnect). Cheap to clone.
///
/// Fire-and-forget by design: transient, not `mandatory`, no publisher confirms. The messages are already durable
/// in PostgreSQL; an event lost here is a gap clients repair with `sync`, and waiting for a confirm would add a
/// broker round trip to every commit.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    broker: Broker,
    exchange: String,
    channel: Arc<Mutex<Option<(u64, Channel)>>>,
    opening: Arc<tokio::sync::Mutex<()>>,
}

impl EventPublisher {
    pub fn new(broker: Broker) -> EventPublisher {
        let exchange = broker.topology().events_exchange();
        EventPublisher {
            broker,
            exchange,
            channel: Arc::new(Mutex::new(None)),
            opening: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Publishes one batch to every gateway. `Err` when the broker is down or the publish failed; the caller
    /// logs it and carries on (the messages are committed; clients will `sync`).
    pub async fn publish(&self, batch: &EventBatch) -> Result<(), PublishError> {
        let body = serde_json::to_vec(batch)?;
        let channel = self.channel().await?;
        let properties = BasicProperties::default().with_content_type("application/json".into());
        let published = channel
            .basic_publish(self.exchange.as_str().into(), "".into(), BasicPublishOptions::default(), &body, properties)
            .await;
        if let Err(error) = published {
            // Open a fresh channel next time: this one may be closed.
            self.forget(&channel);
            return Err(error.into());
        }
        Ok(())
    }

    /// The channel for the current session, opened if needed.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let session = self.broker.current().ok_or(PublishError::Down)?;
        if let Some(channel) = self.cached(session.generation) {
            return Ok(channel);
        }
        // One opener at a time, so a burst of publishes after a reconnect opens one channel, not one each.
        let _opening = self.opening.lock().await;
        if let Some(channel) = self.cached(session.generation) {
            return Ok(channel);
        }
        let channel = session.channel().await?;
        if let Ok(mut slot) = self.channel.lock() {
            *slot = Some((session.generation, channel.clone()));
        }
        Ok(channel)
    }

    fn cached(&self, generation: u64) -> Option<Channel> {
        let slot = self.channel.lock().ok()?;
        slot.as_ref()
            .filter(|(g, channel)| *g == generation && channel.status().connected())
            .map(|(_, channel)| channel.clone())
    }

    fn forget(&self, channel: &Channel) {
        if let Ok(mut slot) = self.channel.lock()
            && slot.as_ref().is_some_and(|(_, c)| c.id() == channel.id())
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_with_an_unknown_event_kind_keeps_its_other_events() {
        let known = r#"{"type":"read","userId":1,"position":{"conversationId":2,"readSeq":3}}"#;
        let data = format!(r#"{{"events":[{known},{{"type":"typing","userId":1}},{known}]}}"#);

        let (events, unreadable) = read_batch(data.as_bytes());

        let expected: Event = serde_json::from_str(known).unwrap();
        assert_eq!(events, vec![expected.clone(), expected]);
        assert_eq!(unreadable, 1);
    }

    #[test]
    fn a_garbled_batch_counts_as_one_unreadable_and_a_good_one_as_none() {
        assert_eq!(read_batch(b"{not json").1, 1);
        assert_eq!(read_batch(br#"{"events":[]}"#), (Vec::new(), 0));
    }
}
