//! The gateway's settings, from environment variables (see docs/OPERATIONS.md for the table).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::serve::HttpLimits;
use anyhow::{Context, bail};
use common::{
    auth::{DEV_PUBLIC_KEY_PEM, is_development_key},
    config::{AmqpSettings, Environment, env_millis, env_or, env_parse, env_secret},
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: Environment,
    /// `WARREN_HTTP_ADDR`, default `127.0.0.1:8080`. Port 0 picks a free port (tests).
    pub http_addr: SocketAddr,
    /// `WARREN_INSTANCE_ID`: names this replica's queues; random when unset.
    pub instance_id: String,
    pub amqp: AmqpSettings,
    /// `WARREN_JWT_PUBLIC_KEY` or `_FILE`: Ed25519 public key (PEM). The development key when unset, except in
    /// production, where the gateway refuses to start without one.
    pub jwt_public_key_pem: String,
    /// `WARREN_ALLOWED_ORIGINS`: comma-separated web origins allowed for CORS and WebSocket upgrades.
    pub allowed_origins: Vec<String>,
    /// `WARREN_RPC_TIMEOUT_MS`, default 5000: how long a request waits for a service.
    pub rpc_timeout: Duration,
    /// `WARREN_HTTP_BODY_TIMEOUT_MS`, default 30000: how long an HTTP request's body may take to arrive, in all.
    /// A client that announces a body and sends it slowly, or never, is answered 408 instead of holding a
    /// connection and its task for as long as it likes.
    pub http_body_timeout: Duration,
    /// `WARREN_HTTP_HEADER_TIMEOUT_MS` (default 30000) and `WARREN_HTTP_MAX_CONNECTIONS` (default 10000): how long
    /// a request's headers may take to arrive (from the connection's start, or the previous response's end) and
    /// how many HTTP connections are served at once (see `serve`).
    pub http: HttpLimits,
    /// `WARREN_SEND_BATCH_INTERVAL_MS`, default 0: least time between the starts of two `sendMessages` batches
    /// (see `send_batcher`). 0 sends the next batch as soon as the last was answered; more trades up to this much
    /// latency per send for fewer, larger batches (less CPU per message) while sends keep coming. A send after a
    /// quiet spell longer than this is never held.
    pub send_batch_interval: Duration,
    /// `WARREN_AUTH_RATE_PER_MINUTE` (default 30) and `WARREN_AUTH_RATE_BURST` (default 10): register and login
    /// attempts allowed per client address.
    pub auth_rate_per_minute: u32,
    pub auth_rate_burst: u32,
    /// `WARREN_TRUST_FORWARDED_FOR`: take the client address from `X-Forwarded-For` (only behind a proxy you run).
    pub trust_forwarded_for: bool,
    /// `WARREN_WEB_DIR`: the built web app to serve at `/`, if any.
    pub web_dir: Option<PathBuf>,
    /// `WARREN_REQUIRE_MESSAGE_SERVICE`, default true: `/readyz` also waits for a message-service replica on
    /// every message operation. Tests of the user endpoints alone turn it off.
    pub require_message_service: bool,
    pub ws: WsSettings,
}

