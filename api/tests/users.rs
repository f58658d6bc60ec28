//! The user endpoints through the real gateway, user-service, RabbitMQ and PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use common::auth::{DEV_PRIVATE_KEY_PEM, DEV_PUBLIC_KEY_PEM, Session, TokenSigner, TokenVerifier};
use serde_json::{Value, json};
use support::{Options, error_code, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_registered_user_can_log_in_and_see_itself_and_others() {
    let app = spawn_app().await;
    app.register("bob").await;

    let (_, alice_id) = app.register("alice").await;
    let login = app.post("/api/login", &json!({ "username": "ALICE", "password": "correct horse battery" })).await;
    assert_eq!(login.status(), 200);
    let body: Value = login.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(body["user"]["id"], alice_id);
    assert!(body["expiresAt"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis());

    let me: Value = app.get_with_token("/api/me", token).await.json().await.unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["id"], alice_id);
    assert!(me.get("passwordHash").is_none() && me.get("password_hash").is_none());

    let users: Value = app.get_with_token("/api/users?prefix=b", token).await.json().await.unwrap();
    let names: Vec<&str> = users["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["bob"]);
    let by_id: Value =
        app.get_with_token(&format!("/api/users?ids={alice_id},999999"), token).await.json().await.unwrap();
    let names: Vec<&str> = by_id["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice"], "unknown ids are left out");
    app.shutdown().await;
}

#[tokio::test]
async fn the_user_list_pages_by_cursor() {
    let app = spawn_app().await;
    let (token, _) = app.register("user0").await;
    for i in 1..6 {
        app.register(&format!("user{i}")).await;
    }

    let first: Value = app.get_with_token("/api/users?limit=3", &token).await.json().await.unwrap();
    let next = first["next"].as_i64().expect("a next cursor");
    let second: Value =
        app.get_with_token(&format!("/api/users?limit=3&after={next}"), &token).await.json().await.unwrap();
    let shorter: Value =
        app.get_with_token(&format!("/api/users?limit=4&after={next}"), &token).await.json().await.unwrap();

    let names = |page: &Value| -> Vec<String> {
        page["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&first), ["user0", "user1", "user2"]);
    assert_eq!(names(&second), ["user3", "user4", "user5"]);
    assert!(second.get("next").is_none_or(Value::is_null), "an exactly full last page has no next: {second}");
    assert_eq!(names(&shorter), ["user3", "user4", "user5"]);
    assert!(shorter.get("next").is_none_or(Value::is_null));
    app.shutdown().await;
}

#[tokio::test]
async fn a_lookup_by_id_refuses_other_criteria_and_impossible_ids() {
    let app = spawn_app().await;
    let (token, alice_id) = app.register("alice").await;

    for query in [
        format!("ids={alice_id}&prefix=a"),
        format!("ids={alice_id}&after=0"),
        format!("ids={alice_id}&limit=5"),
        format!("ids={alice_id},0"),
        format!("ids=-3,{alice_id}"),
    ] {
        let response = app.get_with_token(&format!("/api/users?{query}"), &token).await;
        assert_eq!(response.status(), 422, "{query}");
        assert_eq!(error_code(response).await, "validation", "{query}");
    }
    let by_id: Value = app.get_with_token(&format!("/api/users?ids={alice_id}"), &token).await.json().await.unwrap();
    assert_eq!(by_id["users"][0]["id"], alice_id);
    app.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_byte_identical_answers() {
    let app = spawn_app().await;
    app.register("carol").await;

    let wrong = app.post("/api/login", &json!({ "username": "carol", "password": "not the password" })).await;
    let unknown = app.post("/api/login", &json!({ "username": "nobody", "password": "not the password" })).await;

    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert_eq!(wrong.bytes().await.unwrap(), unknown.bytes().await.unwrap());
    app.shutdown().await;
}

#[tokio::test]
async fn registering_a_taken_name_in_any_case_is_a_conflict() {
    let app = spawn_app().await;
    let (_, dave) = app.register("dave").await;

    let again = app.post("/api/register", &json!({ "username": "DaVe", "password": "another password" })).await;

    assert_eq!(again.status(), 409);
    assert_eq!(error_code(again).await, "conflict");

    // The same name and password again, as a client asks after its first register timed out (the account was
    // created after the gateway gave up): answered as the first was, not "taken".
    let repeat = app.post("/api/register", &json!({ "username": "dave", "password": "correct horse battery" })).await;
    assert_eq!(repeat.status(), 201);
    let body: Value = repeat.json().await.unwrap();
    assert_eq!((&body["user"]["id"], body["token"].is_string()), (&json!(dave), true), "{body}");

    // Not once the account is older than the window: then the name is simply taken.
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&app.db.url()).await.unwrap();
    sqlx::query("UPDATE users.users SET created_at = now() - interval '11 minutes' WHERE lower(username) = 'dave'")
        .execute(&mut db)
        .await
        .unwrap();
    let late = app.post("/api/register", &json!({ "username": "dave", "password": "correct horse battery" })).await;
    assert_eq!(late.status(), 409);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_get_typed_errors() {
    let app = spawn_app().await;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            app.http.post(app.url("/api/register")).header("content-type", "application/json").body("{not json"),
            400,
            "bad_request",
        ),
        (app.http.post(app.url("/api/register")).json(&json!({ "username": "erin" })), 400, "bad_request"),
        // A struct read by position from an array: refused, not registered.
        (app.http.post(app.url("/api/register")).json(&json!(["erin", "long enough"])), 400, "bad_request"),
        (app.http.post(app.url("/api/login")).json(&json!(["erin", "long enough"])), 400, "bad_request"),
        (
            app.http
                .post(app.url("/api/register"))
                .header("content-type", "application/json")
                .body(r#"{"username":"erin","username":"mallory","password":"long enough"}"#),
            400,
            "bad_request",
        ),
        (
            app.http.post(app.url("/api/register")).json(&json!({ "username": 7, "password": "long enough" })),
            400,
            "bad_request",
        ),
        (
            app.http
                .post(app.url("/api/register"))
                .json(&json!({ "username": "x".repeat(33), "password": "long enough" })),
            422,
            "validation",
        ),
        (
            app.http
                .post(app.url("/api/register"))
                .json(&json!({ "username": "has space", "password": "long enough" })),
            422,
            "validation",
        ),
        (
            app.http.post(app.url("/api/register")).json(&json!({ "username": "erin", "password": "short" })),
            422,
            "validation",
        ),
        (
            app.http.post(app.url("/api/register")).json(&json!({ "username": "erin", "password": "p".repeat(129) })),
            422,
            "validation",
        ),
        (app.http.post(app.url("/api/register")).body("username=erin"), 400, "bad_request"),
        (
            app.http
                .post(app.url("/api/register"))
                .header("content-type", "application/json")
                .body(vec![b' '; 200_000]),
            413,
            "payload_too_large",
        ),
        (app.http.get(app.url("/api/users?limit=abc")), 401, "unauthorized"),
        (app.http.get(app.url("/api/nowhere")), 404, "not_found"),
        (app.http.get(app.url("/nowhere")), 404, "not_found"),
        (app.http.put(app.url("/api/conversations")), 405, "method_not_allowed"),
        (app.http.delete(app.url("/api/register")), 405, "method_not_allowed"),
        (app.http.post(app.url("/healthz")), 405, "method_not_allowed"),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(got, status, "body: {body}");
        let body: Value = serde_json::from_str(&body).expect("every error is JSON");
        assert_eq!(body["error"]["code"], code, "body: {body}");
    }
    // Nothing was stored by any of them.
    let (token, _) = app.register("erin").await;
    let users: Value = app.get_with_token("/api/users", &token).await.json().await.unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 1);
    let bad_query = app.get_with_token("/api/users?limit=abc", &token).await;
    assert_eq!(bad_query.status(), 400);
    let too_many = app.get_with_token("/api/users?limit=1000", &token).await;
    assert_eq!(too_many.status(), 422);
    // A misspelt parameter is refused, not ignored (which would answer a different question).
    for path in ["/api/users?limt=5", "/api/conversations?befor=1:2", "/api/conversations/1/messages?befor=3"] {
        let misspelt = app.get_with_token(path, &token).await;
        assert_eq!(misspelt.status(), 400, "{path}");
        let body: Value = misspelt.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("unknown field"), "{path}: {body}");
    }
    for (path, body) in [
        ("/api/sync", json!({ "heads": [], "since": 3 })),
        ("/api/conversations", json!({ "title": "team", "memberIds": [], "colour": "red" })),
    ] {
        let refused = app.http.post(app.url(path)).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(refused.status(), 400, "{path}");
        let answer: Value = refused.json().await.unwrap();
        assert!(answer["error"]["message"].as_str().unwrap().contains("unknown field"), "{path}: {answer}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn expired_tampered_and_hs256_tokens_are_refused() {
    let app = spawn_app().await;
    let (token, user_id) = app.register("frank").await;
    let signer = TokenSigner::from_private_pem(DEV_PRIVATE_KEY_PEM.as_bytes()).unwrap();
    let long_ago = chrono::Utc::now().timestamp() - 10_000;
    let expired = signer.sign(user_id, "frank", Duration::from_secs(60), long_ago).unwrap();
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let claims = json!({ "sub": user_id.to_string(), "iat": chrono::Utc::now().timestamp(), "exp": chrono::Utc::now().timestamp() + 600, "name": "frank" });
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::auth::DEV_PUBLIC_KEY_PEM.as_bytes()),
    )
    .unwrap();

    for bad in [expired.as_str(), tampered.as_str(), hs256.as_str(), "garbage", ""] {
        let response = app.get_with_token("/api/me", bad).await;
        assert_eq!(response.status(), 401, "token {bad:?}");
        assert_eq!(error_code(response).await, "unauthorized");
    }
    assert_eq!(app.http.get(app.url("/api/me")).send().await.unwrap().status(), 401);
    assert_eq!(app.get_with_token("/api/me", &token).await.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn register_and_login_are_rate_limited_per_client() {
    let mut options = Options::default();
    options.gateway.auth_rate_per_minute = 1;
    options.gateway.auth_rate_burst = 3;
    let app = spawn_app_with(options).await;

    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = app.post("/api/login", &json!({ "username": "gina", "password": "whatever it is" })).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().get("retry-after").is_some());
            assert_eq!(error_code(response).await, "rate_limited");
        }
    }

    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    app.shutdown().await;
}

