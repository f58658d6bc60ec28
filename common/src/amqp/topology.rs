//! Every exchange, queue, binding and argument Warren uses, in one place.
//!
//! Operators read this file next to the RabbitMQ management UI: each name below is what the UI shows, with the
//! configured prefix (`warren` by default; tests use a fresh prefix per run so runs never share queues).
//!
//! | name | kind | who declares | what for |
//! |---|---|---|---|
//! | `<p>.rpc` | direct exchange, durable | everyone | requests; routing key = operation name |
//! | `<p>.<service>.<operation>` | classic queue, durable, length-limited | the owning service | requests for one operation, shared by the service's replicas |
//! | `<p>.dlx` / `<p>.dead-letters` | fanout exchange / quorum queue, length-limited | everyone | requests that failed [`DELIVERY_LIMIT`] times, kept for inspection (the newest [`DEAD_LETTER_MAX_LENGTH`]) |
//! | `<p>.events` | fanout exchange, durable | everyone | committed chat messages and conversation events, one copy per gateway |
//! | `<p>.api.<instance>.events` | classic queue, exclusive, length-limited | each gateway | that gateway's copy of every event |
//! | `<p>.api.<instance>.dropped` | classic queue, exclusive, holds one | each gateway | the events queue dead-letters what it drops here, so the gateway learns it fell behind |
//! | `<p>.api.<instance>.replies` | classic queue, exclusive | each RPC caller | RPC replies for that caller |
//!
//! Why classic queues for requests, not quorum queues: a quorum queue appends every request to its Raft log and
//! fsyncs it before delivering it, which measured here as ~1.2 ms of every send's latency and ~40 % of the broker's
//! CPU per request (docs/BENCHMARKS.md) — durability a request does not need, because a caller that loses its
//! request or its reply times out and retries, and every operation is safe to retry. What quorum queues offered
//! beyond that, the delivery limit that keeps a poison request from looping forever, the RPC server provides
//! itself ([`super::rpc_server`]: an attempt header, counted on failures and on redeliveries after a crash), so
//! classic queues in RabbitMQ 3.10, which have no delivery limit, keep the same guarantee.
//! Why exclusive, named reply and event queues: broker-named `amq.gen-*` queues do not survive reconnection, and an
//! exclusive queue disappears with its owner, so a dead gateway leaves nothing behind.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

/// How many attempts a request gets before it is dead-lettered. The RPC server counts them (a failed handler, or
/// a replica that died holding the request) and answers the caller with an error on the last one.
pub const DELIVERY_LIMIT: u32 = 5;

/// Most requests a single RPC queue holds before the broker refuses new ones (the caller then gets
/// "unavailable" at once rather than a slow timeout).
pub const RPC_QUEUE_MAX_LENGTH: u32 = 100_000;

/// Most requests the dead-letter queue keeps; past it the oldest go. Requests are dead-lettered by the thousand
/// while the database is down (every read of every client, after its attempts), and an unbounded queue would fill
/// the broker's disk in a long outage and block every publisher with the disk alarm.
pub const DEAD_LETTER_MAX_LENGTH: u32 = 100_000;

/// Most events a gateway's queue holds. Past it the oldest are dropped: live push may lose, `sync` repairs.
/// Each dropped batch is dead-lettered to the gateway's `dropped` queue, which keeps only the newest one: the
/// gateway needs to know that it lost events (it then asks its sockets to `sync`), not which.
pub const GATEWAY_EVENT_QUEUE_MAX_LENGTH: u32 = 50_000;

/// The service that owns (consumes) an RPC operation. Queue names carry it so the UI shows who serves what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    User,
    Message,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::User => "user-service",
            Service::Message => "message-service",
        }
    }
}

/// Every RPC operation: its routing key and owner.
pub const OPERATIONS: &[(&str, Service)] = &[
    ("register", Service::User),
    ("login", Service::User),
    ("getUsers", Service::User),
    ("getSelf", Service::User),
    ("refreshToken", Service::User),
    ("resolveUsers", Service::User),
    ("sendMessage", Service::Message),
    ("sendMessages", Service::Message),
    ("getMessages", Service::Message),
    ("createGroup", Service::Message),
    ("addMembers", Service::Message),
    ("removeMember", Service::Message),
    ("leaveConversation", Service::Message),
    ("listConversations", Service::Message),
    ("getConversation", Service::Message),
    ("markRead", Service::Message),
    ("sync", Service::Message),
];

/// The owning service of an operation, if it exists.
pub fn owner_of(routing_key: &str) -> Option<Service> {
    OPERATIONS.iter().find(|(key, _)| *key == routing_key).map(|(_, service)| *service)
}