/// The WebSocket endpoint's limits and timers. Every one bounds memory or time per connection (DESIGN §2.7).
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// `WARREN_WS_AUTH_TIMEOUT_MS`, default 5000: how long a new socket may take to send its `auth` frame.
    pub auth_timeout: Duration,
    /// `WARREN_WS_PING_INTERVAL_MS`, default 20000: how often the gateway pings (told to clients in `ready`).
    pub ping_interval: Duration,
    /// `WARREN_WS_IDLE_TIMEOUT_MS`, default 60000: a socket that sends nothing (not even a pong) this long is
    /// closed.
    pub idle_timeout: Duration,
    /// `WARREN_WS_SYNC_INTERVAL_MS`, default 30000: how often an idle client should `sync` (told in `ready`).
    pub sync_interval: Duration,
    /// `WARREN_WS_MAX_MESSAGE_BYTES`, default 65536: the largest frame (and message) a client may send;
    /// larger ones close the socket with 1009. A `sync` with the most heads allowed needs ~41 KB.
    pub max_message_bytes: usize,
    /// `WARREN_WS_OUTBOUND_QUEUE`, default 1024: frames queued for one socket before it counts as too slow and is
    /// closed with 4008. One commit's event batch arrives as a burst, so this must exceed the events one user can
    /// get from a single batch; slots cost nothing until used and queued frames share their bytes.
    pub outbound_queue: usize,
    /// `WARREN_WS_MAX_IN_FLIGHT`, default 32: requests one socket may have in flight; more get `rate_limited`.
    pub max_in_flight: usize,
    /// `WARREN_WS_WRITE_TIMEOUT_MS`, default 10000: a write the client does not take in this time closes the
    /// socket with 4008.
    pub write_timeout: Duration,
    /// `WARREN_WS_MAX_CONNECTIONS`, default 10000: sockets this gateway holds at once; more are refused with 503.
    pub max_connections: usize,
}

impl WsSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let settings = Self {
            auth_timeout: env_millis("WARREN_WS_AUTH_TIMEOUT_MS", 5_000)?,
            ping_interval: env_millis("WARREN_WS_PING_INTERVAL_MS", 20_000)?,
            idle_timeout: env_millis("WARREN_WS_IDLE_TIMEOUT_MS", 60_000)?,
            sync_interval: env_millis("WARREN_WS_SYNC_INTERVAL_MS", 30_000)?,
            max_message_bytes: env_parse("WARREN_WS_MAX_MESSAGE_BYTES", 64 * 1024)?,
            outbound_queue: env_parse("WARREN_WS_OUTBOUND_QUEUE", 1024)?,
            max_in_flight: env_parse("WARREN_WS_MAX_IN_FLIGHT", 32)?,
            write_timeout: env_millis("WARREN_WS_WRITE_TIMEOUT_MS", 10_000)?,
            max_connections: env_parse("WARREN_WS_MAX_CONNECTIONS", 10_000)?,
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            bail!("WARREN_WS_IDLE_TIMEOUT_MS must be longer than WARREN_WS_PING_INTERVAL_MS (> 0)");
        }
        if self.outbound_queue == 0 || self.max_in_flight == 0 || self.max_connections == 0 {
            bail!("WARREN_WS_OUTBOUND_QUEUE, WARREN_WS_MAX_IN_FLIGHT and WARREN_WS_MAX_CONNECTIONS must be > 0");
        }
        if self.max_message_bytes < 1024 {
            bail!("WARREN_WS_MAX_MESSAGE_BYTES must be at least 1024");
        }
        Ok(())
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            sync_interval: Duration::from_secs(30),
            max_message_bytes: 64 * 1024,
            outbound_queue: 1024,
            max_in_flight: 32,
            write_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let environment = Environment::from_env()?;
        let jwt_public_key_pem = match env_secret("WARREN_JWT_PUBLIC_KEY")? {
            Some(pem) => pem.expose().clone(),
            None if environment == Environment::Production => {
                bail!("WARREN_JWT_PUBLIC_KEY (or WARREN_JWT_PUBLIC_KEY_FILE) is required in production")
            }
            None => DEV_PUBLIC_KEY_PEM.to_owned(),
        };
        if is_development_key(&jwt_public_key_pem) {
            if environment == Environment::Production {
                bail!("the development JWT key must not be used in production");
            }
            tracing::warn!(
                "accepting tokens signed with the development key, which is public: anyone can forge a token. \
                 Outside a developer machine set WARREN_ENV=production and WARREN_JWT_PUBLIC_KEY"
            );
        }
        let web_dir = std::env::var("WARREN_WEB_DIR").ok().filter(|d| !d.trim().is_empty()).map(PathBuf::from);
        Ok(Self {
            environment,
            http_addr: env_or("WARREN_HTTP_ADDR", "127.0.0.1:8080").parse().context("WARREN_HTTP_ADDR")?,
            instance_id: env_or("WARREN_INSTANCE_ID", &default_instance_id()),
            amqp: AmqpSettings::from_env()?,
            jwt_public_key_pem,
            allowed_origins: parse_origins(&env_or(
                "WARREN_ALLOWED_ORIGINS",
                "http://127.0.0.1:8080,http://localhost:8080,http://127.0.0.1:5173,http://localhost:5173",
            ))
            .context("WARREN_ALLOWED_ORIGINS")?,
            rpc_timeout: env_millis("WARREN_RPC_TIMEOUT_MS", 5_000)?,
            http_body_timeout: env_millis("WARREN_HTTP_BODY_TIMEOUT_MS", 30_000)?,
            http: http_limits(
                env_millis("WARREN_HTTP_HEADER_TIMEOUT_MS", 30_000)?,
                env_parse("WARREN_HTTP_MAX_CONNECTIONS", 10_000)?,
            )?,
            send_batch_interval: send_batch_interval(env_millis("WARREN_SEND_BATCH_INTERVAL_MS", 0)?)?,
            auth_rate_per_minute: env_parse("WARREN_AUTH_RATE_PER_MINUTE", 30)?,
            auth_rate_burst: env_parse("WARREN_AUTH_RATE_BURST", 10)?,
            trust_forwarded_for: env_parse("WARREN_TRUST_FORWARDED_FOR", false)?,
            web_dir,
            require_message_service: env_parse("WARREN_REQUIRE_MESSAGE_SERVICE", true)?,
            ws: WsSettings::from_env()?,
        })
    }

    /// Settings for tests: development key, port 0, the given broker settings, and readiness without a
    /// message-service (set `require_message_service` when a test starts one).
    pub fn for_tests(amqp: AmqpSettings) -> Self {
        Self {
            environment: Environment::Development,
            http_addr: "127.0.0.1:0".parse().expect("a valid literal address"),
            instance_id: default_instance_id(),
            amqp,
            jwt_public_key_pem: DEV_PUBLIC_KEY_PEM.to_owned(),
            allowed_origins: vec!["http://localhost:5173".to_owned()],
            rpc_timeout: Duration::from_secs(5),
            http_body_timeout: Duration::from_secs(30),
            http: HttpLimits { header_timeout: Duration::from_secs(30), max_connections: 10_000 },
            send_batch_interval: Duration::ZERO,
            auth_rate_per_minute: 6_000,
            auth_rate_burst: 1_000,
            trust_forwarded_for: false,
            web_dir: None,
            require_message_service: false,
            ws: WsSettings::default(),
        }
    }
}

