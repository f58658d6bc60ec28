//! The message modes: `dm` (pairs of users in direct conversations), `group` (conversations of M members) and
//! `storm` (pairs, with every client dropping its connection at once mid-run and coming back).
//!
//! Each runs the same way: users log in and connect, the conversations are set up, every client `sync`s once (a
//! page load), the server processes are sampled, then the open-loop schedule sends for the run's duration. After
//! the last scheduled send it waits (bounded) for every answer, then for the deliveries (a grace period), samples
//! the servers again, and finally has every client `sync` so that a delivery missed live is told apart from a
//! lost one.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::protocol::{
    messages::{CreateGroupRequest, MAX_GROUP_MEMBERS, SendMessageRequest},
    ws::{ClientFrame, ReplyData},
};
use futures_util::{StreamExt, future::join_all, stream};
use serde_json::json;

use crate::{
    Env,
    client::{CONNECT_TIMEOUT, Client, Job, MAX_BACKOFF, RECONNECT_DEADLINE, Reconnected, Shared},
    recorder::{Recorder, SecondSummary},
    report::{Report, round1},
    schedule::{self, Schedule, sender_of},
    stats::{Latency, millis},
};

/// How long set-up requests and the final `sync` may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after its time offline a client of a storm may take to reconnect and sync again before it counts as
/// not back: its own reconnect deadline, the jitter of a last pause begun just before it (at most the longest
/// pause), a last connection attempt, then a `sync`.
const STORM_CLIENT_LIMIT: Duration = Duration::from_secs(
    RECONNECT_DEADLINE.as_secs() + CONNECT_TIMEOUT.as_secs() + MAX_BACKOFF.as_secs() + REQUEST_TIMEOUT.as_secs(),
);

/// Rounds of the final `sync`, the first included (see [`final_sync`]).
const FINAL_SYNC_ROUNDS: usize = 3;

/// How long a member who lacks a message acknowledged during a round of the final `sync` waits for its live push.
const LATE_PUSH_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Traffic {
    pub mode: &'static str,
    pub users: usize,
    /// Members per conversation (2 for direct conversations).
    pub members: usize,
    pub rate: f64,
    pub duration: Duration,
    /// How long to wait for outstanding answers after the last scheduled send.
    pub drain: Duration,
    /// How long to wait for outstanding deliveries after that.
    pub grace: Duration,
    /// `storm`: when every client drops its connection, and how long it stays away.
    pub storm_at: Option<Duration>,
    pub offline: Duration,
}

