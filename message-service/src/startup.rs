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
/// - `enable_seqscan = off`, so a plan made while the tables were small still reads rows by key once they have grown.
///   Every statement this service runs looks rows up by key, but PostgreSQL keeps a statement's generic plan for the
///   connection's life (a pooled statement's from its sixth run when it looks no dearer than a fresh one, the
///   committer's from its first batch, `CommitConnection`) until something replaces it (an `ANALYZE` or `VACUUM` of the
///   table, a schema change). Made on a new deployment's empty tables, the cheapest plan scans them, and goes on
///   scanning them for every batch as they grow; with autovacuum off, for ever. Measured on a fresh database, dm at
///   2,000 msg/s for 20 s: 2,456 scans of `messages` reading 38.8 million rows; without them PostgreSQL's CPU per
///   message fell from ~290 to ~155 µs and delivery p50 from 15–16 to 5–6 ms (docs/BENCHMARKS.md, "Plans made on empty
///   tables"). With sequential scans priced out, the planner takes an index wherever one applies; a statement that has
///   none would still get its scan. Not covered: tables *analyzed* while empty, whose statistics say zero rows (see the
///   test `plans_made_on_empty_tables_still_read_by_key_once_the_tables_grow`).
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        connection_config(url)?,
        tokio_postgres::NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the database pool")
}

/// The settings every connection of [`pool`] starts with.
const SESSION_OPTIONS: &str = "-c synchronous_commit=on -c enable_seqscan=off";

fn connection_config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(url).context("parsing WARREN_DATABASE_URL")?;
    // Options the URL gives (an operator's `statement_timeout`, say) are kept; ours come after them, so they win
    // where both name the same setting.
    let options = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {SESSION_OPTIONS}"),
        _ => SESSION_OPTIONS.to_owned(),
    };
    config.options(options);
    config.application_name("message-service");
    // A server that vanished without a reset (its host lost in a failover) is given up on in seconds, not when
    // TCP's own timers run out.
    config.connect_timeout(std::time::Duration::from_secs(5));
    config.keepalives_idle(std::time::Duration::from_secs(30));
    config.tcp_user_timeout(std::time::Duration::from_secs(30));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_settings_come_after_those_the_url_gives() {
        let plain = connection_config("postgres://postgres@127.0.0.1:5432/warren").unwrap();
        assert_eq!(plain.get_options(), Some(SESSION_OPTIONS));
        let url = "postgres://postgres@127.0.0.1:5432/warren?options=-c%20statement_timeout%3D5000";
        let given = connection_config(url).unwrap();
        assert_eq!(given.get_options(), Some(format!("-c statement_timeout=5000 {SESSION_OPTIONS}").as_str()));
        assert!(connection_config("postgres://[::1").is_err());
    }
}
