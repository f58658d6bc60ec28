//! Publishing committed messages and conversation changes on the fanout exchange, one AMQP message per batch.
//!
//! Publishing never fails a request: live push is allowed to lose (a gateway restarting, a queue overflowing),
//! because every loss shows as a gap in `seq` and `sync` repairs it from the database. What matters is that the
//! request is acked only after the publish was attempted, so a crash in between leads to a redelivery that
//! publishes again.

use common::{
    amqp::Broker,
    protocol::messages::{Event, EventBatch},
};
use lapin::{BasicProperties, Channel, options::BasicPublishOptions};
use tokio::sync::Mutex;

/// Where events go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventSink {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    broker: Broker,
    /// The publishing channel and the connection generation it belongs to.
    channel: Mutex<Option<(u64, Channel)>>,
}

impl EventSink {
    pub fn new(broker: Broker) -> Self {
        Self { inner: std::sync::Arc::new(Inner { broker, channel: Mutex::new(None) }) }
    }

    /// Publishes `events` as one batch. Failures are logged, not returned (see the module documentation).
    pub async fn publish(&self, events: Vec<Event>) {
        let count = events.len();
        let body = match serde_json::to_vec(&EventBatch { events }) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "cannot encode events");
                return;
            }
        };
        if let Err(error) = self.try_publish(&body).await {
            tracing::warn!(%error, count, "events not published; clients will catch up with sync");
        }
    }

    async fn try_publish(&self, body: &[u8]) -> anyhow::Result<()> {
        let session = self.inner.broker.current().ok_or_else(|| anyhow::anyhow!("not connected to the broker"))?;
        let channel = {
            let mut cached = self.inner.channel.lock().await;
            match &*cached {
                Some((generation, channel)) if *generation == session.generation && channel.status().connected() => {
                    channel.clone()
                }
                _ => {
                    let channel = session.channel().await?;
                    *cached = Some((session.generation, channel.clone()));
                    channel
                }
            }
        };
        let exchange = self.inner.broker.topology().events_exchange();
        channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await?;
        Ok(())
    }
}
