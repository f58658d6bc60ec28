//! A Warren cluster of real processes, the topology `docker-compose.yml` describes: N gateways, N user-services,
//! N message-services, sharing one fresh database and one fresh queue prefix on the real broker. Processes can be
//! stopped gracefully or killed with SIGKILL. The binaries are the workspace's own, built beside this test
//! (`make test` builds the whole workspace).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{config::AmqpSettings, testing};
use serde_json::{Value, json};

pub struct Process {
    child: Child,
    pub name: String,
    /// `http://127.0.0.1:PORT` for gateways.
    pub address: Option<String>,
}

impl Process {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub db: testing::TestDb,
    pub amqp: AmqpSettings,
    pub gateways: Vec<Process>,
    pub user_services: Vec<Process>,
    pub message_services: Vec<Process>,
    pub http: reqwest::Client,
}

fn binary(name: &str) -> PathBuf {
    testing::workspace_binary(env!("CARGO_BIN_EXE_api"), name)
}

impl Cluster {
    pub async fn start(gateways: usize, user_services: usize, message_services: usize) -> Cluster {
        common::telemetry::init_for_tests();
        let mut cluster = Cluster {
            db: testing::TestDb::new().await,
            amqp: testing::unique_amqp_settings(),
            gateways: Vec::new(),
            user_services: Vec::new(),
            message_services: Vec::new(),
            http: reqwest::Client::new(),
        };
        for i in 0..user_services {
            let process = cluster.spawn("user-service", &format!("user-service-{i}"), &[]);
            cluster.user_services.push(process);
        }
        for i in 0..message_services {
            let process = cluster.spawn("message-service", &format!("message-service-{i}"), &[]);
            cluster.message_services.push(process);
        }
        for i in 0..gateways {
            cluster.start_gateway(i).await;
        }
        for i in 0..gateways {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    fn spawn(&self, binary_name: &str, instance: &str, extra: &[(&str, String)]) -> Process {
        let verbose = std::env::var_os("TEST_LOG").is_some();
        let mut command = Command::new(binary(binary_name));
        command
            .env("WARREN_DATABASE_URL", self.db.url())
            .env("WARREN_AMQP_URL", testing::amqp_url())
            .env("WARREN_AMQP_PREFIX", &self.amqp.prefix)
            .env("WARREN_INSTANCE_ID", instance)
            .env("WARREN_AUTH_RATE_PER_MINUTE", "100000")
            .env("WARREN_AUTH_RATE_BURST", "10000")
            .env("RUST_LOG", if verbose { "info" } else { "error" })
            .stdin(Stdio::null())
            .stdout(if verbose { Stdio::inherit() } else { Stdio::null() })
            .stderr(if verbose { Stdio::inherit() } else { Stdio::null() });
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {binary_name}: {e}"));
        Process { child, name: instance.to_owned(), address: None }
    }

    /// Starts gateway `index` (again, after a kill) on a fresh port.
    pub async fn start_gateway(&mut self, index: usize) {
        let port = testing::free_port();
        let mut process =
            self.spawn("api", &format!("api-{index}"), &[("WARREN_HTTP_ADDR", format!("127.0.0.1:{port}"))]);
        process.address = Some(format!("http://127.0.0.1:{port}"));
        if index < self.gateways.len() {
            self.gateways[index] = process;
        } else {
            self.gateways.push(process);
        }
    }

    pub fn gateway(&self, index: usize) -> &str {
        self.gateways[index].address.as_deref().expect("gateways have addresses")
    }

    pub async fn wait_ready(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = self.http.get(format!("{}/readyz", self.gateway(index))).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "gateway {index} never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers through gateway `index`; returns (token, user id).
    pub async fn register(&self, index: usize, username: &str) -> (String, i64) {
        let response = self
            .http
            .post(format!("{}/api/register", self.gateway(index)))
            .json(&json!({ "username": username, "password": "correct horse battery" }))
            .send()
            .await
            .expect("register request");
        assert_eq!(response.status(), 201, "registering {username}");
        let body: Value = response.json().await.expect("json");
        (body["token"].as_str().expect("token").to_owned(), body["user"]["id"].as_i64().expect("id"))
    }

    /// Logs in through gateway `index`; returns the token.
    pub async fn log_in(&self, index: usize, username: &str) -> String {
        let response = self
            .http
            .post(format!("{}/api/login", self.gateway(index)))
            .json(&json!({ "username": username, "password": "correct horse battery" }))
            .send()
            .await
            .expect("login request");
        assert_eq!(response.status(), 200, "logging in {username}");
        let body: Value = response.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    /// A REST call through gateway `index` with `token`; returns the status and the body.
    pub async fn post(&self, index: usize, token: &str, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.gateway(index)))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json"))
    }

    /// The ids of every group, from the database itself.
    pub async fn groups(&self) -> Vec<i64> {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.db.url()).await.expect("connect");
        sqlx::query_scalar("SELECT id FROM messages.conversations WHERE kind = 'group' ORDER BY id")
            .fetch_all(&mut connection)
            .await
            .expect("query")
    }

    /// Every stored message of a conversation as (seq, sender, client id), from the database itself.
    pub async fn stored(&self, conversation_id: i64) -> Vec<(i64, i64, String)> {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.db.url()).await.expect("connect");
        sqlx::query_as(
            "SELECT seq, sender_id, client_message_id FROM messages.messages WHERE conversation_id = $1 ORDER BY seq",
        )
        .bind(conversation_id)
        .fetch_all(&mut connection)
        .await
        .expect("query")
    }

    pub async fn stop(mut self) {
        for process in self.gateways.iter_mut().chain(&mut self.message_services).chain(&mut self.user_services) {
            process.terminate();
        }
        testing::delete_topology(&self.amqp.prefix).await;
    }
}
