//! What happened to every message of a run: when it was scheduled, acknowledged (with which seq), and delivered to
//! which members — live, or only through `sync`.
//!
//! Each message body is `lg:<run>:<k>:<t_ns>`: the run's tag, the message's index in the schedule and its scheduled
//! send time (ns since the run's clock started). Any socket can therefore time a delivery from the body alone, and
//! messages of other runs (or set-up messages) are recognised and left out.
//!
//! Per (recipient, conversation) a [`SeqSet`] records which seqs arrived live and which the client holds at all
//! (live or repaired by `sync`): a live seq seen twice is a duplicate, a live seq below the highest one already
//! seen is out of order. A sender holds its own message from the acknowledgement (the gateway answers the sending
//! socket in place of the live frame), and its other sockets get it live. At the end, every acknowledged message
//! must be held by every other member: delivered live, else `repaired` (found by `sync`), else `lost`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use common::protocol::messages::{Head, Message};
use serde::Serialize;

use crate::stats::{Latency, Summary};

/// Seqs of one conversation as one client saw them: everything up to `floor`, plus the sparse set above it.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    floor: i64,
    above: BTreeSet<i64>,
    max: i64,
}

impl SeqSet {
    /// A set that holds every seq up to `floor` already (the history before the run).
    pub fn new(floor: i64) -> Self {
        Self { floor, above: BTreeSet::new(), max: floor }
    }

    /// Adds `seq`; false when it was there already.
    pub fn insert(&mut self, seq: i64) -> bool {
        if seq <= self.floor || !self.above.insert(seq) {
            return false;
        }
        self.max = self.max.max(seq);
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        true
    }

    pub fn contains(&self, seq: i64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    /// The newest seq below which nothing is missing: what a client reports as its head to `sync`.
    pub fn floor(&self) -> i64 {
        self.floor
    }

    pub fn max(&self) -> i64 {
        self.max
    }
}

/// How a live delivery looked against what the socket had seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    OutOfOrder,
    Duplicate,
}

/// One recipient's view of one conversation.
#[derive(Debug, Clone)]
struct Stream {
    /// Seqs pushed live.
    live: SeqSet,
    /// Seqs the client holds (live or from `sync`).
    held: SeqSet,
    /// When the highest live seq arrived (run clock, ns).
    newest_at: u64,
    /// Live copies beyond the first, by seq (rare: only duplicates land here).
    copies: HashMap<i64, u32>,
}

impl Stream {
    fn new(baseline: i64) -> Self {
        Self { live: SeqSet::new(baseline), held: SeqSet::new(baseline), newest_at: 0, copies: HashMap::new() }
    }

    fn arrive_live(&mut self, seq: i64, now_ns: u64) -> Arrival {
        let newest = self.live.max();
        self.held.insert(seq);
        if !self.live.insert(seq) {
            *self.copies.entry(seq).or_default() += 1;
            Arrival::Duplicate
        } else if seq < newest {
            Arrival::OutOfOrder
        } else {
            self.newest_at = now_ns;
            Arrival::InOrder
        }
    }
}

/// Seconds of schedule the timeline covers (`deliver_by_second`); later deliveries count only in the totals.
const MAX_TIMELINE_SECONDS: usize = 3_600;

/// A conversation the run sends to.
#[derive(Debug, Clone)]
struct Conversation {
    /// Member indices (into the run's users).
    members: Vec<usize>,
    /// Its last seq before the run started.
    baseline: i64,
}

/// One scheduled message.
#[derive(Debug, Clone, Default)]
struct Sent {
    scheduled_ns: u64,
    conversation: i64,
    sender: usize,
    written: bool,
    /// Times written again after a reconnect (with the same client message id).
    resends: u32,
    seq: Option<i64>,
    /// When the acknowledgement came (run clock, ns).
    acked_ns: u64,
    failed: bool,
    /// Members (other than the sender) it reached live.
    live: u32,
}