fn http_limits(header_timeout: Duration, max_connections: usize) -> anyhow::Result<HttpLimits> {
    if header_timeout.is_zero() {
        bail!("WARREN_HTTP_HEADER_TIMEOUT_MS must be more than 0 (it would close every connection at once)");
    }
    if max_connections == 0 {
        bail!("WARREN_HTTP_MAX_CONNECTIONS must be more than 0");
    }
    Ok(HttpLimits { header_timeout, max_connections })
}

/// Most a send may be held for company: beyond this the wait stops being a batching window and becomes lag.
pub const MAX_SEND_BATCH_INTERVAL: Duration = Duration::from_millis(100);

fn send_batch_interval(interval: Duration) -> anyhow::Result<Duration> {
    if interval > MAX_SEND_BATCH_INTERVAL {
        bail!(
            "WARREN_SEND_BATCH_INTERVAL_MS must be at most {} (it is added to a send's latency under load)",
            MAX_SEND_BATCH_INTERVAL.as_millis()
        );
    }
    Ok(interval)
}

/// A comma-separated list of origins, each `http(s)://host[:port]` as browsers send them, kept lowercased
/// without a trailing slash (how [`origin_allowed`] compares). Anything else is refused at start-up rather than
/// never matching: a wildcard (every page on the web could use a signed-in user's token), a path, a query.
fn parse_origins(list: &str) -> anyhow::Result<Vec<String>> {
    let mut origins = Vec::new();
    for origin in list.split(',').map(|o| o.trim().trim_end_matches('/')).filter(|o| !o.is_empty()) {
        let uri: axum::http::Uri = origin.parse().with_context(|| format!("{origin:?} is not an origin"))?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        let host_ok = uri.host().is_some_and(|host| !host.is_empty() && !host.contains('*'));
        let bare = uri.path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/");
        if !(scheme_ok && host_ok && bare) || origin.contains('@') {
            bail!(
                "{origin:?} is not an origin: write scheme://host[:port], such as https://chat.example.com (no wildcard, path or query)"
            );
        }
        origins.push(origin.to_ascii_lowercase());
    }
    Ok(origins)
}

