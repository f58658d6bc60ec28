//! `history`: `getMessages` pages against a conversation with a large stored history.
//!
//! The conversation is a group of the run's readers, titled `<prefix> history`, found again on later runs against
//! the same database. Sending millions of messages through the API would take longer than any benchmark should,
//! so when the history is shorter than asked for, the load generator writes the missing messages straight into
//! the message-service's table (`--database-url`, 127.0.0.1 only), in chunks of 100,000 rows under the
//! conversation's row lock, exactly as the committer lays them out (dense seqs, one client id per message), and
//! moves the conversation's `last_seq`. Then the readers page it, open loop, at random positions.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::protocol::{
    messages::{CreateGroupRequest, GetMessagesRequest, ListConversationsRequest, MAX_CONVERSATIONS_PAGE},
    ws::{ClientFrame, ReplyData},
};
use serde_json::json;

use crate::{
    Env,
    client::{Client, Job, Shared},
    recorder::Recorder,
    report::{Report, round1},
    schedule::{self, Schedule, sender_of},
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const SEED_CHUNK: i64 = 100_000;

#[derive(Debug, Clone)]
pub struct History {
    pub readers: usize,
    /// Messages the conversation must hold.
    pub messages: i64,
    pub rate: f64,
    pub duration: Duration,
    pub page: u32,
    pub database_url: Option<String>,
    pub drain: Duration,
}

/// The seq range a `before` page of `limit` holds.
pub fn expected_range(before: i64, limit: i64) -> (i64, i64) {
    ((before - limit).max(1), before - 1)
}

/// A `before` cursor uniformly over the whole history, so pages hit old (cold) and new rows alike.
pub fn random_before(last_seq: i64) -> i64 {
    if last_seq < 1 { 1 } else { rand::random_range(2..=last_seq + 1) }
}

pub async fn run(env: &Env, history: History) -> anyhow::Result<Report> {
    if history.readers < 2 {
        bail!("history needs at least 2 readers (a group of them)");
    }
    let users = env.users(history.readers).await?;
    let shared = Shared::new(Recorder::new(&env.run_tag(), 0), env.max_in_flight);
    let clients = env.connect(&users, &shared).await?;

    let title = format!("{} history", env.prefix);
    let (conversation_id, mut last_seq) = match find_group(&clients[0], &title).await? {
        Some(found) => found,
        None => {
            let members: Vec<i64> = users[1..].iter().map(|u| u.id).collect();
            let title = title.clone();
            match clients[0]
                .request(REQUEST_TIMEOUT, move |id| ClientFrame::CreateGroup {
                    id,
                    request: CreateGroupRequest { title, member_ids: members, client_group_id: None },
                })
                .await?
            {
                ReplyData::CreateGroup(conversation) => (conversation.id, conversation.last_seq),
                other => bail!("unexpected reply to createGroup: {other:?}"),
            }
        }
    };
    if last_seq < history.messages {
        let Some(url) = &history.database_url else {
            bail!(
                "conversation {conversation_id} holds {last_seq} messages, fewer than {}: give --database-url to \
                 seed it",
                history.messages
            );
        };
        let senders: Vec<i64> = users.iter().map(|u| u.id).collect();
        last_seq = seed(url, conversation_id, &senders, history.messages).await?;
    }
    eprintln!(
        "loadgen: conversation {conversation_id} holds {last_seq} messages; {} pages/s of {} for {:.0}s",
        history.rate,
        history.page,
        history.duration.as_secs_f64()
    );

    let schedule = Schedule::new(history.rate, history.duration);
    let before = env.watch.snapshot();
    let start = Instant::now();
    let started_at = chrono::Utc::now();
    let start_ns = shared.now_ns();
    let readers = clients.clone();
    let page = history.page;
    // Paced on a thread of its own, as the message modes are (see `schedule::pace`).
    tokio::task::spawn_blocking(move || {
        schedule::pace(&schedule, start, |due| {
            for k in due {
                let reader = sender_of(k, readers.len());
                let cursor = random_before(last_seq);
                let request = GetMessagesRequest {
                    conversation_id,
                    before: Some(cursor),
                    limit: Some(page),
                    ..GetMessagesRequest::default()
                };
                let expect = expected_range(cursor, i64::from(page));
                let scheduled_ns = start_ns + schedule.offset_nanos(k);
                readers[reader].job(Job::Page { request, scheduled_ns, expect });
            }
            None
        });
    })
    .await
    .context("the pacing thread failed")?;
    let sending = start.elapsed();
    let drain_until = Instant::now() + history.drain;
    while Instant::now() < drain_until {
        let answered = shared.history().latency.len();
        if answered >= schedule.total() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = start.elapsed();
    let after = env.watch.snapshot();
    futures_util::future::join_all(clients.iter().map(Client::close)).await;

    let stats = shared.history();
    let errors: u64 = stats.errors.values().sum();
    let mut report = Report {
        mode: "history".into(),
        run: shared.recorder().run().to_owned(),
        started_at: Some(started_at),
        params: json!({
            "readers": history.readers,
            "messages": last_seq,
            "rate": history.rate,
            "duration_s": history.duration.as_secs_f64(),
            "page": history.page,
            "gateways": env.gateways.len(),
        }),
        window_s: round1(window.as_secs_f64()),
        clients: shared.stats.report(),
        loadgen_rss_kb: crate::procstat::own_rss_kb(),
        ..Report::default()
    };
    report.rates.insert("offered_per_s".into(), history.rate);
    report.rates.insert("pages_per_s".into(), round1(stats.pages as f64 / sending.as_secs_f64().max(1e-3)));
    report.results = json!({
        "conversation_id": conversation_id,
        "scheduled": schedule.total(),
        "pages": stats.pages,
        "messages_read": stats.messages,
        "bad_pages": stats.bad_pages,
        "errors": stats.errors,
        "latency": stats.latency.summary(),
        "send_lag": stats.send_lag.summary(),
    });
    report.set_server(crate::procstat::usage(&before, &after, env.watch.ticks_per_second), &[("page", stats.pages)]);
    report.set_machine(&before, &after, env.watch.ticks_per_second);
    if stats.bad_pages > 0 {
        report.problems.push(format!("{} pages were not the dense range asked for", stats.bad_pages));
    }
    if errors > 0 {
        report.problems.push(format!("{errors} pages failed: {:?}", stats.errors));
    }
    let answered = stats.latency.len();
    if answered < schedule.total() {
        report.problems.push(format!("{} pages never answered", schedule.total() - answered));
    }
    Ok(report)
}

/// The reader's group with this title, if it exists: (id, last seq).
async fn find_group(client: &Client, title: &str) -> anyhow::Result<Option<(i64, i64)>> {
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let before = cursor.clone();
        let reply = client
            .request(REQUEST_TIMEOUT, move |id| ClientFrame::ListConversations {
                id,
                request: ListConversationsRequest { before, limit: Some(MAX_CONVERSATIONS_PAGE) },
            })
            .await?;
        let ReplyData::ListConversations(page) = reply else { bail!("unexpected reply to listConversations") };
        if let Some(entry) = page.conversations.iter().find(|e| e.conversation.title.as_deref() == Some(title)) {
            return Ok(Some((entry.conversation.id, entry.conversation.last_seq)));
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// Writes messages into `conversation_id` until it holds `target`; returns its last seq.
async fn seed(url: &str, conversation_id: i64, senders: &[i64], target: i64) -> anyhow::Result<i64> {
    crate::target::check_database_url(url)?;
    let (mut client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connecting to PostgreSQL")?;
    let connection = tokio::spawn(connection);
    let started = Instant::now();
    let last_seq = loop {
        let tx = client.transaction().await?;
        let row = tx
            .query_one("SELECT last_seq FROM messages.conversations WHERE id = $1 FOR UPDATE", &[&conversation_id])
            .await
            .context("locking the conversation")?;
        let last_seq: i64 = row.get(0);
        if last_seq >= target {
            tx.rollback().await?;
            break last_seq;
        }
        let upto = (last_seq + SEED_CHUNK).min(target);
        tx.execute(
            "INSERT INTO messages.messages (conversation_id, seq, sender_id, client_message_id, body, sent_at)
             SELECT $1::bigint, s, ($2::bigint[])[1 + s % array_length($2::bigint[], 1)],
                    'seed-' || $1::bigint || '-' || s,
                    'seeded message ' || s || ': the quick brown fox jumps over the lazy dog',
                    now() - make_interval(secs => ($4 - s)::double precision)
               FROM generate_series($3::bigint, $4::bigint) AS s",
            &[&conversation_id, &senders, &(last_seq + 1), &upto],
        )
        .await
        .context("inserting seeded messages")?;
        tx.execute(
            "UPDATE messages.conversations SET last_seq = $2, last_activity_at = now() WHERE id = $1",
            &[&conversation_id, &upto],
        )
        .await?;
        tx.commit().await?;
        eprintln!(
            "loadgen: seeded conversation {conversation_id} up to seq {upto} ({:.0}s)",
            started.elapsed().as_secs_f64()
        );
    };
    client.execute("ANALYZE messages.messages", &[]).await?;
    drop(client);
    let _ = connection.await;
    Ok(last_seq)
}

pub fn summary_line(report: &Report) -> String {
    let r = &report.results;
    let ms = |histogram: &str, q: &str| r[histogram][q].as_f64().map_or("-".to_owned(), crate::stats::millis);
    format!(
        "history: {} messages, {} readers, page {} | {} pages ({:.0}/s of {}/s offered), bad={} errors={} | p50 {} \
         p99 {} p99.9 {} max {} | send lag p50 {} p99 {}{}",
        report.params["messages"],
        report.params["readers"],
        report.params["page"],
        r["pages"],
        report.rates.get("pages_per_s").copied().unwrap_or_default(),
        report.params["rate"],
        r["bad_pages"],
        r["errors"],
        ms("latency", "p50_ms"),
        ms("latency", "p99_ms"),
        ms("latency", "p999_ms"),
        ms("latency", "max_ms"),
        ms("send_lag", "p50_ms"),
        ms("send_lag", "p99_ms"),
        report.cpu_us_per.get("page").map_or(String::new(), |per| format!(
            " | server {per:.0} µs CPU/page ({})",
            report.cpu_breakdown(r["pages"].as_u64().unwrap_or(0))
        )),
    ) + &report.machine_note()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_before_page_holds_the_seqs_just_below_the_cursor() {
        assert_eq!(expected_range(101, 50), (51, 100));
        assert_eq!(expected_range(20, 50), (1, 19));
        assert_eq!(expected_range(1, 50), (1, 0), "before the first message: an empty page");
    }

    #[test]
    fn cursors_cover_the_whole_history() {
        for _ in 0..1000 {
            let before = random_before(10);
            assert!((2..=11).contains(&before));
        }
        assert_eq!(random_before(0), 1);
    }
}