/// Everything counted in a run, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Messages scheduled.
    pub scheduled: u64,
    /// Messages written to a socket (a resend after a reconnect is not counted again).
    pub sent: u64,
    /// Messages written again after a reconnect, with the same client message id.
    pub resent: u64,
    /// Messages acknowledged with a seq.
    pub acked: u64,
    /// Sends answered with an error, by error code.
    pub failed: BTreeMap<String, u64>,
    /// Sends neither acknowledged nor refused by the end.
    pub unanswered: u64,
    /// Deliveries expected: each acknowledged message times its members other than the sender.
    pub expected_deliveries: u64,
    /// Live `message` frames to members other than the sender (duplicates not counted).
    pub delivered: u64,
    /// Deliveries missed live but returned by `sync`.
    pub repaired: u64,
    /// Acknowledged but held by a member neither live nor after `sync`.
    pub lost: u64,
    /// The same seq pushed live twice to one socket.
    pub duplicated: u64,
    /// A seq pushed live after a higher one of the same conversation.
    pub out_of_order: u64,
    /// A seq that reached a socket through `sync` and was then pushed live too (normal around a reconnect).
    pub live_after_sync: u64,
    /// Live copies of a resent message that arrived twice or behind newer seqs: expected, since a resend finds the
    /// stored message and publishes it again (DESIGN §2.4); clients drop them by seq. At most one extra copy per
    /// resend counts here: copies beyond that are `duplicated`. A first copy behind newer seqs counts here only when
    /// the recipient's stream broke after the message was scheduled (it missed the original push); otherwise it is
    /// `out_of_order`.
    pub republished: u64,
    /// Messages whose acknowledged seq or conversation did not match what was sent.
    pub mismatched: u64,
    /// Messages delivered live but never acknowledged (a send that timed out, yet committed).
    pub delivered_unacked: u64,
}

/// The latencies of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// Scheduled send time → the sender's acknowledgement.
    pub ack: Summary,
    /// Scheduled send time → the live `message` frame at a recipient (every recipient counted).
    pub deliver: Summary,
    /// Scheduled send time → the last member's live delivery (messages that reached every member live).
    pub last_member: Summary,
    /// For each out-of-order delivery: how long the recipient had seen a gap (since the higher seq arrived). A
    /// client that waits this long before repairing a gap with `sync` would not have needed to.
    pub reorder_gap: Summary,
    /// Scheduled send time → the frame handed to the socket (first write only): the load generator's own lateness,
    /// which every other latency here includes.
    pub send_lag: Summary,
    /// `deliver`, second by second of the schedule (by when each message was scheduled): where in the run the slow
    /// deliveries were, so that a stall can be matched with the servers' logs. Seconds without deliveries are left
    /// out.
    pub deliver_by_second: Vec<SecondSummary>,
}

/// The live deliveries of the messages scheduled in one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SecondSummary {
    /// Seconds from the first scheduled send.
    pub second: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl SecondSummary {
    /// The second whose p99 was the highest (the earliest of equals), if any.
    pub fn worst(seconds: &[SecondSummary]) -> Option<&SecondSummary> {
        seconds.iter().rev().max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
    }
}

/// The run's book of every message.
#[derive(Debug)]
pub struct Recorder {
    run: String,
    messages: Vec<Sent>,
    conversations: HashMap<i64, Conversation>,
    streams: HashMap<(usize, i64), Stream>,
    counts: Counts,
    /// Deliveries expected for the messages acknowledged so far.
    expected_so_far: u64,
    /// By recipient: when its live stream last broke (it reconnected, or the gateway told it to resync), run clock.
    stream_broke_ns: HashMap<usize, u64>,
    ack: Latency,
    deliver: Latency,
    last_member: Latency,
    reorder_gap: Latency,
    send_lag: Latency,
    /// `deliver` by second of the schedule (from the first message's scheduled time).
    deliver_by_second: Vec<Latency>,
}

impl Recorder {
    /// A recorder for run `run` (the tag in every body) with `expected` scheduled messages.
    pub fn new(run: &str, expected: u64) -> Self {
        Self {
            run: run.to_owned(),
            messages: Vec::with_capacity(usize::try_from(expected.min(50_000_000)).unwrap_or(0)),
            conversations: HashMap::new(),
            streams: HashMap::new(),
            counts: Counts::default(),
            expected_so_far: 0,
            stream_broke_ns: HashMap::new(),
            ack: Latency::new(),
            deliver: Latency::new(),
            last_member: Latency::new(),
            reorder_gap: Latency::new(),
            send_lag: Latency::new(),
            deliver_by_second: Vec::new(),
        }
    }

    pub fn run(&self) -> &str {
        &self.run
    }

    /// The body of message `k` scheduled at `scheduled_ns`.
    pub fn body(&self, k: u64, scheduled_ns: u64) -> String {
        format!("lg:{}:{k}:{scheduled_ns}", self.run)
    }

