//! The load generator as an operator runs it: the `loadgen` binary against a real stack (gateways, user-service,
//! message-service as processes, on the real RabbitMQ and PostgreSQL with a fresh database and queue prefix). What
//! it reports must match what happened: every message of a clean run accounted for, second by second, each of the
//! other modes (group, storm, idle, history) reporting what it did, and a run whose servers fail must end with
//! status 2 and name the problem. The service binaries are the workspace's own, built beside this test (`make test`
//! builds the whole workspace).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use common::testing;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

fn binary(name: &str) -> PathBuf {
    testing::workspace_binary(env!("CARGO_BIN_EXE_loadgen"), name)
}

/// One stack: a user-service, a message-service and `gateways` gateways, killed when dropped.
struct Stack {
    db: testing::TestDb,
    prefix: String,
    user_service: Child,
    message_service: Child,
    gateways: Vec<(Child, String)>,
}

impl Stack {
    async fn start(gateways: usize) -> Stack {
        let db = testing::TestDb::new().await;
        let prefix = testing::unique_amqp_settings().prefix;
        let spawn = |name: &str, instance: String, extra: &[(&str, String)]| {
            let mut command = Command::new(binary(name));
            command
                .env("WARREN_DATABASE_URL", db.url())
                .env("WARREN_AMQP_URL", testing::amqp_url())
                .env("WARREN_AMQP_PREFIX", &prefix)
                .env("WARREN_INSTANCE_ID", instance)
                .env("WARREN_AUTH_RATE_PER_MINUTE", "100000")
                .env("WARREN_AUTH_RATE_BURST", "10000")
                // A send the message-service never answers is refused after a second, not five.
                .env("WARREN_RPC_TIMEOUT_MS", "1000")
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            for (key, value) in extra {
                command.env(key, value);
            }
            command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"))
        };
        let user_service = spawn("user-service", "user-service-0".into(), &[]);
        let message_service = spawn("message-service", "message-service-0".into(), &[]);
        let mut started = Vec::new();
        for i in 0..gateways {
            let port = testing::free_port();
            let child = spawn("api", format!("api-{i}"), &[("WARREN_HTTP_ADDR", format!("127.0.0.1:{port}"))]);
            started.push((child, format!("http://127.0.0.1:{port}")));
        }
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for (_, address) in &started {
            loop {
                let ready = http.get(format!("{address}/readyz")).send().await.is_ok_and(|r| r.status() == 200);
                if ready {
                    break;
                }
                assert!(Instant::now() < deadline, "gateway {address} not ready after 60 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Stack { db, prefix, user_service, message_service, gateways: started }
    }

    /// `loadgen` against every gateway, writing its JSON report to `report`.
    fn loadgen(&self, report: &std::path::Path, mode_args: &[&str]) -> Command {
        let mut command = Command::new(binary("loadgen"));
        // The stack's own processes, so that what it reports is theirs and not other tests' servers.
        let pid = |group: &str, child: &Child| format!("{group}={}", child.id().unwrap_or_default());
        for (child, address) in &self.gateways {
            command.args(["--gateway", address, "--pid", &pid("gateway", child)]);
        }
        command.args(["--pid", &pid("user-service", &self.user_service)]);
        command.args(["--pid", &pid("message-service", &self.message_service)]);
        command
            .args(["--pg-database", &self.db.name, "--json"])
            .arg(report)
            .args(mode_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn stop(mut self) {
        for (child, _) in &mut self.gateways {
            let _ = child.kill().await;
        }
        let _ = self.message_service.kill().await;
        let _ = self.user_service.kill().await;
        testing::delete_topology(&self.prefix).await;
    }
}

fn report_path() -> PathBuf {
    std::env::temp_dir().join(format!("warren-loadgen-{}.json", uuid::Uuid::new_v4().simple()))
}

fn read_report(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("the report {}: {e}", path.display()));
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).expect("the report is JSON")
}

/// Runs `loadgen` to the end and returns its summary line and report; panics unless it exited 0.
async fn clean_run(stack: &Stack, mode_args: &[&str]) -> (String, Value) {
    let path = report_path();
    let output = stack.loadgen(&path, mode_args).output().await.expect("run loadgen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{mode_args:?}: a clean run exits 0; stderr:\n{stderr}");
    let summary = String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().to_owned();
    let report = read_report(&path);
    assert_eq!(report["problems"], Value::Array(Vec::new()), "{mode_args:?}");
    (summary, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_dm_run_through_two_gateways_accounts_for_every_message_second_by_second() {
    let stack = Stack::start(2).await;
    let (summary, report) = clean_run(&stack, &["dm", "--users", "20", "--rate", "100", "--duration", "2"]).await;
    assert!(summary.starts_with("dm: users=20 members=2 rate=100"), "{summary}");
    assert!(summary.contains("lost=0 dup=0 ooo=0 failed=0"), "{summary}");
    assert!(summary.contains("| worst second "), "{summary}");

    let counts = &report["counts"];
    for key in ["scheduled", "sent", "acked", "expected_deliveries", "delivered"] {
        assert_eq!(counts[key], 200, "{key}: {counts}");
    }
    for key in ["repaired", "lost", "duplicated", "out_of_order", "unanswered", "mismatched"] {
        assert_eq!(counts[key], 0, "{key}: {counts}");
    }
    assert_eq!(report["params"]["gateways"], 2);
    let started_at = report["started_at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let age = started_at.map(|t| chrono::Utc::now().signed_duration_since(t));
    assert!(
        age.is_some_and(|age| age > chrono::TimeDelta::zero() && age < chrono::TimeDelta::minutes(5)),
        "{}",
        report["started_at"]
    );
    for (group, processes) in [("gateway", 2), ("message-service", 1), ("user-service", 1)] {
        assert_eq!(report["server"][group]["processes"], processes, "{group}: {}", report["server"]);
    }
    // Every message woke the gateways' and the message-service's threads, several times each (20–60 times per
    // message at low rates); idle, they wake a few times a second.
    for group in ["gateway", "message-service"] {
        let switches = report["server"][group]["context_switches"].as_u64().unwrap_or(0);
        assert!(switches >= 1_000, "{group}: {}", report["server"]);
    }
    assert!(summary.contains(" context switches/delivered"), "{summary}");
    // 100 messages scheduled in each of the two seconds, each delivered once to the other member.
    let seconds = report["latency"]["deliver_by_second"].as_array().expect("a timeline");
    let by_second: Vec<(u64, u64)> =
        seconds.iter().map(|s| (s["second"].as_u64().unwrap_or(99), s["count"].as_u64().unwrap_or(0))).collect();
    assert_eq!(by_second, [(0, 100), (1, 100)], "{seconds:?}");
    for second in seconds {
        let (p50, p99, max) = (
            second["p50_ms"].as_f64().unwrap(),
            second["p99_ms"].as_f64().unwrap(),
            second["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{second}");
    }
    assert_eq!(report["latency"]["deliver"]["count"], 200);

    // The servers' CPU beside the timeline: whole seconds of the measured window only, at least the first, none
    // past its end (`window_s` is rounded to a tenth), each naming the stack's groups.
    let window = report["window_s"].as_f64().expect("a window");
    let servers = report["server_by_second"].as_array().expect("a server timeline");
    assert!(!servers.is_empty() && servers.len() as f64 <= window + 0.05, "{window} s: {servers:?}");
    for second in servers {
        let groups = second["by_group"].as_object().expect("groups");
        assert!(["gateway", "message-service", "user-service"].iter().all(|g| groups.contains_key(*g)), "{second}");
    }
    // The disks' flushes, read with the servers, on a machine whose kernel counts them (Linux 5.5+).
    if machine_counts_disk_flushes() {
        let disk = &report["disk"];
        let recorded = disk["by_second"].as_array().expect("a disk timeline").len();
        assert_eq!(recorded, servers.len(), "{disk}");
        assert!(summary.contains(" flushes, mean "), "{summary}");
    } else {
        assert!(report.get("disk").is_none(), "{report}");
    }
    stack.stop().await;
}

/// Whether `/proc/diskstats` has a disk (a block device with a `device` link) with the flush counters of Linux 5.5+.
fn machine_counts_disk_flushes() -> bool {
    std::fs::read_to_string("/proc/diskstats").unwrap_or_default().lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 20 && std::path::Path::new(&format!("/sys/block/{}/device", fields[2])).exists()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_message_service_dies_ends_with_status_2_naming_the_problem() {
    let mut stack = Stack::start(1).await;
    let path = report_path();
    let mut run = stack
        .loadgen(&path, &["dm", "--users", "10", "--rate", "50", "--duration", "4", "--drain", "3", "--grace", "1"])
        .spawn()
        .expect("start loadgen");
    // Once sends are under way, the only message-service dies: later sends cannot be stored.
    let mut stderr = BufReader::new(run.stderr.take().expect("piped stderr")).lines();
    let mut seen = String::new();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("sending") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started, Ok(true), "the run never started sending; stderr:\n{seen}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.message_service.kill().await.expect("kill the message-service");
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });

    let status = tokio::time::timeout(Duration::from_secs(90), run.wait()).await.expect("loadgen ends").expect("wait");
    let rest = rest.await.unwrap_or_default();
    assert_eq!(status.code(), Some(2), "a run with refused sends exits 2; stderr:\n{seen}{rest}");
    let report = read_report(&path);
    let counts = &report["counts"];
    assert!(counts["acked"].as_u64().unwrap_or(0) > 0, "sends before the kill were stored: {counts}");
    let refused: u64 = counts["failed"].as_object().map_or(0, |codes| codes.values().filter_map(Value::as_u64).sum());
    assert!(refused + counts["unanswered"].as_u64().unwrap_or(0) > 0, "sends after the kill failed: {counts}");
    let problems = report["problems"].to_string();
    assert!(problems.contains("sends refused") || problems.contains("never answered"), "{problems}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_modes_report_what_they_did_against_the_stack() {
    let stack = Stack::start(1).await;

    // group: 3 conversations of 4; 60 messages, each delivered to the 3 other members.
    let (summary, report) = clean_run(
        &stack,
        &["--prefix", "g", "group", "--users", "12", "--members", "4", "--rate", "30", "--duration", "2"],
    )
    .await;
    assert!(summary.starts_with("group: users=12 members=4"), "{summary}");
    let counts = &report["counts"];
    assert_eq!((counts["acked"].as_u64(), counts["expected_deliveries"].as_u64()), (Some(60), Some(180)), "{counts}");
    assert_eq!(counts["delivered"], 180, "{counts}");
    assert_eq!(report["latency"]["last_member"]["count"], 60, "every message reached its last member live");

    // storm: every client drops at 1 s and comes back; nothing lost, every client synced again.
    let (summary, report) = clean_run(
        &stack,
        &["--prefix", "s", "storm", "--users", "10", "--rate", "20", "--duration", "3", "--storm-at", "1"],
    )
    .await;
    assert!(summary.contains("storm: 10/10 back"), "{summary}");
    let counts = &report["counts"];
    assert_eq!((counts["acked"].as_u64(), counts["lost"].as_u64()), (Some(60), Some(0)), "{counts}");
    assert_eq!(counts["delivered"].as_u64().unwrap_or(0) + counts["repaired"].as_u64().unwrap_or(0), 60, "{counts}");
    assert_eq!(report["results"]["came_back"], 10);
    assert!(report["results"]["all_synced_after_ms"].as_f64().unwrap_or(0.0) > 0.0, "{}", report["results"]);

    // idle: 20 sockets of 10 users held open, the gateway's memory per connection measured.
    let (summary, report) =
        clean_run(&stack, &["--prefix", "i", "idle", "--connections", "20", "--devices", "2", "--hold", "1"]).await;
    assert!(summary.starts_with("idle: 20 sockets (10 users)"), "{summary}");
    assert_eq!(report["results"]["connected"], 20);
    assert!(report["results"]["gateway_rss_kb_connected"].as_u64().unwrap_or(0) > 0, "{}", report["results"]);

    // history: a conversation seeded to 2,000 messages, read back in pages of up to 50, each checked.
    let database_url = stack.db.url();
    let (summary, report) = clean_run(
        &stack,
        &[
            "--prefix",
            "h",
            "history",
            "--messages",
            "2000",
            "--rate",
            "40",
            "--duration",
            "1",
            "--database-url",
            &database_url,
        ],
    )
    .await;
    assert!(summary.starts_with("history: 2000 messages"), "{summary}");
    let results = &report["results"];
    assert_eq!((results["pages"].as_u64(), results["bad_pages"].as_u64()), (Some(40), Some(0)), "{results}");
    // Pages start at random places, so a page near the end of the history is short; each was checked exact.
    let read = results["messages_read"].as_u64().unwrap_or(0);
    assert!(read > 0 && read <= 40 * 50, "{results}");
    assert_eq!(results["errors"], serde_json::json!({}), "{results}");
    stack.stop().await;
}