/// A gateway behind a trusted proxy that allows two register/login attempts per client, then one a minute.
fn two_attempts_behind_a_proxy() -> Options {
    let mut options = Options::default();
    options.gateway.auth_rate_per_minute = 1;
    options.gateway.auth_rate_burst = 2;
    options.gateway.trust_forwarded_for = true;
    options
}

/// A failing login with each `X-Forwarded-For` value in turn: the statuses.
async fn logins_forwarded_for(app: &support::TestApp, forwarded: &[&str]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for value in forwarded {
        let response = app
            .http
            .post(app.url("/api/login"))
            .header("x-forwarded-for", *value)
            .json(&json!({ "username": "nobody", "password": "whatever it is" }))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

/// Behind a trusted proxy the limit counts the forwarded address; an IPv6 client counts as its whole /64, which
/// it could otherwise walk through one address per attempt.
#[tokio::test]
async fn the_limit_counts_an_ipv6_network_as_one_client() {
    let app = spawn_app_with(two_attempts_behind_a_proxy()).await;

    let forwarded = ["2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:ffff::3", "2001:db8:5:7::1", "198.51.100.1"];
    let statuses = logins_forwarded_for(&app, &forwarded).await;

    assert_eq!(statuses, [401, 401, 429, 401, 401], "one /64 shares a limit; another network has its own");
    app.shutdown().await;
}

/// A proxy that appends to `X-Forwarded-For` keeps what the client sent before its own entry: the limit counts
/// the address the proxy saw (the last entry), so a client naming a new address with each attempt is still
/// limited, and one it names cannot use up another client's attempts.
#[tokio::test]
async fn the_limit_counts_the_address_the_proxy_wrote_not_those_the_client_claimed() {
    let app = spawn_app_with(two_attempts_behind_a_proxy()).await;

    let forwarded =
        ["192.0.2.1, 203.0.113.9", "192.0.2.2, 203.0.113.9", "junk, 203.0.113.9", "203.0.113.9, 198.51.100.4"];
    let statuses = logins_forwarded_for(&app, &forwarded).await;

    assert_eq!(statuses, [401, 401, 429, 401], "203.0.113.9 is limited however it dresses; 198.51.100.4 is not");
    app.shutdown().await;
}

/// A client that announces a body and sends it too slowly, or never, is answered 408 with the usual error body
/// once the body deadline has passed, instead of holding its connection and its task.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut options = Options::default();
    options.gateway.http_body_timeout = Duration::from_millis(300);
    let app = spawn_app_with(options).await;
    let mut stalled = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    let head =
        "POST /api/login HTTP/1.1\r\nHost: warren\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    stalled.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("}}") {
            let n = stalled.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;

    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "no answer within 10 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"bad_request""#) && answer.contains("did not arrive in time"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300), "answered before the deadline: {:?}", started.elapsed());
    // A body that arrives in time is read as ever.
    let response = app.post("/api/login", &json!({ "username": "nobody", "password": "whatever it is" })).await;
    assert_eq!(response.status(), 401);
    app.shutdown().await;
}

