//! The gateway's HTTP/1.1 server: accepts connections and serves the router on each, with the two bounds
//! `axum::serve` does not give.
//!
//! - **Header timeout.** `axum::serve` runs hyper without a timer, so a connection that sends no request, or a
//!   request's headers a byte at a time, or that stays open idle after a response, is held (with its task and file
//!   descriptor) for as long as the client likes: a few thousand such connections exhaust the process's
//!   descriptors and no one else can connect (slowloris). Here hyper gets a timer and
//!   [`HttpLimits::header_timeout`]: a request's headers must arrive in full within it, counted from the
//!   connection's start and, on a kept-alive connection, from the end of the previous response, so an idle
//!   connection is closed after it too. (The body has its own deadline, `http_body_timeout`.)
//! - **Connection cap.** At most [`HttpLimits::max_connections`] connections are served at once; past it the
//!   gateway stops accepting until one closes, and new ones wait in the kernel's backlog. A WebSocket leaves the
//!   count when it is upgraded (the hub caps sockets with `WARREN_WS_MAX_CONNECTIONS`).
//!
//! HTTP/1.1 only: browsers speak HTTP/2 only over TLS, which a proxy in front ends, and HTTP/1.1 to the gateway.
//! Shutdown as `axum::serve`'s: stop accepting, let each connection finish the request it is serving, then close.

use std::{io, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

/// The bounds on HTTP connections (see the module's documentation).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop`, then waits for the connections in progress to finish their
/// requests. Every request carries `ConnectInfo<SocketAddr>`, as `into_make_service_with_connect_info` gives.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits, stop: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // A socket often gets two small frames back to back (a sender's own `message` echo, then the reply to its
        // `sendMessage`); with Nagle the second waits for the client's delayed ACK, ~40 ms.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(tcp), service).with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                // A client that went away, a header timeout, a malformed request: the connection's own business.
                tracing::debug!(%error, %remote, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// After a failed `accept`: a connection reset before it was accepted is the client's; anything else (out of
/// file descriptors, above all) is the process's, and accepting again at once would spin, so pause a second.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept HTTP connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