    /// The client message id of message `k` (the same on a resend, so a retry is exactly-once).
    pub fn client_message_id(&self, k: u64) -> String {
        format!("{}-{k}", self.run)
    }

    /// Reads `(k, scheduled_ns)` from a body of this run; `None` for anything else.
    pub fn parse_body(&self, body: &str) -> Option<(u64, u64)> {
        let rest = body.strip_prefix("lg:")?.strip_prefix(self.run.as_str())?.strip_prefix(':')?;
        let (k, t) = rest.split_once(':')?;
        Some((k.parse().ok()?, t.parse().ok()?))
    }

    /// Declares a conversation the run sends to: its members (user indices) and its last seq before the run.
    pub fn add_conversation(&mut self, id: i64, mut members: Vec<usize>, baseline: i64) {
        members.sort_unstable();
        members.dedup();
        for &member in &members {
            self.streams.insert((member, id), Stream::new(baseline));
        }
        self.conversations.insert(id, Conversation { members, baseline });
    }

    pub fn is_tracked(&self, conversation: i64) -> bool {
        self.conversations.contains_key(&conversation)
    }

    /// Message `k` was scheduled; `k` must be the next index.
    pub fn schedule(&mut self, k: u64, conversation: i64, sender: usize, scheduled_ns: u64) {
        debug_assert_eq!(k, self.messages.len() as u64);
        self.messages.push(Sent { scheduled_ns, conversation, sender, ..Sent::default() });
        self.counts.scheduled += 1;
    }

    /// Message `k` was handed to its sender's socket at `now_ns` (again, after a reconnect: a resend).
    pub fn written(&mut self, k: u64, now_ns: u64) {
        if let Some(sent) = self.messages.get_mut(k as usize) {
            if !sent.written {
                sent.written = true;
                self.counts.sent += 1;
                self.send_lag.record_micros(now_ns.saturating_sub(sent.scheduled_ns) / 1000);
            } else {
                if sent.resends == 0 {
                    self.counts.resent += 1;
                }
                sent.resends += 1;
            }
        }
    }

    /// Message `k` was acknowledged with `message`, at `now_ns` on the run's clock.
    pub fn acked(&mut self, k: u64, message: &Message, now_ns: u64) {
        let body_k = self.parse_body_k(&message.body);
        let Some(sent) = self.messages.get_mut(k as usize) else { return };
        if sent.seq.is_some() {
            return; // a resend answered twice: the first answer counted
        }
        if message.conversation_id != sent.conversation || body_k != Some(k) {
            self.counts.mismatched += 1;
            return;
        }
        sent.seq = Some(message.seq);
        sent.acked_ns = now_ns;
        if let Some(stream) = self.streams.get_mut(&(sent.sender, sent.conversation)) {
            stream.held.insert(message.seq);
        }
        if sent.failed {
            sent.failed = false; // refused once, then stored by a resend
        }
        self.counts.acked += 1;
        self.expected_so_far +=
            self.conversations.get(&sent.conversation).map_or(0, |c| c.members.len().saturating_sub(1)) as u64;
        self.ack.record_micros(now_ns.saturating_sub(sent.scheduled_ns) / 1000);
    }

    /// Message `k` was refused with error `code`.
    pub fn failed(&mut self, k: u64, code: &str) {
        if let Some(sent) = self.messages.get_mut(k as usize)
            && sent.seq.is_none()
            && !sent.failed
        {
            sent.failed = true;
            *self.counts.failed.entry(code.to_owned()).or_default() += 1;
        }
    }

    fn parse_body_k(&self, body: &str) -> Option<u64> {
        self.parse_body(body).map(|(k, _)| k)
    }

