//! RabbitMQ restarted under a running gateway and user-service: both reconnect by themselves, re-declare what
//! they need, and requests succeed again. These tests stop the shared broker, so `make test` runs them alone
//! (every test here has `broker_restart` in its name).

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;
use support::spawn_app;

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl").args(args).status().expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test]
async fn broker_restart_is_survived_by_the_gateway_and_the_user_service() {
    let app = spawn_app().await;
    app.register("before").await;

    rabbitmqctl(&["stop_app"]);
    let during = app.post("/api/login", &json!({ "username": "before", "password": "correct horse battery" })).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    assert_eq!(during.status(), 503, "while the broker is down requests fail fast and retryably");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response =
            app.post("/api/register", &json!({ "username": "after", "password": "correct horse battery" })).await;
        if response.status() == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: last status {}", response.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let login = app.post("/api/login", &json!({ "username": "before", "password": "correct horse battery" })).await;
    assert_eq!(login.status(), 200);
    app.wait_until_ready().await;
    app.shutdown().await;
}
