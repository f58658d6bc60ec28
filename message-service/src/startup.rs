//! Building and running the message-service: connect to PostgreSQL, migrate, start the group committer, then
//! serve the RPC operations until the shutdown future resolves.

use std::{future::Future, str::FromStr, sync::Arc};

use anyhow::Context;
use common::{
    amqp::{Broker, RpcClient, RpcServer},
    protocol::messages::{
        AddMembers, CreateGroup, GetConversation, GetMessages, LeaveConversation, ListConversations, MarkRead,
        RemoveMember, SendMessage, SendMessages, Sync,
    },
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::{
    commit::Committer,
    config::Settings,
    events::EventSink,
    handlers::{self, Service, Shared},
    store::Store,
};

#[derive(Debug)]
pub struct Application {
    service: Shared,
    broker: Broker,
    prefetch: u16,
    instance_id: String,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        crate::migrate(settings.database_url.expose()).await?;
        let pool = pool(settings.database_url.expose(), settings.db_max_connections)?;
        // Fail at start, not at the first request, when the database is unreachable.
        drop(pool.get().await.context("connecting to PostgreSQL (WARREN_DATABASE_URL)")?);
        let store = Store::new(pool);
        let broker = Broker::start(&settings.amqp, format!("message-service {}", settings.instance_id));
        let users = RpcClient::start(broker.clone(), "message-service", &settings.instance_id);
        let events = EventSink::new(broker.clone());
        let committer = Committer::start(
            store.clone(),
            events.clone(),
            settings.batch_max,
            usize::from(settings.prefetch) * 2,
            settings.rpc_timeout,
        );
        let service = Arc::new(Service { store, committer, events, users, rpc_timeout: settings.rpc_timeout });
        let prefetch = settings.prefetch.max(u16::try_from(settings.batch_max).unwrap_or(u16::MAX));
        Ok(Self { service, broker, prefetch, instance_id: settings.instance_id })
    }

    pub fn service(&self) -> &Shared {
        &self.service
    }

    /// Serves until `shutdown` resolves, then finishes the requests in hand and closes the connections.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = common::shutdown::token_from(shutdown);
        let s = &self.service;
        RpcServer::new(self.broker.clone(), self.instance_id.clone())
            .prefetch(self.prefetch)
            .handle_with::<SendMessage, _, _, _>(s, handlers::send_message)
            .handle_with::<SendMessages, _, _, _>(s, handlers::send_messages)
            .handle_with::<GetMessages, _, _, _>(s, handlers::get_messages)
            .handle_with::<CreateGroup, _, _, _>(s, handlers::create_group)
            .handle_with::<AddMembers, _, _, _>(s, handlers::add_members)
            .handle_with::<RemoveMember, _, _, _>(s, handlers::remove_member)
            .handle_with::<LeaveConversation, _, _, _>(s, handlers::leave_conversation)
            .handle_with::<GetConversation, _, _, _>(s, handlers::get_conversation)
            .handle_with::<ListConversations, _, _, _>(s, handlers::list_conversations)
            .handle_with::<MarkRead, _, _, _>(s, handlers::mark_read)
            .handle_with::<Sync, _, _, _>(s, handlers::sync)
            .run(stop)
            .await;
        self.broker.close().await;
        self.service.store.pool().close();
        tracing::info!("message-service stopped");
        Ok(())
    }
}

/// The hot-path pool. Two settings are made per connection:
/// - `synchronous_commit = on`, so "acknowledged means durable" holds even if the server's default was relaxed;
/// - `enable_seqscan = off`, so the plans a connection caches read rows by key whatever the statistics said when
///   they were made. Every statement this service runs looks rows up by key, but PostgreSQL plans a cached
///   statement once for a connection's life (the committer's from its first batch, `CommitConnection`), and a plan
///   made while a table was empty or its statistics lagged (a new deployment; autovacuum off or behind) scans the
///   whole table, and goes on scanning it for every batch as it grows, until an `ANALYZE` happens to replace the
///   plan. Measured on a fresh database, dm at 2,000 msg/s for 20 s: 2,456 scans of `messages` reading 38.8
///   million rows; without them PostgreSQL's CPU per message fell from ~290 to ~155 µs and delivery p50 from ~15
///   to ~5.5 ms (docs/BENCHMARKS.md, "Plans made on empty tables"). With sequential scans priced out, the planner
///   takes an index wherever one applies; a statement that has none would still get its scan.
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let mut config = tokio_postgres::Config::from_str(url).context("parsing WARREN_DATABASE_URL")?;
    config.options("-c synchronous_commit=on -c enable_seqscan=off");
    config.application_name("message-service");
    // A server that vanished without a reset (its host lost in a failover) is given up on in seconds, not when
    // TCP's own timers run out.
    config.connect_timeout(std::time::Duration::from_secs(5));
    config.keepalives_idle(std::time::Duration::from_secs(30));
    config.tcp_user_timeout(std::time::Duration::from_secs(30));
    let manager =
        Manager::from_config(config, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the database pool")
}