    /// A live `message` frame reached user `recipient`'s socket at `now_ns`.
    pub fn live(&mut self, recipient: usize, message: &Message, now_ns: u64) -> Option<Arrival> {
        let (k, scheduled_ns) = self.parse_body(&message.body)?;
        let own = self.messages.get(k as usize).is_some_and(|sent| sent.sender == recipient);
        let stream = self.streams.get_mut(&(recipient, message.conversation_id))?;
        // The sender's own copy (when the ack came first) is held from the ack, not repaired by `sync`.
        let held_already = !own && stream.held.contains(message.seq) && !stream.live.contains(message.seq);
        let arrival = stream.arrive_live(message.seq, now_ns);
        let gap_open_ns = now_ns.saturating_sub(stream.newest_at);
        let resends = self.messages.get(k as usize).map_or(0, |sent| sent.resends);
        let resent = resends > 0;
        match arrival {
            Arrival::Duplicate => {
                // Each resend may publish the message once more; a copy beyond those is a real duplicate.
                if stream.copies.get(&message.seq).is_some_and(|&extra| extra <= resends) {
                    self.counts.republished += 1;
                } else {
                    self.counts.duplicated += 1;
                }
                return Some(arrival);
            }
            // The first copy of a resent message may come behind newer ones only when the recipient missed the
            // original push (its stream broke after the message was scheduled) and this is the resend's copy.
            Arrival::OutOfOrder
                if resent && self.stream_broke_ns.get(&recipient).is_some_and(|&at| at >= scheduled_ns) =>
            {
                self.counts.republished += 1;
            }
            Arrival::OutOfOrder => {
                self.counts.out_of_order += 1;
                self.reorder_gap.record_micros(gap_open_ns / 1000);
            }
            Arrival::InOrder => {}
        }
        if held_already {
            self.counts.live_after_sync += 1;
        }
        let origin_ns = self.messages.first().map_or(0, |first| first.scheduled_ns);
        let Some(sent) = self.messages.get_mut(k as usize) else { return Some(arrival) };
        if sent.sender == recipient {
            return Some(arrival); // the sender's own copy (for its other devices)
        }
        let latency = now_ns.saturating_sub(scheduled_ns) / 1000;
        self.counts.delivered += 1;
        self.deliver.record_micros(latency);
        let second = usize::try_from(scheduled_ns.saturating_sub(origin_ns) / 1_000_000_000).unwrap_or(usize::MAX);
        if second < MAX_TIMELINE_SECONDS {
            if self.deliver_by_second.len() <= second {
                self.deliver_by_second.resize_with(second + 1, Latency::coarse);
            }
            self.deliver_by_second[second].record_micros(latency);
        }
        sent.live += 1;
        let others = self.conversations.get(&sent.conversation).map_or(0, |c| c.members.len().saturating_sub(1));
        if sent.live as usize == others {
            self.last_member.record_micros(latency);
        }
        Some(arrival)
    }

    /// User `recipient`'s live stream broke at `now_ns`: it lost its connection, or the gateway told it to resync.
    /// Pushes made meanwhile never reach it.
    pub fn stream_broke(&mut self, recipient: usize, now_ns: u64) {
        self.stream_broke_ns.insert(recipient, now_ns);
    }

    /// `sync` (or a history page fetched after it) returned `message` to user `recipient`.
    pub fn synced(&mut self, recipient: usize, message: &Message) {
        if let Some(stream) = self.streams.get_mut(&(recipient, message.conversation_id)) {
            stream.held.insert(message.seq);
        }
    }

    /// The heads user `recipient` reports to `sync` for the run's conversations.
    pub fn heads(&self, recipient: usize) -> Vec<Head> {
        let mut heads: Vec<Head> = self
            .streams
            .iter()
            .filter(|((user, _), _)| *user == recipient)
            .map(|((_, conversation_id), stream)| Head { conversation_id: *conversation_id, seq: stream.held.floor() })
            .collect();
        heads.sort_by_key(|head| head.conversation_id);
        heads
    }

    /// The members (user indices, ascending) who lack a message, neither pushed live nor returned by `sync`, that
    /// was acknowledged at or after `began[member]` (run clock, ns: when that member's last `sync` began). Such a
    /// `sync` may have read the conversation before the message was stored; one that began after the
    /// acknowledgement came cannot have. Members without an entry are not named.
    pub fn lacking_acked_since(&self, began: &[u64]) -> Vec<usize> {
        let mut lacking = BTreeSet::new();
        for sent in &self.messages {
            let Some(seq) = sent.seq else { continue };
            let Some(conversation) = self.conversations.get(&sent.conversation) else { continue };
            for &member in conversation.members.iter().filter(|&&m| m != sent.sender) {
                let late = began.get(member).is_some_and(|&began| sent.acked_ns >= began);
                if late && self.streams.get(&(member, sent.conversation)).is_some_and(|s| !s.held.contains(seq)) {
                    lacking.insert(member);
                }
            }
        }
        lacking.into_iter().collect()
    }

