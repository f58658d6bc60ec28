//! Users for a run: `<prefix>u<i>`, registered once and reused. Register answers 409 for a user that exists, who
//! then logs in. Both cost an argon2 hash on the user-service (~30 ms of a core), so they run concurrently but
//! bounded, and every failure that may pass (429, 503, a timeout) is retried a bounded number of times.
//!
//! With `--dev-tokens` the load generator mints tokens itself with the development signing key (only a gateway
//! in development mode accepts them) for users that already exist, found by username prefix: a rerun against
//! the same database then costs no hashing at all.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use common::{
    auth::{DEV_PRIVATE_KEY_PEM, TokenSigner},
    protocol::users::{AuthResponse, UsersPage},
};
use futures_util::{StreamExt, stream};
use serde_json::json;

use crate::target::Gateway;

const PASSWORD: &str = "loadgen-password-1";
const ATTEMPTS: u32 = 20;

/// A user ready to connect.
#[derive(Debug, Clone)]
pub struct User {
    pub index: usize,
    pub id: i64,
    pub username: String,
    pub token: String,
    /// Index of the gateway the user's sockets go to (users are spread round-robin).
    pub gateway: usize,
}

pub fn username(prefix: &str, index: usize) -> String {
    format!("{prefix}u{index}")
}

/// Registers (or logs in) users `0..count`, `concurrency` at a time.
pub async fn users(
    gateways: &[Gateway],
    prefix: &str,
    count: usize,
    concurrency: usize,
    dev_tokens: bool,
) -> anyhow::Result<Vec<User>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let started = Instant::now();
    let mut known: HashMap<String, i64> = HashMap::new();
    if dev_tokens && count > 0 {
        let first = account(&http, &gateways[0], &username(prefix, 0)).await?;
        known = existing(&http, &gateways[0], &first.token, &format!("{prefix}u")).await?;
        known.insert(first.user.username.clone(), first.user.id);
    }
    let signer = if dev_tokens { Some(TokenSigner::from_private_pem(DEV_PRIVATE_KEY_PEM.as_bytes())?) } else { None };
    let minted = known.len().min(count);

    let results: Vec<anyhow::Result<User>> = stream::iter(0..count)
        .map(|index| {
            let http = &http;
            let gateway = index % gateways.len();
            let name = username(prefix, index);
            let known_id = known.get(&name).copied();
            let signer = signer.as_ref();
            async move {
                if let (Some(id), Some(signer)) = (known_id, signer) {
                    let now = chrono_now();
                    let token = signer.sign(id, &name, Duration::from_secs(3600), now)?;
                    return Ok(User { index, id, username: name, token, gateway });
                }
                let auth = account(http, &gateways[gateway], &name).await?;
                Ok(User { index, id: auth.user.id, username: name, token: auth.token, gateway })
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let users = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "loadgen: {} users ready in {:.1}s ({} with minted development tokens)",
        users.len(),
        started.elapsed().as_secs_f64(),
        if dev_tokens { minted } else { 0 }
    );
    Ok(users)
}

/// Registers `name`, or logs in when it exists. Retries what may pass later.
async fn account(http: &reqwest::Client, gateway: &Gateway, name: &str) -> anyhow::Result<AuthResponse> {
    let body = json!({ "username": name, "password": PASSWORD });
    let mut path = "register";
    let mut backoff = Duration::from_millis(100);
    for _ in 0..ATTEMPTS {
        let response = http.post(format!("{}/api/{path}", gateway.http)).json(&body).send().await;
        let retry = match response {
            Ok(response) => match response.status().as_u16() {
                200 | 201 => return response.json::<AuthResponse>().await.context("reading the auth response"),
                409 if path == "register" => {
                    path = "login";
                    continue;
                }
                429 | 502 | 503 | 504 => format!("HTTP {}", response.status()),
                _ => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    bail!("{path} {name}: HTTP {status}: {text}");
                }
            },
            Err(error) if error.is_timeout() || error.is_connect() => error.to_string(),
            Err(error) => bail!("{path} {name}: {error}"),
        };
        tracing_retry(name, &retry);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
    bail!("{path} {name}: gave up after {ATTEMPTS} attempts (raise WARREN_AUTH_RATE_PER_MINUTE on the gateway?)")
}

fn tracing_retry(name: &str, why: &str) {
    if std::env::var_os("LOADGEN_VERBOSE").is_some() {
        eprintln!("loadgen: retrying {name}: {why}");
    }
}

/// Existing users whose names start with `prefix`, by name.
async fn existing(
    http: &reqwest::Client,
    gateway: &Gateway,
    token: &str,
    prefix: &str,
) -> anyhow::Result<HashMap<String, i64>> {
    let mut found = HashMap::new();
    let mut after: Option<i64> = None;
    // Bounded: a page holds up to 100 users; a million users is ten thousand pages.
    for _ in 0..10_000 {
        let mut request = http
            .get(format!("{}/api/users", gateway.http))
            .bearer_auth(token)
            .query(&[("prefix", prefix), ("limit", "100")]);
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            bail!("listing users: HTTP {}", response.status());
        }
        let page: UsersPage = response.json().await?;
        for user in page.users {
            found.insert(user.username, user.id);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(found),
        }
    }
    Ok(found)
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_valid_and_distinct() {
        assert_eq!(username("lg", 0), "lgu0");
        assert_eq!(username("bench", 9999), "benchu9999");
        assert!(username("lg", 0).len() >= 3);
    }
}
