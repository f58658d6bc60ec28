//! Open-loop scheduling: send `k` is due at `t0 + k / rate`, whatever happened to the sends before it. A server
//! that slows down therefore shows up as latency (measured from the *scheduled* time, so the load generator's own
//! queueing counts too: no coordinated omission), never as a quietly lower offered rate.
//!
//! [`Gate`] keeps one socket within the gateway's limit of requests in flight: a send due while the socket is at
//! the limit waits in a local queue (counted) rather than being refused by the gateway.

use std::{
    collections::VecDeque,
    ops::Range,
    time::{Duration, Instant},
};

/// The pacing thread's shortest sleep (see [`sleep_until`]).
const MIN_PACING_SLEEP: Duration = Duration::from_micros(200);

/// Blocks the calling thread until `wake`, but for at least [`MIN_PACING_SLEEP`]. For the pacing loops, which run
/// on a thread of their own (`spawn_blocking`) rather than on a tokio timer: tokio rounds every deadline up to its
/// next millisecond tick (and its poll timeout to whole milliseconds), so sends paced that way went out 0.8 ms late
/// at the median at 1,000 msg/s and 1.45 ms late on an idle stack — lateness every latency includes, since
/// latencies count from the scheduled time. A blocking sleep wakes within tens of microseconds of the time. The
/// floor keeps the thread from waking once per send at high rates (a quarter more load-generator CPU at 6,000 msg/s,
/// on the cores the servers share); above 5,000/s sends are then handed over a few at a time, up to 200 µs late.
fn sleep_until(wake: Instant) {
    std::thread::sleep(wake.saturating_duration_since(Instant::now()).max(MIN_PACING_SLEEP));
}

/// Runs `schedule` from `start` to its end on the calling thread (meant for `spawn_blocking`): after each wake-up
/// `hand_over` gets the sends that fell due meanwhile, and may name an earlier time to wake up next than the next
/// send's (the storm's moment, say).
pub fn pace(schedule: &Schedule, start: Instant, mut hand_over: impl FnMut(Range<u64>) -> Option<Instant>) {
    let mut next = 0u64;
    while next < schedule.total() {
        let due = schedule.due(start.elapsed());
        let sooner = hand_over(next..due);
        next = due;
        let Some(at) = schedule.next_after(next) else { break };
        sleep_until(sooner.map_or(start + at, |sooner| sooner.min(start + at)));
    }
}

/// The fixed timetable of a run: `total` sends at `rate` per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    total: u64,
}

impl Schedule {
    /// `rate` sends per second for `duration`. A rate of zero (or less) schedules nothing.
    pub fn new(rate: f64, duration: Duration) -> Self {
        if !(rate.is_finite() && rate > 0.0) {
            return Self { rate: 1.0, total: 0 };
        }
        let total = (rate * duration.as_secs_f64()).floor();
        Self { rate, total: if total >= u64::MAX as f64 { u64::MAX } else { total as u64 } }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// When send `k` is due, counted from the start of the run.
    pub fn offset(&self, k: u64) -> Duration {
        Duration::from_nanos(self.offset_nanos(k))
    }

    pub fn offset_nanos(&self, k: u64) -> u64 {
        (k as f64 * 1e9 / self.rate).round() as u64
    }

    /// How many sends are due once `elapsed` has passed: every `k` with `offset(k) <= elapsed`, at most `total`.
    pub fn due(&self, elapsed: Duration) -> u64 {
        let elapsed = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The float estimate, then corrected against `offset_nanos` itself so both always agree.
        let estimate = (elapsed as f64 * self.rate / 1e9).floor() + 1.0;
        let mut n = if estimate >= self.total as f64 { self.total } else { estimate as u64 };
        while n > 0 && self.offset_nanos(n - 1) > elapsed {
            n -= 1;
        }
        while n < self.total && self.offset_nanos(n) <= elapsed {
            n += 1;
        }
        n
    }

    /// The offset of the next send after `sent` have gone out, or `None` when the schedule is done.
    pub fn next_after(&self, sent: u64) -> Option<Duration> {
        (sent < self.total).then(|| self.offset(sent))
    }
}

/// The user (of `users`) who makes send `k`: round-robin, so every user sends at `rate / users`.
pub fn sender_of(k: u64, users: usize) -> usize {
    (k % users.max(1) as u64) as usize
}

/// Requests in flight on one socket, and what waits for a free slot.
#[derive(Debug)]
pub struct Gate<T> {
    limit: usize,
    in_flight: usize,
    waiting: VecDeque<T>,
    /// Requests that had to wait for a slot (each counted once).
    pub queued: u64,
    /// The longest the local queue has been.
    pub max_waiting: usize,
}

impl<T> Gate<T> {
    pub fn new(limit: usize) -> Self {
        Self { limit: limit.max(1), in_flight: 0, waiting: VecDeque::new(), queued: 0, max_waiting: 0 }
    }

    /// Offers a request: `Some` when it may go out now (it then counts as in flight), `None` when it was queued.
    pub fn offer(&mut self, item: T) -> Option<T> {
        if self.in_flight < self.limit && self.waiting.is_empty() {
            self.in_flight += 1;
            Some(item)
        } else {
            self.waiting.push_back(item);
            self.queued += 1;
            self.max_waiting = self.max_waiting.max(self.waiting.len());
            None
        }
    }