/// The names of Warren's AMQP objects under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn rpc_exchange(&self) -> String {
        format!("{}.rpc", self.prefix)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letters", self.prefix)
    }

    /// The queue of one operation, named after its owner: `warren.user-service.register`.
    /// Unknown operations are named as if owned by `unknown`, so a typo shows up as an unroutable request
    /// rather than a panic.
    pub fn rpc_queue(&self, routing_key: &str) -> String {
        let owner = owner_of(routing_key).map_or("unknown", Service::name);
        format!("{}.{}.{}", self.prefix, owner, routing_key)
    }

    /// The reply queue of one RPC caller instance.
    pub fn reply_queue(&self, component: &str, instance_id: &str) -> String {
        format!("{}.{}.{}.replies", self.prefix, component, instance_id)
    }

    /// The event queue of one gateway instance.
    pub fn gateway_event_queue(&self, instance_id: &str) -> String {
        format!("{}.api.{}.events", self.prefix, instance_id)
    }

    /// Where one gateway instance's event queue dead-letters the batches it drops at its length limit.
    pub fn gateway_dropped_queue(&self, instance_id: &str) -> String {
        format!("{}.api.{}.dropped", self.prefix, instance_id)
    }

    /// Declares what every component shares: the RPC and event exchanges and the dead-letter pair.
    /// Idempotent, so every component calls it on every (re)connect and no start order is needed.
    pub async fn declare_shared(&self, connection: &lapin::Connection) -> lapin::Result<()> {
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(self.rpc_exchange().into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await?;
        channel
            .exchange_declare(self.events_exchange().into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await?;
        channel
            .exchange_declare(self.dead_letter_exchange().into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await?;
        let declared = channel
            .queue_declare(
                self.dead_letter_queue().into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                self.dead_letter_queue_arguments(),
            )
            .await;
        let channel = match declared {
            Ok(_) => channel,
            // Declared by a release before the length limit: queue arguments cannot change, and refusing to start
            // over it would stop every component. It is used as it is (the declare closed the channel).
            Err(error) if error.to_string().contains("PRECONDITION_FAILED") => {
                tracing::warn!(
                    queue = %self.dead_letter_queue(),
                    "the dead-letter queue has no length limit (declared by an older release); delete it in a \
                     maintenance window to have it bounded (docs/OPERATIONS.md)"
                );
                let channel = connection.create_channel().await?;
                channel
                    .queue_declare(
                        self.dead_letter_queue().into(),
                        QueueDeclareOptions { passive: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await?;
                channel
            }
            Err(error) => return Err(error),
        };
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Arguments of the dead-letter queue: a quorum queue (what it holds is kept for inspection) that drops its
    /// oldest past [`DEAD_LETTER_MAX_LENGTH`].
    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert("x-max-length".into(), AMQPValue::LongInt(DEAD_LETTER_MAX_LENGTH as i32));
        args.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
        args
    }

    /// Declares an operation's request queue and binds it with the operation name as routing key.
    pub async fn declare_rpc_queue(&self, channel: &Channel, routing_key: &str) -> lapin::Result<()> {
        let queue = self.rpc_queue(routing_key);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                self.rpc_queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                queue.into(),
                self.rpc_exchange().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Arguments of every request queue. Changing one needs the queue deleted first: RabbitMQ refuses to
    /// redeclare a queue with other arguments (see docs/OPERATIONS.md, "upgrading").
    pub fn rpc_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.dead_letter_exchange().into()));
        args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        args.insert("x-max-length".into(), AMQPValue::LongInt(RPC_QUEUE_MAX_LENGTH as i32));
        args
    }

    /// Declares a caller's exclusive reply queue.
    pub async fn declare_reply_queue(&self, channel: &Channel, queue: &str) -> lapin::Result<()> {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map(|_| ())
    }

    /// Declares a gateway's exclusive, length-limited event queue, bound to the fanout exchange, and the queue it
    /// dead-letters dropped batches to.
    pub async fn declare_gateway_event_queue(
        &self,
        channel: &Channel,
        instance_id: &str,
    ) -> lapin::Result<GatewayQueues> {
        self.declare_gateway_event_queue_with_max_length(channel, instance_id, GATEWAY_EVENT_QUEUE_MAX_LENGTH).await
    }

    /// [`Self::declare_gateway_event_queue`] with another length limit (tests use a small one to see the oldest
    /// events dropped). The queues are exclusive to one connection, so no two declarations ever disagree.
    pub async fn declare_gateway_event_queue_with_max_length(
        &self,
        channel: &Channel,
        instance_id: &str,
        max_length: u32,
    ) -> lapin::Result<GatewayQueues> {
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        // Declared first, so no batch the events queue drops finds it missing. Holding one is enough to say that
        // events were dropped; past it the broker discards the older notice (it has no dead-letter exchange).
        let dropped = self.gateway_dropped_queue(instance_id);
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1));
        args.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
        channel.queue_declare(dropped.as_str().into(), exclusive, args).await?;

        let events = self.gateway_event_queue(instance_id);
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(i32::try_from(max_length).unwrap_or(i32::MAX)));
        args.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
        // The default exchange routes by queue name: each dropped batch goes straight to this gateway's own
        // `dropped` queue, and no other gateway's.
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(dropped.as_str().into()));
        channel.queue_declare(events.as_str().into(), exclusive, args).await?;
        channel
            .queue_bind(
                events.as_str().into(),
                self.events_exchange().into(),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(GatewayQueues { events, dropped })
    }
}

/// The names of one gateway's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayQueues {
    /// Its copy of every event batch.
    pub events: String,
    /// The batches `events` dropped at its length limit (the newest one only).
    pub dropped: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_show_the_owning_service() {
        let topology = Topology::new("warren");
        assert_eq!(topology.rpc_queue("register"), "warren.user-service.register");
        assert_eq!(topology.rpc_queue("sendMessage"), "warren.message-service.sendMessage");
        assert_eq!(topology.rpc_queue("nope"), "warren.unknown.nope");
    }

    #[test]
    fn the_seed_operations_keep_their_exact_routing_keys() {
        for key in ["register", "login", "getUsers", "getSelf", "getMessages", "sendMessage"] {
            assert!(owner_of(key).is_some(), "{key} must be an operation");
        }
    }

    #[test]
    fn request_queues_are_classic_with_a_dead_letter_exchange() {
        let args = Topology::new("t").rpc_queue_arguments();
        let inner = args.inner();
        assert!(matches!(inner.get("x-queue-type"), Some(AMQPValue::LongString(s)) if s.to_string() == "classic"));
        assert!(
            matches!(inner.get("x-dead-letter-exchange"), Some(AMQPValue::LongString(s)) if s.to_string() == "t.dlx")
        );
    }
}
