//! Building and running the user-service: connect to PostgreSQL, migrate, then serve the RPC operations until the
//! shutdown future resolves. Everything is here rather than in `main.rs` so tests start the real service in-process.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use common::{
    amqp::{Broker, RpcServer},
    auth::TokenSigner,
    protocol::users::{GetSelf, GetUsers, Login, RefreshToken, Register, ResolveUsers},
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::{
    config::Settings,
    handlers::{self, Service, Shared},
    password::PasswordHasher,
    store::UserStore,
};

#[derive(Debug)]
pub struct Application {
    service: Shared,
    broker: Broker,
    prefetch: u16,
    instance_id: String,
}

impl Application {
    /// Connects (the database eagerly, so a wrong URL fails at start; the broker in the background) and migrates.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = connect(settings.database_url.expose(), settings.db_max_connections).await?;
        crate::migrate(&pool).await?;
        let signer = TokenSigner::from_private_pem(settings.jwt_private_key_pem.expose().as_bytes())
            .context("loading the JWT signing key")?;
        let service = Arc::new(Service {
            store: UserStore::new(pool),
            hasher: PasswordHasher::new(),
            verifier: signer.verifier(),
            signer,
            token_ttl: settings.token_ttl,
            session_max_age: settings.session_max_age,
        });
        let broker = Broker::start(&settings.amqp, format!("user-service {}", settings.instance_id));
        Ok(Self { service, broker, prefetch: settings.prefetch, instance_id: settings.instance_id })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Serves until `shutdown` resolves, then finishes the requests in hand and closes the connections.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = common::shutdown::token_from(shutdown);
        let s = self.service.clone();
        let server = RpcServer::new(self.broker.clone(), self.instance_id.clone())
            .prefetch(self.prefetch)
            .handle_with::<Register, _, _, _>(&s, handlers::register_user)
            .handle_with::<Login, _, _, _>(&s, handlers::log_in)
            .handle_with::<GetUsers, _, _, _>(&s, handlers::list_users)
            .handle_with::<GetSelf, _, _, _>(&s, handlers::get_self)
            .handle_with::<RefreshToken, _, _, _>(&s, handlers::refresh_token)
            .handle_with::<ResolveUsers, _, _, _>(&s, handlers::resolve_users);
        server.run(stop).await;
        self.broker.close().await;
        self.service.store.close().await;
        tracing::info!("user-service stopped");
        Ok(())
    }
}

/// The service's pool. `synchronous_commit = on` is set per connection, as the message-service does, so an
/// acknowledged registration is durable even where the server's default was relaxed: a registration lost in a
/// crash would hand its id to the next user while the first one's token is still valid.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().context("parsing WARREN_DATABASE_URL")?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.options([("synchronous_commit", "on")]))
        .await
        .context("connecting to PostgreSQL (WARREN_DATABASE_URL)")
}