    /// Acknowledged messages so far, and sends answered either way.
    pub fn answered(&self) -> (u64, u64) {
        let failed: u64 = self.counts.failed.values().sum();
        (self.counts.acked, self.counts.acked + failed)
    }

    /// Live deliveries so far, and the deliveries expected for the messages acknowledged so far.
    pub fn delivery_progress(&self) -> (u64, u64) {
        (self.counts.delivered, self.expected_so_far)
    }

    /// The final accounting: every acknowledged message against every other member's stream.
    pub fn finish(&mut self) -> (Counts, Latencies) {
        let mut counts = self.counts.clone();
        counts.unanswered = self.messages.iter().filter(|m| m.seq.is_none() && !m.failed).count() as u64;
        counts.delivered_unacked = self.messages.iter().filter(|m| m.seq.is_none() && m.live > 0).count() as u64;
        counts.expected_deliveries = 0;
        counts.repaired = 0;
        counts.lost = 0;
        for sent in &self.messages {
            let Some(seq) = sent.seq else { continue };
            let Some(conversation) = self.conversations.get(&sent.conversation) else { continue };
            for &member in conversation.members.iter().filter(|&&m| m != sent.sender) {
                counts.expected_deliveries += 1;
                let Some(stream) = self.streams.get(&(member, sent.conversation)) else { continue };
                if seq <= conversation.baseline {
                    counts.mismatched += 1;
                } else if stream.live.contains(seq) {
                    // delivered live: counted as it happened
                } else if stream.held.contains(seq) {
                    counts.repaired += 1;
                } else {
                    counts.lost += 1;
                }
            }
        }
        let latencies = Latencies {
            ack: self.ack.summary(),
            deliver: self.deliver.summary(),
            last_member: self.last_member.summary(),
            reorder_gap: self.reorder_gap.summary(),
            send_lag: self.send_lag.summary(),
            deliver_by_second: self
                .deliver_by_second
                .iter()
                .enumerate()
                .filter(|(_, latency)| !latency.is_empty())
                .map(|(second, latency)| {
                    let summary = latency.summary();
                    SecondSummary {
                        second: second as u64,
                        count: summary.count,
                        p50_ms: summary.p50_ms,
                        p99_ms: summary.p99_ms,
                        max_ms: summary.max_ms,
                    }
                })
                .collect(),
        };
        (counts, latencies)
    }
}

