//! Building and running the gateway: `Application::build(settings)` binds the listener (port 0 in tests),
//! connects to the broker in the background and subscribes to the event stream; `run_until_stopped(shutdown)`
//! serves until the future resolves, then closes every WebSocket with 1001 (the HTTP server's graceful shutdown
//! does not wait for upgraded connections, so the hub tracks them itself), drains HTTP requests and closes the
//! broker connection last.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderName, HeaderValue, Method, header},
    routing::{delete, get, post},
};
use common::{
    amqp::{Broker, EventSubscriber, RpcClient, SubscriberOptions},
    protocol::{ApiError, ErrorCode},
};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::PropagateRequestIdLayer,
    services::{ServeDir, ServeFile},
    timeout::RequestBodyDeadlineLayer,
    trace::TraceLayer,
};

use crate::{
    config::{Settings, origin_allowed},
    error::HttpError,
    request_id,
    routes::{conversations, health, users},
    state::AppState,
    ws::{self, Hub},
};

/// Largest HTTP body accepted. Chat payloads are a few KiB; anything bigger is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long shutdown waits for HTTP requests still open (the services answer within the RPC timeout).
pub const HTTP_DRAIN_WAIT: Duration = Duration::from_secs(10);

/// How long shutdown waits for WebSockets to finish their close handshakes.
pub const WS_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Connections the kernel queues before the gateway accepts them. `TcpListener::bind` uses 128: when every client
/// reconnects at once (a gateway restart, a network blip), SYNs past it are dropped and retried only after the 1 s
/// SYN timeout. The kernel caps this at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted gateway can bind while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let broker = Broker::start(&settings.amqp, format!("api {}", settings.instance_id));
        let rpc = RpcClient::start(broker.clone(), "api", &settings.instance_id);
        let listener = bind(settings.http_addr).with_context(|| format!("binding {}", settings.http_addr))?;
        let hub = Hub::new(settings.ws.outbound_queue, settings.ws.max_connections);
        let events = EventSubscriber::start(broker.clone(), &settings.instance_id, SubscriberOptions::default(), {
            let hub = hub.clone();
            move |received| hub.receive(received)
        });
        let state = AppState::new(settings, broker, rpc, hub, events)?;
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, state } = self;
        let stop = common::shutdown::token_from(shutdown);
        tokio::spawn({
            let stop = stop.clone();
            let hub = state.hub().clone();
            async move {
                stop.cancelled().await;
                hub.shut_down();
            }
        });
        tokio::spawn(prune_rate_limiter(state.clone(), stop.clone()));
        tracing::info!(address = %listener.local_addr()?, instance = %state.settings().instance_id, "gateway listening");
        let router = router(state.clone());
        let serving = crate::serve::serve(listener, router, state.settings().http, stop.clone());
        // The HTTP drain waits for every open request, and one whose client stalls (a body announced and never
        // sent) would hold the process forever: past `HTTP_DRAIN_WAIT` after the stop, it is left behind.
        let drained = async {
            stop.cancelled().await;
            tokio::time::sleep(HTTP_DRAIN_WAIT).await;
        };
        tokio::select! {
            () = serving => {}
            () = drained => tracing::warn!("HTTP requests still open after the drain time; stopping without them"),
        }
        if !state.hub().wait_closed(WS_CLOSE_WAIT).await {
            tracing::warn!(sockets = state.hub().len(), "some WebSockets did not finish closing in time");
        }
        state.broker().close().await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/register", post(users::register_user))
        .route("/login", post(users::log_in))
        .route("/users", get(users::list_users))
        .route("/me", get(users::get_me))
        .route("/refresh", post(users::refresh_token))
        .route("/conversations", get(conversations::list_conversations).post(conversations::create_group))
        .route("/conversations/{id}", get(conversations::get_conversation))
        .route(
            "/conversations/{id}/messages",
            get(conversations::get_messages).post(conversations::send_to_conversation),
        )
        .route("/conversations/{id}/members", post(conversations::add_members))
        .route("/conversations/{id}/members/{user_id}", delete(conversations::remove_member))
        .route("/conversations/{id}/leave", post(conversations::leave_conversation))
        .route("/conversations/{id}/read", post(conversations::mark_read))
        .route("/sync", post(conversations::sync))
        .route("/messages", post(conversations::send_direct))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(wrong_method);
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/ws", get(ws::upgrade))
        .method_not_allowed_fallback(wrong_method)
        .nest("/api", api);
    if let Some(dir) = state.settings().web_dir.clone() {
        // A single-page app: unknown paths get index.html so client-side routes survive a reload.
        let index = ServeFile::new(dir.join("index.html"));
        router = router.fallback_service(ServeDir::new(dir).fallback(index));
    } else {
        router = router.fallback(no_such_endpoint);
    }
    router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyDeadlineLayer::new(state.settings().http_body_timeout))
        .layer(cors(&state.settings().allowed_origins))
        .layer(PropagateRequestIdLayer::new(HeaderName::from_static(request_id::HEADER)))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let id = request.headers().get(request_id::HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
            tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(axum::middleware::map_request(request_id::assign))
        .with_state(state)
}

// Every answer, even to a path or method that does not exist, is an error body in the one shape.
async fn no_such_endpoint() -> HttpError {
    HttpError::from(ApiError::not_found("no such endpoint"))
}

async fn wrong_method() -> HttpError {
    HttpError::from(ApiError::new(ErrorCode::MethodNotAllowed, "this endpoint does not take that method"))
}

/// CORS for the listed origins, matched as the WebSocket upgrade matches them ([`origin_allowed`]).
fn cors(origins: &[String]) -> CorsLayer {
    let origins = origins.to_vec();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|origin| origin_allowed(origin, &origins))
        }))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static(request_id::HEADER)])
        .expose_headers([HeaderName::from_static(request_id::HEADER), header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

async fn prune_rate_limiter(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => state.prune_rate_limiter(),
            () = stop.cancelled() => return,
        }
    }
}
