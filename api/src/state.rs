//! What every request handler can reach: the RPC client, the token verifier, the rate limiter, the settings, and
//! the WebSocket hub with the event subscription that feeds it.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc};

use common::{
    amqp::{Broker, CallContext, EventSubscriber, RpcClient},
    auth::{TokenVerifier, VerifiedUser},
    protocol::{
        ApiError, Operation,
        messages::{AsUser, Message, SendMessageRequest},
    },
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};

use crate::{config::Settings, error::HttpError, send_batcher::SendBatcher, ws::Hub};

#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    broker: Broker,
    rpc: RpcClient,
    verifier: TokenVerifier,
    auth_limiter: DefaultKeyedRateLimiter<IpAddr>,
    hub: Hub,
    events: EventSubscriber,
    sends: SendBatcher,
}

impl AppState {
    pub fn new(
        settings: Settings,
        broker: Broker,
        rpc: RpcClient,
        hub: Hub,
        events: EventSubscriber,
    ) -> anyhow::Result<Self> {
        let verifier = TokenVerifier::from_public_pem(settings.jwt_public_key_pem.as_bytes())?;
        let per_minute = NonZeroU32::new(settings.auth_rate_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.auth_rate_burst).unwrap_or(NonZeroU32::MIN);
        let auth_limiter = RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst));
        let sends = SendBatcher::start(rpc.clone(), settings.rpc_timeout, settings.send_batch_interval);
        Ok(Self { inner: Arc::new(Inner { settings, broker, rpc, verifier, auth_limiter, hub, events, sends }) })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.inner.rpc
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn events(&self) -> &EventSubscriber {
        &self.inner.events
    }

    /// Calls a service operation with the gateway's timeout, logging under the request id.
    pub async fn call<O: Operation>(&self, request_id: &str, request: &O::Request) -> Result<O::Response, ApiError> {
        let deadline = tokio::time::Instant::now() + self.inner.settings.rpc_timeout;
        self.call_until::<O>(request_id, request, deadline).await
    }

    /// Calls a service operation that must be answered by `deadline` (a request that waited before its call
    /// started); the service is told the same deadline, so it drops the request unexecuted once it has passed.
    pub async fn call_until<O: Operation>(
        &self,
        request_id: &str,
        request: &O::Request,
        deadline: tokio::time::Instant,
    ) -> Result<O::Response, ApiError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(ApiError::timeout(format!("{} did not answer in time", O::ROUTING_KEY)));
        }
        self.inner.rpc.call::<O>(request, &CallContext::new(request_id, left)).await
    }

    /// Sends a message on behalf of `user_id`, batched with whatever else is being sent through this gateway.
    /// `stream`: the socket it came on, whose sends to one place keep their order (`None` for REST, whose
    /// requests are independent).
    pub async fn send_message(
        &self,
        request_id: &str,
        stream: Option<&std::sync::Arc<str>>,
        user_id: i64,
        request: SendMessageRequest,
    ) -> Result<Message, ApiError> {
        self.inner.sends.send(request_id, stream, AsUser { user_id, request }).await
    }

    /// Verifies a bearer token. Every refusal looks the same to the client; the reason is logged.
    pub fn authenticate(&self, token: &str) -> Result<VerifiedUser, ApiError> {
        self.inner.verifier.verify(token).map_err(|reason| {
            tracing::info!(%reason, "token refused");
            ApiError::unauthorized("invalid or expired token")
        })
    }

    /// Counts one register/login attempt from `client` (see [`rate_key`]); `Err` with a retry delay when over the
    /// limit.
    pub fn check_auth_rate(&self, client: IpAddr) -> Result<(), HttpError> {
        self.inner.auth_limiter.check_key(&rate_key(client)).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            HttpError::rate_limited(wait.as_secs() + 1)
        })
    }

    /// Forgets idle clients so the limiter's memory stays bounded.
    pub fn prune_rate_limiter(&self) {
        self.inner.auth_limiter.retain_recent();
        self.inner.auth_limiter.shrink_to_fit();
    }
}

/// Whom a rate limit counts an address against. An IPv6 client is given a whole /64 (the prefix a single
/// network gets; within it a host picks any of 2^64 addresses, so counting each would not limit it at all), as an
/// IPv4 household behind one address is counted as one; an IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is
/// that IPv4 address.
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::rate_key;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_ipv6_network_counts_as_one_client_and_ipv4_as_itself() {
        assert_eq!(rate_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(rate_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), ip("2001:db8:1:2::"));
        assert_ne!(rate_key(ip("2001:db8:1:3::1")), rate_key(ip("2001:db8:1:2::1")));
        assert_eq!(rate_key(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(rate_key(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
        assert_ne!(rate_key(ip("203.0.113.7")), rate_key(ip("203.0.113.8")));
    }
}