    /// A request finished: its slot goes to the longest waiting one, if any (which then counts as in flight).
    pub fn complete(&mut self) -> Option<T> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.take_next()
    }

    /// Moves waiting requests into free slots (after [`Gate::reset`]); call until `None`.
    pub fn take_next(&mut self) -> Option<T> {
        if self.in_flight < self.limit {
            let next = self.waiting.pop_front()?;
            self.in_flight += 1;
            Some(next)
        } else {
            None
        }
    }

    /// The socket was replaced: nothing is in flight any more (the caller re-offers what it still wants).
    pub fn reset(&mut self) {
        self.in_flight = 0;
    }

    /// Puts a request at the front of the queue (a resend after a reconnect goes before newer ones).
    pub fn requeue_front(&mut self, item: T) {
        self.waiting.push_front(item);
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_hands_over_every_send_once_in_order_and_ends_with_the_schedule() {
        let schedule = Schedule::new(20_000.0, Duration::from_millis(3));
        let mut handed = Vec::new();
        let mut wake_ups = 0;
        pace(&schedule, Instant::now(), |due| {
            wake_ups += 1;
            handed.extend(due);
            None
        });
        assert_eq!(handed, (0..schedule.total()).collect::<Vec<_>>());
        assert!(wake_ups >= 1 && wake_ups <= schedule.total(), "{wake_ups} wake-ups for {} sends", schedule.total());
    }

    #[test]
    fn sends_are_spaced_evenly_from_the_start() {
        let schedule = Schedule::new(500.0, Duration::from_secs(10));
        assert_eq!(schedule.total(), 5000);
        assert_eq!(schedule.offset(0), Duration::ZERO);
        assert_eq!(schedule.offset(1), Duration::from_millis(2));
        assert_eq!(schedule.offset(4999), Duration::from_millis(9998));
        assert_eq!(schedule.next_after(5000), None);
    }

    #[test]
    fn due_counts_every_send_whose_time_has_come_and_agrees_with_offset() {
        let schedule = Schedule::new(3.0, Duration::from_secs(2)); // 6 sends at 0, 1/3, 2/3, 1, 4/3, 5/3 s
        assert_eq!(schedule.due(Duration::ZERO), 1);
        assert_eq!(schedule.due(Duration::from_millis(333)), 1);
        assert_eq!(schedule.due(Duration::from_millis(334)), 2);
        assert_eq!(schedule.due(Duration::from_secs(1)), 4);
        assert_eq!(schedule.due(Duration::from_secs(100)), 6, "never past the total");
        for rate in [1.0, 7.0, 333.3, 10_000.0, 123_457.0] {
            let schedule = Schedule::new(rate, Duration::from_secs(3));
            for step in 0..3000u64 {
                let elapsed = Duration::from_micros(step * 997);
                let n = schedule.due(elapsed);
                assert!(n == 0 || schedule.offset(n - 1) <= elapsed, "rate {rate} at {elapsed:?}");
                assert!(n == schedule.total() || schedule.offset(n) > elapsed, "rate {rate} at {elapsed:?}");
            }
        }
    }

    #[test]
    fn a_nonsense_rate_schedules_nothing() {
        assert_eq!(Schedule::new(0.0, Duration::from_secs(5)).total(), 0);
        assert_eq!(Schedule::new(f64::NAN, Duration::from_secs(5)).due(Duration::from_secs(9)), 0);
    }

    #[test]
    fn load_is_spread_round_robin() {
        let senders: Vec<usize> = (0..7).map(|k| sender_of(k, 3)).collect();
        assert_eq!(senders, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(sender_of(5, 0), 0);
    }

    #[test]
    fn the_gate_holds_the_limit_queues_in_order_and_counts() {
        let mut gate = Gate::new(2);
        assert_eq!(gate.offer(1), Some(1));
        assert_eq!(gate.offer(2), Some(2));
        assert_eq!(gate.offer(3), None);
        assert_eq!(gate.offer(4), None);
        assert_eq!((gate.in_flight(), gate.waiting(), gate.queued, gate.max_waiting), (2, 2, 2, 2));
        assert_eq!(gate.complete(), Some(3));
        assert_eq!(gate.in_flight(), 2);
        // A newcomer must not overtake the queue even when a slot is free.
        assert_eq!(gate.complete(), Some(4));
        assert_eq!(gate.complete(), None);
        assert_eq!(gate.offer(5), Some(5));
        assert_eq!(gate.in_flight(), 2);
    }

    #[test]
    fn after_a_reset_requeued_requests_go_first() {
        let mut gate = Gate::new(1);
        assert_eq!(gate.offer("a"), Some("a"));
        assert_eq!(gate.offer("b"), None);
        gate.reset();
        gate.requeue_front("a");
        assert_eq!(gate.take_next(), Some("a"));
        assert_eq!(gate.take_next(), None, "the limit holds");
        assert_eq!(gate.complete(), Some("b"));
    }
}
