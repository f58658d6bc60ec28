//! Publishing committed messages and conversation changes on the fanout exchange, one AMQP message per batch.
//!
//! Publishing never fails a request: live push is allowed to lose (a gateway restarting, a queue overflowing),
//! because every loss shows as a gap in `seq` and `sync` repairs it from the database. What matters is that the
//! request is acked only after the publish was attempted, so a crash in between leads to a redelivery that
//! publishes again.
//!
//! The publishing itself is the shared [`EventPublisher`] (a cached channel per connection, reopened after a failed
//! publish, tested against RabbitMQ in `common/tests/events.rs`); this adds the service's policy: log a failure
//! and carry on.

use common::{
    amqp::{Broker, EventPublisher},
    protocol::messages::{Event, EventBatch},
};

/// Where events go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventSink {
    publisher: EventPublisher,
}

impl EventSink {
    pub fn new(broker: Broker) -> Self {
        Self { publisher: EventPublisher::new(broker) }
    }

    /// Publishes `events` as one batch. Failures are logged, not returned (see the module documentation).
    pub async fn publish(&self, events: Vec<Event>) {
        let count = events.len();
        if let Err(error) = self.publisher.publish(&EventBatch { events }).await {
            // With its cause (the broker's or the encoder's error), which the publisher's error only wraps.
            let error = format!("{:#}", anyhow::Error::new(error));
            tracing::warn!(error, count, "events not published; clients will catch up with sync");
        }
    }
}
