//! `idle`: N authenticated sockets that do nothing. What each costs the gateway in memory (RSS growth divided by
//! the sockets) and what holding them costs in CPU (pings, timers).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{
    Env,
    client::Shared,
    recorder::Recorder,
    report::{Report, round1},
};

#[derive(Debug, Clone)]
pub struct Idle {
    pub connections: usize,
    /// Sockets per user (devices); users = connections / devices.
    pub devices: usize,
    /// How long the sockets are held after all connected.
    pub hold: Duration,
}

pub async fn run(env: &Env, idle: Idle) -> anyhow::Result<Report> {
    let devices = idle.devices.max(1);
    let user_count = idle.connections.div_ceil(devices);
    let users = env.users(user_count).await?;
    let sockets: Vec<_> = (0..idle.connections).map(|i| users[i % user_count].clone()).collect();
    let shared = Shared::new(Recorder::new(&env.run_tag(), 0), env.max_in_flight);

    // Let the gateway settle after the logins before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let empty = env.watch.snapshot();
    let started = Instant::now();
    let (clients, connect_latency) = env.connect_timed(&sockets, &shared).await?;
    let connect_time = started.elapsed();
    eprintln!(
        "loadgen: {} sockets connected and authenticated in {:.1}s; holding them {:.0}s",
        clients.len(),
        connect_time.as_secs_f64(),
        idle.hold.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = env.watch.snapshot();
    tokio::time::sleep(idle.hold).await;
    let held = env.watch.snapshot();
    let loadgen_rss_kb = crate::procstat::own_rss_kb();
    let close_started = Instant::now();
    futures_util::future::join_all(clients.iter().map(|c| c.close())).await;
    let close_time = close_started.elapsed();

    let growth = crate::procstat::usage(&empty, &connected, env.watch.ticks_per_second);
    let holding = crate::procstat::usage(&connected, &held, env.watch.ticks_per_second);
    let gateway = growth.get("gateway").cloned().unwrap_or_default();
    let n = clients.len().max(1) as f64;
    let rss_per_connection_kb = (gateway.rss_kb_after as f64 - gateway.rss_kb_before as f64) / n;
    let hold_s = idle.hold.as_secs_f64().max(1e-3);
    let gateway_hold_cpu = holding.get("gateway").map_or(0, |g| g.cpu_us);

    let mut report = Report {
        mode: "idle".into(),
        run: shared.recorder().run().to_owned(),
        params: json!({
            "connections": idle.connections,
            "devices": devices,
            "users": user_count,
            "hold_s": idle.hold.as_secs_f64(),
            "gateways": env.gateways.len(),
        }),
        window_s: round1(hold_s),
        clients: shared.stats.report(),
        loadgen_rss_kb,
        ..Report::default()
    };
    report.results = json!({
        "connected": clients.len(),
        "connect_s": round1(connect_time.as_secs_f64()),
        "connect_and_auth": connect_latency.summary(),
        "gateway_rss_kb_empty": gateway.rss_kb_before,
        "gateway_rss_kb_connected": gateway.rss_kb_after,
        "gateway_rss_per_connection_kb": round1(rss_per_connection_kb),
        "connect_cpu_us_per_connection": growth.values().map(|g| g.cpu_us).sum::<u64>() as f64 / n,
        "gateway_idle_cpu_us_per_connection_per_s": round1(gateway_hold_cpu as f64 / n / hold_s),
        "close_s": round1(close_time.as_secs_f64()),
        "loadgen_rss_per_connection_kb": round1(loadgen_rss_kb as f64 / n),
    });
    report.set_server(holding, &[]);
    report.set_machine(&connected, &held, env.watch.ticks_per_second);
    if clients.len() < idle.connections {
        report.problems.push(format!("only {} of {} sockets connected", clients.len(), idle.connections));
    }
    Ok(report)
}

pub fn summary_line(report: &Report) -> String {
    let r = &report.results;
    format!(
        "idle: {} sockets ({} users) connected in {}s (connect+auth p50 {}ms p99 {}ms) | gateway RSS {} → {} KiB = \
         {} KiB/connection | idle gateway CPU {} µs/connection/s | loadgen {} KiB/connection",
        r["connected"],
        report.params["users"],
        r["connect_s"],
        r["connect_and_auth"]["p50_ms"],
        r["connect_and_auth"]["p99_ms"],
        r["gateway_rss_kb_empty"],
        r["gateway_rss_kb_connected"],
        r["gateway_rss_per_connection_kb"],
        r["gateway_idle_cpu_us_per_connection_per_s"],
        r["loadgen_rss_per_connection_kb"],
    )
}
