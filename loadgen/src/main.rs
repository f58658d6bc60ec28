//! `loadgen`: drives real Warren gateways over WebSocket, the way browsers do, and reports latency, loss and what
//! the servers spent. See docs/BENCHMARKS.md for how to run it (usually through `scripts/bench.sh`).
//!
//! Output: progress on stderr; on stdout one summary line, then the whole report as one JSON object. The exit
//! status is 0 for a clean run, 2 when the run saw a problem (loss, duplicates, disorder, refused or unanswered
//! requests), 1 when it could not run.

mod client;
mod disk;
mod history;
mod idle;
mod procstat;
mod recorder;
mod report;
mod schedule;
mod seconds;
mod setup;
mod stats;
mod target;
mod traffic;

use std::{collections::BTreeMap, process::ExitCode, sync::Arc, time::Duration, time::Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::{StreamExt, stream};

use crate::{
    client::{Client, Shared, Spec},
    procstat::Watch,
    report::Report,
    setup::User,
    stats::Latency,
    target::Gateway,
};

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Warren's load generator (127.0.0.1 only)")]
struct Cli {
    /// A gateway to drive (repeat for several; users are spread round-robin). 127.0.0.1 only.
    #[arg(long = "gateway", global = true, default_value = "http://127.0.0.1:8080")]
    gateways: Vec<String>,
    /// Users are named `<prefix>u<i>`; they are registered once and reused.
    #[arg(long, global = true, default_value = "lg")]
    prefix: String,
    /// Registrations or logins at once (each costs an argon2 hash on the user-service).
    #[arg(long, global = true, default_value_t = 16)]
    register_concurrency: usize,
    /// Mint tokens for existing users with the development key instead of logging them in (development
    /// gateways only).
    #[arg(long, global = true)]
    dev_tokens: bool,
    /// Sockets opened at once.
    #[arg(long, global = true, default_value_t = 200)]
    connect_concurrency: usize,
    /// Requests in flight per socket (the gateway's WARREN_WS_MAX_IN_FLIGHT).
    #[arg(long, global = true, default_value_t = 32)]
    max_in_flight: usize,
    /// Server processes to account as GROUP=PID (groups: gateway, user-service, message-service, rabbitmq,
    /// postgres). Groups not given are found by process name.
    #[arg(long = "pid", global = true, value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Count only the PostgreSQL backends of this database (and the server's own processes).
    #[arg(long, global = true)]
    pg_database: Option<String>,
    /// Also write the JSON report to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Users in pairs, each pair a direct conversation; open-loop sends at a fixed total rate.
    Dm {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Messages per second, all users together.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        #[command(flatten)]
        ending: Ending,
    },
    /// Conversations of M members; every member sends in turn.
    Group {
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        #[command(flatten)]
        ending: Ending,
    },
    /// N authenticated sockets, idle: the gateway's memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Sockets per user (devices); fewer users means fewer logins to set up.
        #[arg(long, default_value_t = 1)]
        devices: usize,
        /// Seconds to hold the sockets once connected.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
    /// Pairs sending at a low rate; at `--storm-at` every client drops its connection and reconnects at once.
    Storm {
        #[arg(long, default_value_t = 500)]
        users: usize,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Seconds into the run when every client drops (default: a third of the duration).
        #[arg(long)]
        storm_at: Option<f64>,
        /// Milliseconds each client stays away before reconnecting.
        #[arg(long, default_value_t = 0)]
        offline_ms: u64,
        #[command(flatten)]
        ending: Ending,
    },
    /// `getMessages` pages at random positions of a long stored history.
    History {
        #[arg(long, default_value_t = 10)]
        readers: usize,
        /// Messages the history must hold (seeded through --database-url when short).
        #[arg(long, default_value_t = 1_000_000)]
        messages: i64,
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Messages per page (at most 100).
        #[arg(long, default_value_t = 50)]
        page: u32,
        /// PostgreSQL of the stack (127.0.0.1 only), to seed the history.
        #[arg(long)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct Ending {
    /// Seconds to wait for outstanding answers after the last scheduled send.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds to wait after that for outstanding deliveries, before the final sync.
    #[arg(long, default_value_t = 3.0)]
    grace: f64,
}

fn parse_pid(text: &str) -> Result<(String, u32), String> {
    let (group, pid) = text.split_once('=').ok_or("use GROUP=PID")?;
    if !procstat::GROUPS.iter().any(|(g, _)| *g == group) {
        return Err(format!("unknown group {group:?}"));
    }
    Ok((group.to_owned(), pid.parse().map_err(|_| format!("bad pid {pid:?}"))?))
}

/// The traffic of the message modes, without a storm (the storm mode adds one).
fn steady(
    mode: &'static str,
    users: usize,
    members: usize,
    rate: f64,
    duration: f64,
    ending: &Ending,
) -> anyhow::Result<traffic::Traffic> {
    Ok(traffic::Traffic {
        mode,
        users,
        members,
        rate,
        duration: seconds(duration, "--duration")?,
        drain: seconds(ending.drain, "--drain")?,
        grace: seconds(ending.grace, "--grace")?,
        storm_at: None,
        offline: Duration::ZERO,
    })
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{what}: {value} is not a number of seconds"))
}

/// What every mode needs: the gateways, the users' prefix, and the process watch.
#[derive(Debug)]
pub struct Env {
    pub gateways: Vec<Gateway>,
    pub prefix: String,
    pub register_concurrency: usize,
    pub connect_concurrency: usize,
    pub dev_tokens: bool,
    pub max_in_flight: usize,
    pub watch: Watch,
    run_tag: String,
}

impl Env {
    /// The tag of this run in every message body: short and unique.
    pub fn run_tag(&self) -> String {
        self.run_tag.clone()
    }

    pub async fn users(&self, count: usize) -> anyhow::Result<Vec<User>> {
        setup::users(&self.gateways, &self.prefix, count, self.register_concurrency, self.dev_tokens).await
    }

    /// One socket per user, all connected and authenticated; fails if any could not connect.
    pub async fn connect(&self, users: &[User], shared: &Arc<Shared>) -> anyhow::Result<Vec<Client>> {
        let (clients, _) = self.connect_timed(users, shared).await?;
        if clients.len() < users.len() {
            bail!("only {} of {} sockets connected", clients.len(), users.len());
        }
        Ok(clients)
    }

    /// Connects a socket per entry of `users` (a user may appear several times: devices), `connect_concurrency`
    /// at a time; returns those that connected (in order) and the connect + auth latencies.
    pub async fn connect_timed(&self, users: &[User], shared: &Arc<Shared>) -> anyhow::Result<(Vec<Client>, Latency)> {
        let started = Instant::now();
        let results: Vec<(anyhow::Result<Client>, Duration)> = stream::iter(users.iter().enumerate())
            .map(|(slot, user)| {
                let spec = Spec {
                    index: user.index,
                    user_id: user.id,
                    token: user.token.clone(),
                    url: self.gateways[slot % self.gateways.len()].ws.clone(),
                };
                let shared = shared.clone();
                async move {
                    let began = Instant::now();
                    let client = Client::connect(spec, shared).await;
                    (client, began.elapsed())
                }
            })
            .buffered(self.connect_concurrency.max(1))
            .collect()
            .await;
        let mut latency = Latency::new();
        let mut clients = Vec::with_capacity(results.len());
        let mut first_error = None;
        for (result, took) in results {
            match result {
                Ok(client) => {
                    latency.record(took);
                    clients.push(client);
                }
                Err(error) => {
                    shared.stats.connect_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            eprintln!("loadgen: {} sockets failed to connect; the first: {error:#}", users.len() - clients.len());
        }
        eprintln!("loadgen: {} sockets connected in {:.1}s", clients.len(), started.elapsed().as_secs_f64());
        Ok((clients, latency))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(report) => {
            if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("loadgen: problems: {}", report.problems.join("; "));
                ExitCode::from(2)
            }
        }
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Report> {
    let gateways = cli.gateways.iter().map(|g| Gateway::parse(g)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut pids: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (group, pid) in &cli.pids {
        pids.entry(group.clone()).or_default().push(*pid);
    }
    let mut pg_database = cli.pg_database.clone();
    if let Mode::History { database_url: Some(url), .. } = &cli.mode {
        let database = target::check_database_url(url)?;
        pg_database.get_or_insert(database);
    }
    let env = Env {
        gateways,
        prefix: cli.prefix.clone(),
        register_concurrency: cli.register_concurrency,
        connect_concurrency: cli.connect_concurrency,
        dev_tokens: cli.dev_tokens,
        max_in_flight: cli.max_in_flight,
        watch: Watch::new(pids, pg_database),
        run_tag: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
    };

    // Every mode ends by itself; this bounds even a misbehaving one.
    let (limit, work) = match cli.mode {
        Mode::Dm { users, rate, duration, ending } => {
            let traffic = steady("dm", users, 2, rate, duration, &ending)?;
            (limit_for(&traffic), Work::Traffic(traffic))
        }
        Mode::Group { users, members, rate, duration, ending } => {
            let traffic = steady("group", users, members, rate, duration, &ending)?;
            (limit_for(&traffic), Work::Traffic(traffic))
        }
        Mode::Storm { users, rate, duration, storm_at, offline_ms, ending } => {
            let mut traffic = steady("storm", users, 2, rate, duration, &ending)?;
            traffic.storm_at = Some(match storm_at {
                Some(at) => seconds(at, "--storm-at")?,
                None => traffic.duration / 3,
            });
            if traffic.storm_at >= Some(traffic.duration) {
                bail!("--storm-at must fall within --duration, or there is no storm to measure");
            }
            traffic.offline = Duration::from_millis(offline_ms);
            (limit_for(&traffic) + Duration::from_secs(90), Work::Traffic(traffic))
        }
        Mode::Idle { connections, devices, hold } => {
            let idle = idle::Idle { connections, devices, hold: seconds(hold, "--hold")? };
            (setup_allowance(connections / devices.max(1)) + idle.hold + Duration::from_secs(300), Work::Idle(idle))
        }
        Mode::History { readers, messages, rate, duration, page, database_url } => {
            if page == 0 || page > common::protocol::messages::MAX_PAGE {
                bail!("--page must be 1 to {}", common::protocol::messages::MAX_PAGE);
            }
            let history = history::History {
                readers,
                messages,
                rate,
                duration: seconds(duration, "--duration")?,
                page,
                database_url,
                drain: Duration::from_secs(10),
            };
            // Seeding writes about 50,000 rows a second; allow for a slow disk.
            let seeding = Duration::from_secs(u64::try_from(messages.max(0) / 5_000).unwrap_or(0));
            (setup_allowance(readers) + history.duration + seeding + Duration::from_secs(120), Work::History(history))
        }
    };
    let report = match tokio::time::timeout(limit, work.run(&env)).await {
        Ok(report) => report?,
        Err(_) => bail!("the run did not finish within {limit:?}; giving up"),
    };
    let line = match report.mode.as_str() {
        "idle" => idle::summary_line(&report),
        "history" => history::summary_line(&report),
        _ => traffic::summary_line(&report),
    };
    let json = serde_json::to_string(&report)?;
    println!("{line}");
    println!("{json}");
    if let Some(path) = &cli.json {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

enum Work {
    Traffic(traffic::Traffic),
    Idle(idle::Idle),
    History(history::History),
}

impl Work {
    async fn run(self, env: &Env) -> anyhow::Result<Report> {
        match self {
            Work::Traffic(traffic) => traffic::run(env, traffic).await,
            Work::Idle(idle) => idle::run(env, idle).await,
            Work::History(history) => history::run(env, history).await,
        }
    }
}

/// Time allowed for registering or logging in `users` (about 30 ms of a core each, on two cores, generously).
fn setup_allowance(users: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(50 * users as u64)
}

fn limit_for(traffic: &traffic::Traffic) -> Duration {
    setup_allowance(traffic.users) + traffic.duration + traffic.drain + traffic.grace + Duration::from_secs(120)
}