/// A parser's message can quote the client's own value, which can be tens of kilobytes: what comes back is cut
/// short, on REST as on the WebSocket.
#[tokio::test]
async fn an_error_quotes_at_most_a_short_part_of_what_the_client_sent() {
    let app = spawn_app().await;
    let (token, _) = app.register("quoter").await;
    let long = "9x".repeat(30_000);

    let response = app
        .http
        .post(app.url("/api/conversations/1/read"))
        .bearer_auth(&token)
        .json(&json!({ "seq": long }))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 400);
    let message = response.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("invalid body: invalid type: string \"9x9x"), "{message}");
    assert!(message.chars().count() <= 201, "{} characters", message.chars().count());
    app.shutdown().await;
}

#[tokio::test]
async fn with_no_user_service_running_requests_fail_as_unavailable_at_once() {
    let app = spawn_app_with(Options { user_services: 0, ..Options::default() }).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.http.get(app.url("/readyz")).send().await.unwrap().json::<Value>().await.unwrap()["broker"]
        .as_bool()
        .unwrap()
    {
        assert!(Instant::now() < deadline, "gateway never connected");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let started = Instant::now();
    let response = app.post("/api/login", &json!({ "username": "hank", "password": "whatever it is" })).await;

    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(error_code(response).await, "unavailable");
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn after_the_last_user_service_stops_requests_fail_as_unavailable_at_once() {
    let mut app = spawn_app().await;
    app.register("ivan").await;
    app.stop_user_service(0).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let started = Instant::now();
    let response = app.post("/api/login", &json!({ "username": "ivan", "password": "correct horse battery" })).await;

    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    app.start_user_service().await;
    app.wait_until_ready().await;
    let again = app.post("/api/login", &json!({ "username": "ivan", "password": "correct horse battery" })).await;
    assert_eq!(again.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn the_request_id_is_echoed_and_generated_when_missing() {
    let app = spawn_app().await;

    let supplied = app.http.get(app.url("/healthz")).header("x-request-id", "trace-me-123").send().await.unwrap();
    let generated = app.http.get(app.url("/healthz")).send().await.unwrap();
    let forged = app.http.get(app.url("/healthz")).header("x-request-id", "bad id\twith tab").send().await.unwrap();

    assert_eq!(supplied.headers()["x-request-id"], "trace-me-123");
    assert_eq!(generated.headers()["x-request-id"].len(), 36);
    assert_ne!(forged.headers()["x-request-id"], "bad id\twith tab");
    app.shutdown().await;
}

#[tokio::test]
async fn cors_allows_only_the_configured_web_origins() {
    let app = spawn_app().await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };

    let allowed = preflight("http://localhost:5173").await.unwrap();
    // Host names are case-insensitive: the same rule as the WebSocket upgrade, which accepts this origin too.
    let other_case = preflight("http://LocalHost:5173").await.unwrap();
    let refused = preflight("https://evil.example").await.unwrap();

    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://localhost:5173");
    assert_eq!(other_case.headers()["access-control-allow-origin"], "http://LocalHost:5173");
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    // No endpoint takes PATCH: the preflight does not offer it.
    let methods = allowed.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
    assert!(!methods.contains("PATCH"), "{methods}");
    app.shutdown().await;
}

/// `POST /api/refresh`: a valid token buys a new one for the same session, which the gateway accepts; the session
/// (the sign-in) is carried on, and it ends at the user-service's maximum age whatever the refreshes.
#[tokio::test]
async fn a_token_is_refreshed_for_the_same_session_until_the_session_is_too_old() {
    let app = spawn_app().await;
    let (token, user_id) = app.register("rita").await;
    let verifier = TokenVerifier::from_public_pem(DEV_PUBLIC_KEY_PEM.as_bytes()).unwrap();
    let refresh = |token: String| {
        let request = app.http.post(app.url("/api/refresh")).bearer_auth(token).send();
        async move {
            let response = request.await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };

    let (status, body) = refresh(token.clone()).await;
    assert_eq!(status, 200, "{body}");
    // (Within the same second the new token is the old one again: the claims are the same.)
    let fresh = body["token"].as_str().unwrap();
    assert_eq!(body["user"]["id"], user_id);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (issued, expires) = (body["issuedAt"].as_i64().unwrap(), body["expiresAt"].as_i64().unwrap());
    assert!((issued - now_ms).abs() < 10_000 && expires - issued == 3_600_000, "{body}");
    let (first, second) = (verifier.verify(&token).unwrap(), verifier.verify(fresh).unwrap());
    assert_eq!(second.signed_in_at, first.signed_in_at, "the refresh began a new session");
    let me: Value = app.get_with_token("/api/me", fresh).await.json().await.unwrap();
    assert_eq!(me["id"], user_id);

    // The session's end caps the new token: signed in 30 days (the default maximum) less ten minutes ago.
    let signer = TokenSigner::from_private_pem(DEV_PRIVATE_KEY_PEM.as_bytes()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let old_session = |age: i64| {
        let session =
            Session { user_id, username: "rita", signed_in_at: now - age, max_age: Duration::from_secs(90 * 86_400) };
        signer.sign_session(&session, Duration::from_secs(3_600), now).unwrap().token
    };
    let (status, body) = refresh(old_session(30 * 86_400 - 600)).await;
    assert_eq!(status, 200, "{body}");
    let end_ms = (now + 600) * 1000;
    assert!((body["expiresAt"].as_i64().unwrap() - end_ms).abs() <= 2_000, "not capped at the session's end: {body}");

    // Past it, no more tokens: sign in again.
    let (status, body) = refresh(old_session(30 * 86_400 + 60)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("sign in again"), "{body}");

    // A user who no longer exists, an expired token, and none at all.
    let ghost = Session { user_id: 999_999, username: "ghost", signed_in_at: now, max_age: Duration::from_secs(3_600) };
    let ghost = signer.sign_session(&ghost, Duration::from_secs(3_600), now).unwrap().token;
    let expired = signer.sign(user_id, "rita", Duration::from_secs(60), now - 10_000).unwrap();
    for bad in [ghost, expired] {
        let (status, body) = refresh(bad).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    }
    let anonymous = app.http.post(app.url("/api/refresh")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // It takes no body.
    let with_body =
        app.http.post(app.url("/api/refresh")).bearer_auth(&token).json(&json!({ "ttl": 1 })).send().await.unwrap();
    assert_eq!(with_body.status(), 400);
    app.shutdown().await;
}

/// The user-service mints a token only for a token it signed, whoever asks: something that can publish on the
/// broker (a compromised gateway) cannot get one for a user it merely names, nor for a token of another key.
#[tokio::test]
async fn the_user_service_refreshes_only_tokens_it_signed() {
    use common::{
        amqp::{Broker, CallContext, RpcClient},
        protocol::{
            ErrorCode,
            users::{RefreshToken, RefreshTokenRequest},
        },
    };
    let app = spawn_app().await;
    let (token, user_id) = app.register("uma").await;
    let broker = Broker::start(&app.amqp, "a direct caller".into());
    let client = RpcClient::start(broker.clone(), "caller", &uuid::Uuid::new_v4().simple().to_string());
    common::testing::until_ready(&client, Duration::from_secs(10)).await;
    let refresh = |token: String| {
        let client = client.clone();
        async move {
            let ctx = CallContext::new("test", Duration::from_secs(10));
            client.call::<RefreshToken>(&RefreshTokenRequest { token }, &ctx).await
        }
    };
    const OTHER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPVRKt7z2KhSeu93Dhk+LDkHk8WgW//HVLXp7MHbAg3J
-----END PRIVATE KEY-----
";
    let now = chrono::Utc::now().timestamp();
    let forged = TokenSigner::from_private_pem(OTHER_KEY.as_bytes())
        .unwrap()
        .sign(user_id, "uma", Duration::from_secs(3_600), now)
        .unwrap();

    assert_eq!(refresh(token).await.unwrap().user.id, user_id);
    for bad in [forged, "not a token".to_owned(), String::new()] {
        let refused = refresh(bad).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unauthorized, "{refused:?}");
    }
    broker.close().await;
    app.shutdown().await;
}

/// Reads until the gateway closes the connection (EOF or reset): what it wrote, or `None` if it is still open
/// after `within`.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stream.read(&mut chunk).await
            && n > 0
        {
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .ok()
    .map(|()| String::from_utf8_lossy(&got).into_owned())
}

/// Slowloris: a connection that sends no request, or a request's headers too slowly, or that stays open idle after
/// its answer, is closed once the header timeout has passed, instead of holding a task and a file descriptor for
/// as long as its client likes. A request whose headers arrive in time is served as ever.
#[tokio::test]
async fn connections_whose_headers_do_not_arrive_in_time_are_closed() {
    use tokio::io::AsyncWriteExt;
    let mut options = Options { user_services: 0, ..Options::default() };
    options.gateway.http.header_timeout = Duration::from_millis(300);
    let app = spawn_app_with(options).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let connect = || tokio::net::TcpStream::connect(address.clone());
    let started = Instant::now();
    let mut silent = connect().await.unwrap();
    let mut partial = connect().await.unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\nX-Slow").await.unwrap();
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\n\r\n").await.unwrap();

    // Each watched at once, and when it closed noted: none may go before the timeout.
    let closed = |stream| async move {
        let wrote = until_closed(stream, Duration::from_secs(10)).await;
        (wrote, started.elapsed())
    };
    let ((idle_wrote, idle_at), (silent_wrote, silent_at), (partial_wrote, partial_at)) =
        tokio::join!(closed(&mut idle), closed(&mut silent), closed(&mut partial));

    let idle_wrote = idle_wrote.expect("an idle kept-alive connection is closed");
    assert!(idle_wrote.starts_with("HTTP/1.1 200"), "its request was answered first: {idle_wrote}");
    assert!(silent_wrote.is_some(), "a connection that sends nothing is closed");
    let partial_wrote = partial_wrote.expect("a connection whose headers never end is closed");
    assert!(!partial_wrote.contains("200"), "nothing is served from half a request: {partial_wrote}");
    for (which, at) in [("idle", idle_at), ("silent", silent_at), ("partial", partial_at)] {
        assert!(at >= Duration::from_millis(300), "{which} closed before the timeout: {at:?}");
    }
    app.shutdown().await;
}

/// Past `WARREN_HTTP_MAX_CONNECTIONS`, a new connection is not served until one of those being served closes;
/// then it is, without the client doing anything.
#[tokio::test]
async fn past_the_connection_cap_a_new_connection_waits_for_a_free_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut options = Options { user_services: 0, ..Options::default() };
    options.gateway.http.max_connections = 2;
    let app = spawn_app_with(options).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let request = b"GET /healthz HTTP/1.1\r\nHost: warren\r\n\r\n";
    async fn answer(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(within, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&chunk[..n]).into_owned()),
            Ok(_) => Some(String::new()),
            Err(_) => None,
        }
    }
    // Two connections served and kept alive: both slots taken.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let got = answer(&mut stream, Duration::from_secs(10)).await.expect("served");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        held.push(stream);
    }

    let mut third = tokio::net::TcpStream::connect(&address).await.unwrap();
    third.write_all(request).await.unwrap();
    assert_eq!(answer(&mut third, Duration::from_millis(500)).await, None, "served past the cap");
    drop(held.pop());
    let got = answer(&mut third, Duration::from_secs(10)).await.expect("served once a slot is free");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    app.shutdown().await;
}