/// Nanoseconds on a run's clock.
pub fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(recorder: &Recorder, k: u64, conversation: i64, seq: i64, sender_id: i64, t_ns: u64) -> Message {
        Message {
            conversation_id: conversation,
            seq,
            sender_id,
            client_message_id: recorder.client_message_id(k),
            body: recorder.body(k, t_ns),
            sent_at: 0,
        }
    }

    #[test]
    fn a_seq_set_keeps_a_floor_and_the_sparse_rest() {
        let mut set = SeqSet::new(10);
        assert!(set.contains(3) && !set.contains(11));
        assert!(!set.insert(9), "below the floor is known already");
        assert!(set.insert(12));
        assert_eq!(set.floor(), 10);
        assert!(set.insert(11));
        assert_eq!(set.floor(), 12, "the gap closed");
        assert!(!set.insert(12));
        assert!(set.insert(15));
        assert_eq!((set.floor(), set.max()), (12, 15));
    }

    #[test]
    fn bodies_round_trip_and_other_runs_are_ignored() {
        let recorder = Recorder::new("r1", 0);
        assert_eq!(recorder.parse_body(&recorder.body(42, 123_456)), Some((42, 123_456)));
        assert_eq!(recorder.parse_body("lg:r2:42:1"), None);
        assert_eq!(recorder.parse_body("lg:r1x:42:1"), None);
        assert_eq!(recorder.parse_body("hello"), None);
        assert_eq!(recorder.parse_body("lg:r1:x:1"), None);
    }

    /// Two users in one direct conversation (id 7, two messages before the run); user 0 is id 100, user 1 id 101.
    fn direct() -> Recorder {
        let mut recorder = Recorder::new("run", 10);
        recorder.add_conversation(7, vec![1, 0], 2);
        recorder
    }

    #[test]
    fn the_sender_holds_its_message_from_the_ack_and_a_late_own_copy_is_neither_repaired_nor_a_duplicate() {
        let mut r = direct();
        for k in 0..2 {
            r.schedule(k, 7, 0, 1_000_000);
            r.written(k, 1_000_000);
        }
        let first = message(&r, 0, 7, 3, 100, 1_000_000);
        let second = message(&r, 1, 7, 4, 100, 1_000_000);
        r.acked(0, &first, 2_000_000);
        r.acked(1, &second, 2_000_000);
        assert_eq!(r.heads(0), [Head { conversation_id: 7, seq: 4 }], "the sender's head moves with its acks");
        assert_eq!(r.heads(1), [Head { conversation_id: 7, seq: 2 }]);
        assert_eq!(r.live(0, &second, 3_000_000), Some(Arrival::InOrder), "the frame after the reply won the race");
        let (counts, _) = r.finish();
        assert_eq!((counts.live_after_sync, counts.duplicated, counts.delivered), (0, 0, 0));
    }

    #[test]
    fn acks_and_deliveries_are_timed_from_the_scheduled_send() {
        let mut r = direct();
        r.schedule(0, 7, 0, 1_000_000);
        r.written(0, 1_400_000); // 0.4 ms late
        let m = message(&r, 0, 7, 3, 100, 1_000_000);
        assert_eq!(r.live(1, &m, 4_000_000), Some(Arrival::InOrder)); // the push may beat the ack
        assert_eq!(r.live(0, &m, 4_000_000), Some(Arrival::InOrder)); // the sender's own copy
        r.acked(0, &m, 6_000_000);
        let (counts, latencies) = r.finish();
        assert_eq!((counts.scheduled, counts.sent, counts.acked, counts.delivered), (1, 1, 1, 1));
        assert_eq!((counts.expected_deliveries, counts.lost, counts.repaired), (1, 0, 0));
        assert_eq!(counts.delivered_unacked, 0, "delivered before its ack arrived, but acknowledged");
        assert!((latencies.ack.max_ms - 5.0).abs() < 0.01, "{:?}", latencies.ack);
        assert!((latencies.deliver.max_ms - 3.0).abs() < 0.01, "{:?}", latencies.deliver);
        assert_eq!(latencies.last_member.count, 1);
        assert!((latencies.send_lag.max_ms - 0.4).abs() < 0.01, "{:?}", latencies.send_lag);
    }

    #[test]
    fn deliveries_are_also_summarised_by_the_second_they_were_scheduled_in() {
        let mut r = direct();
        let second = 1_000_000_000;
        // Scheduled at 5 s (the origin), 5.5 s and 7.2 s on the run's clock; delivered 2, 4 and 30 ms later.
        for (k, (at, took)) in
            [(5 * second, 2_000_000), (5 * second + second / 2, 4_000_000), (7_200_000_000, 30_000_000)]
                .into_iter()
                .enumerate()
        {
            r.schedule(k as u64, 7, 0, at);
            let m = message(&r, k as u64, 7, k as i64 + 3, 100, at);
            r.acked(k as u64, &m, at + took);
            r.live(1, &m, at + took);
        }
        let (_, latencies) = r.finish();
        let seconds = &latencies.deliver_by_second;
        assert_eq!(seconds.iter().map(|s| (s.second, s.count)).collect::<Vec<_>>(), [(0, 2), (2, 1)]);
        assert!((seconds[0].max_ms - 4.0).abs() < 0.05, "{seconds:?}");
        assert!((seconds[1].p99_ms - 30.0).abs() < 0.3, "{seconds:?}");
        assert_eq!(SecondSummary::worst(seconds).map(|s| s.second), Some(2));
        assert_eq!(SecondSummary::worst(&[]), None);
    }

    #[test]
    fn duplicates_and_out_of_order_deliveries_are_counted() {
        let mut r = direct();
        for k in 0..3 {
            r.schedule(k, 7, 0, 0);
        }
        let m3 = message(&r, 0, 7, 3, 100, 0);
        let m4 = message(&r, 1, 7, 4, 100, 0);
        let m5 = message(&r, 2, 7, 5, 100, 0);
        assert_eq!(r.live(1, &m3, 1_000_000), Some(Arrival::InOrder));
        assert_eq!(r.live(1, &m5, 2_000_000), Some(Arrival::InOrder));
        assert_eq!(r.live(1, &m4, 5_000_000), Some(Arrival::OutOfOrder)); // the gap at 4 was open 3 ms
        assert_eq!(r.live(1, &m4, 6_000_000), Some(Arrival::Duplicate));
        let (counts, latencies) = r.finish();
        assert_eq!((counts.delivered, counts.out_of_order, counts.duplicated), (3, 1, 1));
        assert!((latencies.reorder_gap.max_ms - 3.0).abs() < 0.01, "{:?}", latencies.reorder_gap);
    }

    #[test]
    fn a_missed_delivery_is_repaired_by_sync_or_else_lost() {
        let mut r = direct();
        for k in 0..3 {
            r.schedule(k, 7, 0, 0);
            r.written(k, 1_000_000);
        }
        let sent: Vec<Message> = (0..3).map(|k| message(&r, k, 7, 3 + k as i64, 100, 0)).collect();
        for (k, m) in sent.iter().enumerate() {
            r.acked(k as u64, m, 10);
        }
        r.live(1, &sent[0], 10);
        assert_eq!(r.heads(1), vec![Head { conversation_id: 7, seq: 3 }]);
        // seq 4 comes back through sync; seq 5 never arrives.
        r.synced(1, &sent[1]);
        assert_eq!(r.heads(1), vec![Head { conversation_id: 7, seq: 4 }]);
        let (counts, _) = r.finish();
        assert_eq!((counts.acked, counts.delivered, counts.repaired, counts.lost), (3, 1, 1, 1));
        assert_eq!(counts.expected_deliveries, 3);
    }

    #[test]
    fn a_live_push_after_sync_is_not_a_duplicate() {
        let mut r = direct();
        r.schedule(0, 7, 0, 0);
        let m = message(&r, 0, 7, 3, 100, 0);
        r.acked(0, &m, 5);
        r.synced(1, &m);
        assert_eq!(r.live(1, &m, 9), Some(Arrival::InOrder));
        let (counts, _) = r.finish();
        assert_eq!((counts.duplicated, counts.live_after_sync, counts.delivered, counts.repaired), (0, 1, 1, 0));
    }

    #[test]
    fn refusals_unanswered_sends_and_mismatches_are_told_apart() {
        let mut r = direct();
        for k in 0..4 {
            r.schedule(k, 7, 0, 0);
        }
        r.failed(0, "timeout");
        r.failed(0, "timeout"); // counted once
        r.failed(1, "rate_limited");
        let wrong_conversation = message(&r, 2, 8, 3, 100, 0);
        r.acked(2, &wrong_conversation, 1);
        assert_eq!(r.answered(), (0, 2));
        let (counts, _) = r.finish();
        assert_eq!(counts.failed.get("timeout"), Some(&1));
        assert_eq!(counts.unanswered, 2);
        assert_eq!(counts.mismatched, 1);
        assert_eq!(counts.expected_deliveries, 0);
    }

    #[test]
    fn a_resent_message_published_again_is_expected_not_a_duplicate() {
        let mut r = direct();
        for k in 0..2 {
            r.schedule(k, 7, 0, 0);
            r.written(k, 1_000_000);
        }
        r.written(0, 1_000_000); // resent after a reconnect
        r.written(0, 1_000_000);
        r.stream_broke(1, 0); // the recipient missed the original push
        let m3 = message(&r, 0, 7, 3, 100, 0);
        let m4 = message(&r, 1, 7, 4, 100, 0);
        assert_eq!(r.live(1, &m4, 1), Some(Arrival::InOrder));
        assert_eq!(r.live(1, &m3, 1), Some(Arrival::OutOfOrder)); // the republished copy, behind seq 4
        assert_eq!(r.live(1, &m3, 2), Some(Arrival::Duplicate));
        assert_eq!(r.live(1, &m4, 2), Some(Arrival::Duplicate)); // never resent: a real duplicate
        let (counts, _) = r.finish();
        assert_eq!((counts.sent, counts.resent, counts.delivered), (2, 1, 2));
        assert_eq!((counts.republished, counts.out_of_order, counts.duplicated), (2, 0, 1));
    }

    #[test]
    fn a_resent_message_first_seen_behind_newer_ones_is_out_of_order_unless_the_recipient_missed_its_push() {
        for (broke_at, republished) in [(None, 0), (Some(5), 0), (Some(20), 1)] {
            let mut r = direct();
            r.schedule(0, 7, 0, 10);
            r.schedule(1, 7, 0, 30);
            r.written(0, 11);
            r.written(0, 40); // resent
            r.written(1, 31);
            if let Some(at) = broke_at {
                r.stream_broke(1, at); // before message 0 was scheduled: it could not have missed that push
            }
            r.live(1, &message(&r, 1, 7, 4, 100, 30), 50);
            assert_eq!(r.live(1, &message(&r, 0, 7, 3, 100, 10), 60), Some(Arrival::OutOfOrder));
            let (counts, _) = r.finish();
            assert_eq!((counts.republished, counts.out_of_order), (republished, 1 - republished), "{broke_at:?}");
        }
    }

    #[test]
    fn a_resend_excuses_one_extra_copy_and_no_more() {
        let mut r = direct();
        r.schedule(0, 7, 0, 0);
        r.written(0, 1_000_000);
        r.written(0, 2_000_000); // resent once
        let m3 = message(&r, 0, 7, 3, 100, 0);
        r.acked(0, &m3, 3_000_000);
        for at in 1..=3 {
            r.live(1, &m3, at);
        }
        let (counts, _) = r.finish();
        assert_eq!((counts.delivered, counts.republished, counts.duplicated), (1, 1, 1));
    }

    #[test]
    fn members_lacking_a_message_acknowledged_after_their_sync_began_are_named() {
        let mut r = Recorder::new("late", 4);
        r.add_conversation(7, vec![0, 1], 0);
        r.add_conversation(8, vec![2, 3, 4], 0);
        for (k, conversation, sender) in [(0, 7, 0), (1, 8, 2), (2, 8, 3), (3, 7, 1)] {
            r.schedule(k, conversation, sender, 0);
            r.written(k, 1);
        }
        let m0 = message(&r, 0, 7, 1, 100, 0);
        let m1 = message(&r, 1, 8, 1, 102, 0);
        let m2 = message(&r, 2, 8, 2, 103, 0);
        r.acked(0, &m0, 10); // before member 1's sync began: that sync read it, whatever it found
        r.acked(1, &m1, 50); // the moment the syncs of members 2 to 4 began: perhaps not read
        r.acked(2, &m2, 60);
        // Message 3 is never acknowledged: nobody lacks it.
        r.live(3, &m1, 70);
        // Member 3 lacks nothing; member 4 lacks both, member 2 message 2.
        let began = [50, 50, 50, 50, 50];
        assert_eq!(r.lacking_acked_since(&began), [2, 4]);
        r.synced(4, &m1);
        assert_eq!(r.lacking_acked_since(&began), [2, 4], "member 4 still lacks message 2");
        assert_eq!(r.lacking_acked_since(&[50, 50, 61, 50, 61]), [] as [usize; 0], "their syncs began after it");
        assert_eq!(r.lacking_acked_since(&[0, 0]), [1], "message 0, for member 1; the others are not asked about");
        r.synced(4, &m2);
        r.live(2, &m2, 80);
        assert!(r.lacking_acked_since(&began).is_empty());
    }

    #[test]
    fn in_a_group_the_last_members_delivery_is_timed() {
        let mut r = Recorder::new("g", 1);
        r.add_conversation(9, vec![0, 1, 2, 3], 0);
        r.schedule(0, 9, 2, 0);
        let m = message(&r, 0, 9, 1, 102, 0);
        r.acked(0, &m, 1_000);
        for (member, at) in [(0, 2_000_000), (1, 3_000_000), (2, 500_000), (3, 7_000_000)] {
            r.live(member, &m, at);
        }
        assert_eq!(r.delivery_progress(), (3, 3));
        let (counts, latencies) = r.finish();
        assert_eq!((counts.delivered, counts.expected_deliveries, counts.lost), (3, 3, 0));
        assert_eq!(latencies.deliver.count, 3);
        assert_eq!(latencies.last_member.count, 1);
        assert!((latencies.last_member.max_ms - 7.0).abs() < 0.01, "{:?}", latencies.last_member);
    }

    #[test]
    fn messages_outside_the_runs_conversations_or_of_other_runs_are_ignored() {
        let mut r = direct();
        r.schedule(0, 7, 0, 0);
        let foreign = Message { body: "hello".into(), ..message(&r, 0, 7, 3, 100, 0) };
        assert_eq!(r.live(1, &foreign, 1), None);
        let elsewhere = message(&r, 0, 99, 1, 100, 0);
        assert_eq!(r.live(1, &elsewhere, 1), None);
        assert_eq!(r.finish().0.delivered, 0);
    }
}