/// Whether a request's `Origin` is one of `allowed` (as [`parse_origins`] keeps them): the same rule for CORS
/// and for the WebSocket upgrade. Host names are case-insensitive, so the comparison is too.
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    allowed.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
}

pub fn default_instance_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("api-{}", &id[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_defaults_are_consistent_and_nonsense_is_refused() {
        assert!(WsSettings::default().check().is_ok());
        let idle_before_ping = WsSettings { idle_timeout: Duration::from_secs(10), ..WsSettings::default() };
        assert!(idle_before_ping.check().is_err());
        assert!(WsSettings { outbound_queue: 0, ..WsSettings::default() }.check().is_err());
    }

    #[test]
    fn the_send_batch_interval_is_off_by_default_and_bounded() {
        assert_eq!(send_batch_interval(Duration::ZERO).ok(), Some(Duration::ZERO));
        assert_eq!(send_batch_interval(Duration::from_millis(5)).ok(), Some(Duration::from_millis(5)));
        assert!(send_batch_interval(MAX_SEND_BATCH_INTERVAL).is_ok());
        let error = send_batch_interval(Duration::from_millis(101)).expect_err("over the bound");
        assert!(error.to_string().contains("WARREN_SEND_BATCH_INTERVAL_MS"), "{error}");
    }

    #[test]
    fn http_limits_of_zero_are_refused_at_start_up() {
        let limits = http_limits(Duration::from_millis(1), 1).unwrap();
        assert_eq!((limits.header_timeout, limits.max_connections), (Duration::from_millis(1), 1));
        let no_time = http_limits(Duration::ZERO, 10).unwrap_err().to_string();
        assert!(no_time.contains("WARREN_HTTP_HEADER_TIMEOUT_MS"), "{no_time}");
        let no_room = http_limits(Duration::from_secs(30), 0).unwrap_err().to_string();
        assert!(no_room.contains("WARREN_HTTP_MAX_CONNECTIONS"), "{no_room}");
    }

    #[test]
    fn origins_are_trimmed_and_normalised() {
        assert_eq!(
            parse_origins(" http://a.example/ ,,https://B.Example:8443").unwrap(),
            vec!["http://a.example", "https://b.example:8443"]
        );
    }

    #[test]
    fn what_is_not_an_origin_is_refused_at_start_up_with_the_value_named() {
        for bad in [
            "*",
            "https://*.example.com",
            "chat.example.com",
            "ftp://chat.example.com",
            "https://a.example/app",
            "https://a.example?x=1",
            "https://user@a.example",
            "http://:80",
        ] {
            let error = parse_origins(&format!("http://ok.example,{bad}")).expect_err(bad);
            assert!(format!("{error:#}").contains(bad), "{bad}: {error:#}");
        }
    }

    #[test]
    fn only_listed_origins_pass() {
        let allowed = vec!["http://localhost:5173".to_owned()];
        assert!(origin_allowed("http://localhost:5173", &allowed));
        assert!(origin_allowed("http://LOCALHOST:5173/", &allowed));
        assert!(!origin_allowed("http://localhost:5174", &allowed));
        assert!(!origin_allowed("null", &allowed));
        assert!(!origin_allowed("http://localhost:5173.evil.example", &allowed));
    }
}
