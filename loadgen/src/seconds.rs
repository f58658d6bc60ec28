//! What the machine did in each second of a run, beside the delivery timeline: the disks' flushes ([`crate::disk`])
//! and the CPU of each group of server processes ([`crate::procstat`]). A slow second whose disks flushed as usual
//! and whose servers worked as usual was held by something neither shows (the file system's journal, the host).
//!
//! Read at the run's start and at each whole second after it, on a thread of its own: reading `/proc` takes a few
//! milliseconds, which on a tokio worker would delay the load generator's own sockets.

use std::{
    collections::BTreeMap,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    disk::{self, Counters, DiskReport},
    procstat::{self, Snapshot, Watch},
};

/// The servers in one second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerSecond {
    pub second: u64,
    /// CPU time of every watched server process in this second, milliseconds.
    pub cpu_ms: u64,
    /// The same by group (`gateway`, `postgres`, …).
    pub by_group: BTreeMap<String, u64>,
}

/// One reading: the disks (absent where the kernel does not count flushes) and the servers.
#[derive(Debug)]
struct Reading {
    disk: Option<Counters>,
    servers: Snapshot,
}

/// Reads the machine at `start` and every whole second after it until stopped.
#[derive(Debug)]
pub struct Sampler {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Vec<Reading>>,
    ticks_per_second: u64,
}

impl Sampler {
    pub fn start(start: Instant, watch: Watch) -> Sampler {
        let (stop, stopped) = mpsc::channel::<()>();
        let ticks_per_second = watch.ticks_per_second;
        let thread = std::thread::spawn(move || {
            let read = || Reading { disk: disk::read(), servers: watch.cpu_snapshot() };
            let mut readings = vec![read()];
            for second in 1u32.. {
                // On the grid of whole seconds from `start`: a late reading does not move the next. A second that
                // ended before the stop came is read first.
                let due = start + Duration::from_secs(second.into());
                if let Some(wait) = due.checked_duration_since(Instant::now())
                    && stopped.recv_timeout(wait) != Err(mpsc::RecvTimeoutError::Timeout)
                {
                    break;
                }
                readings.push(read());
            }
            readings
        });
        Sampler { stop, thread, ticks_per_second }
    }

    /// Stops reading; the disks' and the servers' seconds completed so far (no disk report where the kernel does
    /// not count flushes).
    pub async fn finish(self) -> (Option<DiskReport>, Vec<ServerSecond>) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let readings = tokio::task::spawn_blocking(move || thread.join()).await.ok().and_then(Result::ok);
        let readings = readings.unwrap_or_default();
        let disks: Option<Vec<Counters>> = readings.iter().map(|r| r.disk).collect();
        let disk = disks.and_then(|d| DiskReport::from_readings(&d));
        let snapshots: Vec<&Snapshot> = readings.iter().map(|r| &r.servers).collect();
        (disk, server_seconds(&snapshots, self.ticks_per_second))
    }
}

/// The servers' CPU in each second between consecutive snapshots.
pub fn server_seconds(snapshots: &[&Snapshot], ticks_per_second: u64) -> Vec<ServerSecond> {
    snapshots
        .windows(2)
        .enumerate()
        .map(|(second, pair)| {
            let by_group: BTreeMap<String, u64> = procstat::usage(pair[0], pair[1], ticks_per_second)
                .into_iter()
                .map(|(group, usage)| (group, usage.cpu_us / 1000))
                .collect();
            ServerSecond { second: second as u64, cpu_ms: by_group.values().sum(), by_group }
        })
        .collect()
}

/// The median of the seconds' server CPU, milliseconds (0 without seconds).
pub fn median_cpu_ms(seconds: &[ServerSecond]) -> u64 {
    let mut cpu: Vec<u64> = seconds.iter().map(|s| s.cpu_ms).collect();
    cpu.sort_unstable();
    cpu.get(cpu.len() / 2).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procstat::Sample;

    fn snapshot(gateway_ticks: u64, postgres_ticks: u64) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let sample = |cpu_ticks| Sample { cpu_ticks, rss_kb: 0 };
        snapshot.groups.entry("gateway".into()).or_default().insert(10, sample(gateway_ticks));
        snapshot.groups.entry("postgres".into()).or_default().insert(20, sample(postgres_ticks));
        snapshot
    }

    #[test]
    fn each_second_gets_the_cpu_spent_in_it_by_group() {
        let readings = [snapshot(100, 50), snapshot(130, 70), snapshot(135, 120)];
        let seconds = server_seconds(&readings.iter().collect::<Vec<_>>(), 100);
        let group =
            |gateway, postgres| BTreeMap::from([("gateway".to_owned(), gateway), ("postgres".to_owned(), postgres)]);
        assert_eq!(
            seconds,
            vec![
                ServerSecond { second: 0, cpu_ms: 500, by_group: group(300, 200) },
                ServerSecond { second: 1, cpu_ms: 550, by_group: group(50, 500) },
            ]
        );
        assert_eq!(median_cpu_ms(&seconds), 550);
        assert_eq!(median_cpu_ms(&[]), 0);
        assert!(server_seconds(&[&snapshot(1, 1)], 100).is_empty());
    }

    #[tokio::test]
    async fn the_sampler_reads_at_the_start_and_each_whole_second_until_stopped() {
        let start = Instant::now();
        let sampler = Sampler::start(start, Watch::new(BTreeMap::new(), None));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let (disk, servers) = sampler.finish().await;
        // Second 0 ended before the stop; no second is read before it ends, so no more seconds than have passed.
        let passed = start.elapsed().as_secs() as usize;
        let seconds: Vec<u64> = servers.iter().map(|s| s.second).collect();
        assert!(!seconds.is_empty() && seconds.len() <= passed, "{seconds:?} in {passed} s");
        assert!(seconds.iter().enumerate().all(|(i, &s)| s == i as u64), "{seconds:?}");
        if let Some(disk) = disk {
            assert_eq!(disk.by_second.len(), seconds.len(), "the disks are read with the servers");
        }
    }
}