pub async fn run(env: &Env, traffic: Traffic) -> anyhow::Result<Report> {
    let direct = traffic.members == 2 && traffic.mode != "group";
    if traffic.members < 2 || traffic.members > MAX_GROUP_MEMBERS {
        bail!("members must be 2 to {MAX_GROUP_MEMBERS}");
    }
    if traffic.users < traffic.members || !traffic.users.is_multiple_of(traffic.members) {
        bail!("users ({}) must be a multiple of the members per conversation ({})", traffic.users, traffic.members);
    }
    let schedule = Schedule::new(traffic.rate, traffic.duration);
    let run = env.run_tag();
    let shared = Shared::new(Recorder::new(&run, schedule.total()), env.max_in_flight);
    let users = env.users(traffic.users).await?;
    let clients = env.connect(&users, &shared).await?;

    // Conversations: consecutive users, `members` at a time.
    let started = Instant::now();
    let conversations: Vec<anyhow::Result<(i64, i64)>> = stream::iter(0..traffic.users / traffic.members)
        .map(|c| {
            let first = c * traffic.members;
            let creator = clients[first].clone();
            let others: Vec<i64> = users[first + 1..first + traffic.members].iter().map(|u| u.id).collect();
            let run = run.clone();
            async move {
                if direct {
                    let to = others[0];
                    let reply = creator
                        .request(REQUEST_TIMEOUT, move |id| ClientFrame::SendMessage {
                            id,
                            request: SendMessageRequest {
                                conversation_id: None,
                                to_user_id: Some(to),
                                client_message_id: format!("{run}-setup-{c}"),
                                body: "loadgen: hello".to_owned(),
                            },
                        })
                        .await?;
                    match reply {
                        ReplyData::SendMessage(message) => Ok((message.conversation_id, message.seq)),
                        other => bail!("unexpected reply to a send: {other:?}"),
                    }
                } else {
                    let title = format!("{run} g{c}");
                    let reply = creator
                        .request(REQUEST_TIMEOUT, move |id| ClientFrame::CreateGroup {
                            id,
                            request: CreateGroupRequest { title, member_ids: others, client_group_id: None },
                        })
                        .await?;
                    match reply {
                        ReplyData::CreateGroup(conversation) => Ok((conversation.id, conversation.last_seq)),
                        other => bail!("unexpected reply to createGroup: {other:?}"),
                    }
                }
            }
        })
        .buffered(64)
        .collect()
        .await;
    let mut conversation_of = vec![0i64; traffic.users];
    {
        let mut recorder = shared.recorder();
        for (c, conversation) in conversations.into_iter().enumerate() {
            let (id, baseline) = conversation.context("setting up a conversation")?;
            let members: Vec<usize> = (c * traffic.members..(c + 1) * traffic.members).collect();
            for &member in &members {
                conversation_of[member] = id;
            }
            recorder.add_conversation(id, members, baseline);
        }
    }
    // Every client syncs once, as a page load does: it learns the heads of its other conversations.
    let synced = join_all(clients.iter().map(|c| c.sync(REQUEST_TIMEOUT))).await;
    if synced.iter().any(|ok| !ok) {
        bail!("the first sync failed for {} clients", synced.iter().filter(|ok| !**ok).count());
    }
    eprintln!(
        "loadgen: {} conversations of {} ready in {:.1}s; sending {} messages at {}/s for {:.0}s",
        traffic.users / traffic.members,
        traffic.members,
        started.elapsed().as_secs_f64(),
        schedule.total(),
        traffic.rate,
        traffic.duration.as_secs_f64()
    );

    let before = env.watch.snapshot();
    let start = Instant::now();
    let started_at = chrono::Utc::now();
    let start_ns = shared.now_ns();
    let seconds = crate::seconds::Sampler::start(start, env.watch.clone());
    let pacer = (clients.clone(), shared.clone(), traffic.clone(), tokio::runtime::Handle::current());
    let storm = tokio::task::spawn_blocking(move || {
        let (clients, shared, traffic, runtime) = pacer;
        let mut storm: Option<tokio::task::JoinHandle<Vec<Reconnected>>> = None;
        schedule::pace(&schedule, start, |due| {
            let mut jobs = Vec::new();
            {
                let mut recorder = shared.recorder();
                for k in due {
                    let sender = sender_of(k, traffic.users);
                    let conversation_id = conversation_of[sender];
                    let scheduled_ns = start_ns + schedule.offset_nanos(k);
                    recorder.schedule(k, conversation_id, sender, scheduled_ns);
                    jobs.push((sender, Job::Send { k, conversation_id, scheduled_ns }));
                }
            }
            for (sender, job) in jobs {
                clients[sender].job(job);
            }
            let storm_at = traffic.storm_at.filter(|_| storm.is_none())?;
            if start.elapsed() < storm_at {
                return Some(start + storm_at);
            }
            eprintln!("loadgen: storm: all {} clients drop their connections now", clients.len());
            let at = Instant::now();
            // Each client is waited for on its own: one that never syncs again counts as not back.
            let limit = tokio::time::Instant::from_std(at + traffic.offline + STORM_CLIENT_LIMIT);
            let waits: Vec<_> =
                clients
                    .iter()
                    .map(|c| {
                        let back = c.drop_connection(traffic.offline, at);
                        async move {
                            tokio::time::timeout_at(limit, back).await.ok().and_then(Result::ok).unwrap_or_default()
                        }
                    })
                    .collect();
            storm = Some(runtime.spawn(join_all(waits)));
            None
        });
        storm
    })
    .await
    .context("the pacing thread failed")?;
    let sending = start.elapsed();

    // Answers, then deliveries, each bounded.
    let drain_until = Instant::now() + traffic.drain;
    while Instant::now() < drain_until {
        let (_, answered) = shared.recorder().answered();
        if answered >= schedule.total() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grace_until = Instant::now() + traffic.grace;
    while Instant::now() < grace_until {
        let (delivered, expected) = shared.recorder().delivery_progress();
        if delivered >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = start.elapsed();
    let after = env.watch.snapshot();
    let (disk, server_by_second) = seconds.finish().await;

    let storm_results = match storm {
        Some(handle) => Some(
            tokio::time::timeout(traffic.offline + STORM_CLIENT_LIMIT + Duration::from_secs(10), handle)
                .await
                .context("the storm's reconnections did not finish")??,
        ),
        None => None,
    };

    // The final sync: what was missed live is repaired here, or it is lost.
    let failed_syncs = final_sync(&clients, &shared).await;
    let (counts, latency) = shared.recorder().finish();
    let client_report = shared.stats.report();
    join_all(clients.iter().map(Client::close)).await;

    let window_s = window.as_secs_f64();
    let mut report = Report {
        mode: traffic.mode.to_owned(),
        run,
        started_at: Some(started_at),
        params: json!({
            "users": traffic.users,
            "members": traffic.members,
            "rate": traffic.rate,
            "duration_s": traffic.duration.as_secs_f64(),
            "gateways": env.gateways.len(),
            "max_in_flight": env.max_in_flight,
            "storm_at_s": traffic.storm_at.map(|d| d.as_secs_f64()),
            "offline_ms": traffic.offline.as_millis() as u64,
        }),
        window_s: round1(window_s),
        clients: client_report,
        loadgen_rss_kb: crate::procstat::own_rss_kb(),
        disk,
        server_by_second,
        ..Report::default()
    };
    report.rates.insert("offered_per_s".into(), traffic.rate);
    report.rates.insert("sent_per_s".into(), round1(counts.sent as f64 / sending.as_secs_f64().max(1e-3)));
    report.rates.insert("acked_per_s".into(), round1(counts.acked as f64 / window_s));
    report.rates.insert("delivered_per_s".into(), round1(counts.delivered as f64 / window_s));
    report.set_server(
        crate::procstat::usage(&before, &after, env.watch.ticks_per_second),
        &[("delivered", counts.delivered), ("acked", counts.acked)],
    );
    report.set_machine(&before, &after, env.watch.ticks_per_second);
    if failed_syncs > 0 {
        report.problems.push(format!("the final sync failed for {failed_syncs} clients"));
    }
    if let Some(results) = &storm_results {
        report.results = storm_summary(results);
        let failed = results.iter().filter(|r| !r.ok).count();
        if failed > 0 {
            report.problems.push(format!("{failed} clients did not come back after the storm"));
        }
    }
    report.counts = Some(counts);
    report.latency = Some(latency);
    report.check_counts(traffic.storm_at.is_some());
    Ok(report)
}

/// Every client syncs, so that what it missed live is told apart from what was lost. A send answered while that
/// went on (one still outstanding when the bounded wait for answers ended) may have been stored after a recipient's
/// `sync` read its conversation: a member who lacks a message acknowledged after its last `sync` began waits up to
/// [`LATE_PUSH_WAIT`] for the live push, then syncs again; [`FINAL_SYNC_ROUNDS`] rounds in all. A client whose
/// `sync` failed is not asked again (the run reports it). Returns how many clients' syncs failed.
async fn final_sync(clients: &[Client], shared: &Shared) -> usize {
    let mut failed = vec![false; clients.len()];
    let mut began = vec![0u64; clients.len()];
    let mut who: Vec<usize> = (0..clients.len()).collect();
    for round in 1..=FINAL_SYNC_ROUNDS {
        let now_ns = shared.now_ns();
        for &i in &who {
            began[i] = now_ns;
        }
        let synced = join_all(who.iter().map(|&i| clients[i].sync(REQUEST_TIMEOUT))).await;
        for (&i, ok) in who.iter().zip(synced) {
            failed[i] |= !ok;
        }
        let waited_until = Instant::now() + LATE_PUSH_WAIT;
        who = loop {
            let mut lacking = shared.recorder().lacking_acked_since(&began);
            lacking.retain(|&i| !failed[i]);
            if lacking.is_empty() || Instant::now() >= waited_until {
                break lacking;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if who.is_empty() {
            break;
        }
        if round < FINAL_SYNC_ROUNDS {
            eprintln!(
                "loadgen: {} clients lack a message acknowledged during the final sync; they sync again",
                who.len()
            );
        } else {
            eprintln!("loadgen: {} clients still lack a message acknowledged during the final sync", who.len());
        }
    }
    failed.iter().filter(|&&failed| failed).count()
}

fn storm_summary(results: &[Reconnected]) -> serde_json::Value {
    let mut ready = Latency::new();
    let mut synced = Latency::new();
    for result in results.iter().filter(|r| r.ok) {
        ready.record(result.ready);
        synced.record(result.synced);
    }
    json!({
        "clients": results.len(),
        "came_back": results.iter().filter(|r| r.ok).count(),
        "all_synced_after_ms": synced.summary().max_ms,
        "ready": ready.summary(),
        "synced": synced.summary(),
    })
}

/// The summary line of a traffic run.
pub fn summary_line(report: &Report) -> String {
    let Some(counts) = &report.counts else { return String::new() };
    let Some(latency) = &report.latency else { return String::new() };
    let mut line = format!(
        "{}: users={} members={} rate={}/s window={:.1}s | sent={} acked={} delivered={}/{} repaired={} lost={} \
         dup={} ooo={} failed={} | ack {} | deliver {} | send lag {}",
        report.mode,
        report.params["users"],
        report.params["members"],
        report.params["rate"],
        report.window_s,
        counts.sent,
        counts.acked,
        counts.delivered,
        counts.expected_deliveries,
        counts.repaired,
        counts.lost,
        counts.duplicated,
        counts.out_of_order,
        counts.failed.values().sum::<u64>(),
        latency.ack.short(),
        latency.deliver.short(),
        latency.send_lag.short(),
    );
    if latency.deliver_by_second.len() > 1
        && let Some(worst) = SecondSummary::worst(&latency.deliver_by_second)
    {
        line.push_str(&format!(" | worst second {}: p99 {}", worst.second, millis(worst.p99_ms)));
        let mut beside = Vec::new();
        if let Some(disk) = &report.disk
            && let Some(flushing) = disk.second(worst.second)
        {
            // A flush counts when it completes: a stall that delayed this second's messages may end in the next.
            let next = disk.second(worst.second + 1).map_or(String::new(), |s| format!(", {}ms the next", s.flush_ms));
            beside.push(format!("disk flushing {}ms in it{next}", flushing.flush_ms));
        }
        if let Some(servers) = usize::try_from(worst.second).ok().and_then(|s| report.server_by_second.get(s)) {
            let median = crate::seconds::median_cpu_ms(&report.server_by_second);
            beside.push(format!("servers' CPU {}ms in it, median second {median}ms", servers.cpu_ms));
        }
        if !beside.is_empty() {
            line.push_str(&format!(" ({})", beside.join("; ")));
        }
    }
    if report.mode == "group" {
        line.push_str(&format!(
            " | last member {} | {:.0} deliveries/s",
            latency.last_member.short(),
            report.rates.get("delivered_per_s").copied().unwrap_or_default()
        ));
    }
    if counts.out_of_order > 0 {
        line.push_str(&format!(" | gap open before an out-of-order delivery {}", latency.reorder_gap.short()));
    }
    if counts.resent > 0 {
        line.push_str(&format!(" | resent={} republished={}", counts.resent, counts.republished));
    }
    if report.mode == "storm" {
        line.push_str(&format!(
            " | storm: {}/{} back, all synced after {}",
            report.results["came_back"],
            report.results["clients"],
            millis(report.results["all_synced_after_ms"].as_f64().unwrap_or_default())
        ));
    }
    if let Some(per) = report.cpu_us_per.get("delivered") {
        line.push_str(&format!(" | server {per:.0} µs CPU/delivered ({})", report.cpu_breakdown(counts.delivered)));
        if let Some(switches) = report.context_switches_per.get("delivered") {
            line.push_str(&format!(", {switches:.1} context switches/delivered"));
        }
    }
    if report.clients.queued > 0 {
        line.push_str(&format!(" | {} sends waited for an in-flight slot", report.clients.queued));
    }
    if let Some(disk) = &report.disk {
        let slowest = disk.by_second.iter().map(|s| s.flush_ms).max().unwrap_or(0);
        line.push_str(&format!(
            " | disk {} flushes, mean {:.2}ms, most flushing in a second {slowest}ms",
            disk.flushes, disk.mean_flush_ms
        ));
    }
    line.push_str(&report.machine_note());
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        disk::{Counters, DiskReport},
        recorder::{Counts, Latencies},
        seconds::ServerSecond,
    };

    fn run_with_a_slow_second(disk: Option<DiskReport>) -> Report {
        let second = |second, p99_ms| SecondSummary { second, count: 1000, p50_ms: 2.0, p99_ms, max_ms: p99_ms };
        Report {
            mode: "dm".to_owned(),
            params: json!({ "users": 1000, "members": 2, "rate": 1000.0 }),
            window_s: 3.0,
            counts: Some(Counts::default()),
            latency: Some(Latencies {
                deliver_by_second: vec![second(0, 5.0), second(1, 132.1), second(2, 6.0)],
                ..Latencies::default()
            }),
            disk,
            ..Report::default()
        }
    }

    #[test]
    fn the_summary_names_the_disks_flushing_in_the_worst_second_and_the_next() {
        let at = |flushes, flush_ms| Counters { flushes, flush_ms };
        let disk = DiskReport::from_readings(&[at(0, 0), at(600, 30), at(1200, 130), at(1800, 160)]);
        let line = summary_line(&run_with_a_slow_second(disk));
        assert!(line.contains("| worst second 1: p99 132.1ms (disk flushing 100ms in it, 30ms the next) |"), "{line}");
        assert!(line.contains("| disk 1800 flushes, mean 0.09ms, most flushing in a second 100ms |"), "{line}");

        // The last second has no next; a machine without flush counters has no disk part at all.
        let disk = DiskReport::from_readings(&[at(0, 0), at(600, 30), at(1200, 130)]);
        let line = summary_line(&run_with_a_slow_second(disk));
        assert!(line.contains("p99 132.1ms (disk flushing 100ms in it) |"), "{line}");
        let line = summary_line(&run_with_a_slow_second(None));
        assert!(line.contains("| worst second 1: p99 132.1ms |") && !line.contains("disk"), "{line}");
    }

    #[test]
    fn the_summary_gives_the_servers_cpu_and_context_switches_per_delivered_message() {
        let mut report = run_with_a_slow_second(None);
        report.counts = Some(Counts { delivered: 40, ..Counts::default() });
        let mut server = std::collections::BTreeMap::new();
        let usage =
            |cpu_us, context_switches| crate::procstat::GroupUsage { cpu_us, context_switches, ..Default::default() };
        server.insert("gateway".to_owned(), usage(3_000, 300));
        server.insert("postgres".to_owned(), usage(1_000, 6));
        report.set_server(server, &[("delivered", 40)]);
        let line = summary_line(&report);
        assert!(
            line.contains("| server 100 µs CPU/delivered (api 75, pg 25), 7.7 context switches/delivered"),
            "{line}"
        );
    }

    #[test]
    fn the_summary_names_the_servers_cpu_in_the_worst_second_against_the_median_second() {
        let server = |second, cpu_ms| ServerSecond { second, cpu_ms, ..ServerSecond::default() };
        let at = |flushes, flush_ms| Counters { flushes, flush_ms };
        let mut report = run_with_a_slow_second(DiskReport::from_readings(&[at(0, 0), at(9, 30), at(18, 60)]));
        report.server_by_second = vec![server(0, 1000), server(1, 1400), server(2, 1010)];
        let line = summary_line(&report);
        let expected = "p99 132.1ms (disk flushing 30ms in it; servers' CPU 1400ms in it, median second 1010ms) |";
        assert!(line.contains(expected), "{line}");

        report.disk = None;
        let line = summary_line(&report);
        assert!(line.contains("p99 132.1ms (servers' CPU 1400ms in it, median second 1010ms) |"), "{line}");
    }
}
