//! Where the load goes. The load generator only ever targets this machine: every gateway (and the database used
//! to seed history) must be a 127.0.0.1 address, so a typo cannot turn it on someone else's server.

use anyhow::{Context, bail};

/// A gateway: its HTTP base (`http://127.0.0.1:8080`) and its WebSocket endpoint (`ws://127.0.0.1:8080/ws`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub http: String,
    pub ws: String,
}

impl Gateway {
    /// Reads `http://127.0.0.1:PORT` (a trailing slash or `/ws` is ignored; `localhost` means 127.0.0.1).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url.trim().strip_prefix("http://").with_context(|| format!("{url}: use http://127.0.0.1:PORT"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = authority.rsplit_once(':').with_context(|| format!("{url}: a port is required"))?;
        check_host(host).with_context(|| format!("gateway {url}"))?;
        let port: u16 = port.parse().with_context(|| format!("{url}: bad port"))?;
        Ok(Self { http: format!("http://127.0.0.1:{port}"), ws: format!("ws://127.0.0.1:{port}/ws") })
    }
}

/// Refuses any host but 127.0.0.1 (or `localhost`, taken as 127.0.0.1).
pub fn check_host(host: &str) -> anyhow::Result<()> {
    match host {
        "127.0.0.1" | "localhost" => Ok(()),
        other => bail!("the load generator only targets 127.0.0.1, not {other:?}"),
    }
}

/// Checks a PostgreSQL URL (`postgres://user@127.0.0.1:5432/db`) and returns its database name.
pub fn check_database_url(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .context("the database URL must start with postgres://")?;
    let (authority, path) = rest.split_once('/').context("the database URL must name a database")?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    check_host(host).context("database URL")?;
    let database = path.split('?').next().unwrap_or_default();
    if database.is_empty() {
        bail!("the database URL must name a database");
    }
    Ok(database.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_gateways_are_accepted_and_normalised() {
        let gateway = Gateway::parse("http://localhost:8081/").unwrap();
        assert_eq!(gateway.http, "http://127.0.0.1:8081");
        assert_eq!(gateway.ws, "ws://127.0.0.1:8081/ws");
        assert_eq!(Gateway::parse("http://127.0.0.1:8080/ws").unwrap().ws, "ws://127.0.0.1:8080/ws");
    }

    #[test]
    fn anything_else_is_refused() {
        for url in [
            "http://10.0.0.1:8080",
            "http://example.com:8080",
            "https://127.0.0.1:8080",
            "http://127.0.0.1",
            "http://127.0.0.2:80",
            "http://[::1]:8080",
            "http://127.0.0.1.evil.example:80",
        ] {
            assert!(Gateway::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn database_urls_must_be_local_too() {
        assert_eq!(check_database_url("postgres://postgres@127.0.0.1:5432/warren_bench").unwrap(), "warren_bench");
        assert!(check_database_url("postgres://postgres@db.example:5432/warren").is_err());
        assert!(check_database_url("postgres://postgres@127.0.0.1:5432/").is_err());
        assert!(check_database_url("mysql://127.0.0.1/x").is_err());
    }
}
