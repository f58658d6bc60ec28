//! `spawn_app()`: a real gateway and a real user-service, in-process, on a fresh database and a fresh queue
//! prefix, talking through the real RabbitMQ. The gateway listens on port 0.

#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod chat;
pub mod cluster;
pub mod ws;

use std::time::{Duration, Instant};

use common::{config::AmqpSettings, testing};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub amqp: AmqpSettings,
    pub db: testing::TestDb,
    pub gateway_stop: CancellationToken,
    pub gateway: Option<JoinHandle<anyhow::Result<()>>>,
    pub user_services: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

/// Options for [`spawn_app_with`].
pub struct Options {
    pub user_services: usize,
    pub gateway: api::config::Settings,
}

impl Default for Options {
    fn default() -> Self {
        Self { user_services: 1, gateway: api::config::Settings::for_tests(testing::unique_amqp_settings()) }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    common::telemetry::init_for_tests();
    let amqp = options.gateway.amqp.clone();
    let db = testing::TestDb::new().await;
    let mut app = TestApp {
        address: String::new(),
        http: reqwest::Client::new(),
        amqp: amqp.clone(),
        db,
        gateway_stop: CancellationToken::new(),
        gateway: None,
        user_services: Vec::new(),
    };
    for _ in 0..options.user_services {
        app.start_user_service().await;
    }
    let gateway = api::startup::Application::build(options.gateway).await.expect("gateway builds");
    app.address = format!("http://{}", gateway.local_addr());
    let stop = app.gateway_stop.clone();
    app.gateway = Some(tokio::spawn(gateway.run_until_stopped(async move { stop.cancelled().await })));
    if options.user_services > 0 {
        app.wait_until_ready().await;
    }
    app
}

impl TestApp {
    pub async fn start_user_service(&mut self) {
        let settings = user_service::config::Settings::for_tests(&self.db.url(), self.amqp.clone());
        let service = user_service::startup::Application::build(settings).await.expect("user-service builds");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let handle = tokio::spawn(service.run_until_stopped(async move { signal.cancelled().await }));
        self.user_services.push((stop, handle));
    }

    /// Stops one user-service gracefully and waits for it to finish.
    pub async fn stop_user_service(&mut self, index: usize) {
        let (stop, handle) = self.user_services.remove(index);
        stop.cancel();
        handle.await.expect("user-service task").expect("user-service stopped cleanly");
    }

    pub async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = self.http.get(format!("{}/readyz", self.address)).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "the gateway never became ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(body).send().await.expect("request sent")
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.expect("request sent")
    }

    /// Registers a user and returns (token, user id).
    pub async fn register(&self, username: &str) -> (String, i64) {
        let response =
            self.post("/api/register", &json!({ "username": username, "password": "correct horse battery" })).await;
        assert_eq!(response.status(), 201, "registering {username}");
        let body: Value = response.json().await.expect("json");
        (body["token"].as_str().expect("token").to_owned(), body["user"]["id"].as_i64().expect("id"))
    }

    pub async fn shutdown(mut self) {
        self.gateway_stop.cancel();
        if let Some(gateway) = self.gateway.take() {
            let _ = gateway.await;
        }
        while !self.user_services.is_empty() {
            self.stop_user_service(0).await;
        }
        testing::delete_topology(&self.amqp.prefix).await;
    }
}

/// The `error.code` of an error response.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("error body is JSON");
    body["error"]["code"].as_str().expect("error.code").to_owned()
}
