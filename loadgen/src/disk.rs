//! The disks' cache flushes, second by second of a run, from `/proc/diskstats` (read each second by
//! [`crate::seconds`]).
//!
//! Why: every durable acknowledgement waits for PostgreSQL's WAL flush, and on the VMs we measure on a flush now
//! and then takes tens of milliseconds instead of a fraction of one (docs/BENCHMARKS.md, "What the p99 misses
//! are"). Such a stall delays every message sent while it lasts, whatever the servers do. Recording how long the
//! disks spent flushing in each second of the run, beside the delivery timeline, tells a slow second caused by the
//! disk from one that was not, without a separate trace.
//!
//! A disk is a block device with a `device` link in `/sys/block` (a physical or virtual disk; loop, RAM, zram,
//! device-mapper and md devices have none, and the last two pass their flushes on to the disks below, which are
//! counted). Flush counters are in `/proc/diskstats` since Linux 5.5; older kernels give no disk timeline.

use std::fs;

use serde::Serialize;

/// Flushes completed and the milliseconds they took, summed over the disks (cumulative since boot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub flushes: u64,
    pub flush_ms: u64,
}

/// The flush counters of the devices `is_disk` accepts, from the text of `/proc/diskstats`. `None` when no such
/// device reports flushes (a kernel older than 5.5, or no disk).
pub fn parse_diskstats(text: &str, is_disk: impl Fn(&str) -> bool) -> Option<Counters> {
    let mut total: Option<Counters> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // major minor name, then 17 counters on 5.5+: flushes completed is the 16th, time flushing the 17th.
        let (Some(name), Some(flushes), Some(flush_ms)) = (fields.get(2), fields.get(18), fields.get(19)) else {
            continue;
        };
        if !is_disk(name) {
            continue;
        }
        let (Ok(flushes), Ok(flush_ms)) = (flushes.parse::<u64>(), flush_ms.parse::<u64>()) else { continue };
        let sum = total.get_or_insert_with(Counters::default);
        sum.flushes += flushes;
        sum.flush_ms += flush_ms;
    }
    total
}

/// The machine's disks now.
pub fn read() -> Option<Counters> {
    let text = fs::read_to_string("/proc/diskstats").ok()?;
    parse_diskstats(&text, |name| fs::exists(format!("/sys/block/{name}/device")).unwrap_or(false))
}

/// One second of the run, from its start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DiskSecond {
    pub second: u64,
    /// Flushes the disks completed in this second.
    pub flushes: u64,
    /// How long those flushes took, summed (a flush is counted when it completes, so a stall that began in the
    /// second before shows here).
    pub flush_ms: u64,
}

/// The disks over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DiskReport {
    pub flushes: u64,
    pub flush_ms: u64,
    /// Mean time of one flush over the run, milliseconds.
    pub mean_flush_ms: f64,
    pub by_second: Vec<DiskSecond>,
}

impl DiskReport {
    /// The report from readings taken at the run's start and each whole second after it.
    pub fn from_readings(readings: &[Counters]) -> Option<DiskReport> {
        let (first, last) = (readings.first()?, readings.last()?);
        let by_second: Vec<DiskSecond> = readings
            .windows(2)
            .enumerate()
            .map(|(second, pair)| DiskSecond {
                second: second as u64,
                flushes: pair[1].flushes.saturating_sub(pair[0].flushes),
                flush_ms: pair[1].flush_ms.saturating_sub(pair[0].flush_ms),
            })
            .collect();
        let flushes = last.flushes.saturating_sub(first.flushes);
        let flush_ms = last.flush_ms.saturating_sub(first.flush_ms);
        let mean_flush_ms =
            if flushes == 0 { 0.0 } else { (flush_ms as f64 * 1000.0 / flushes as f64).round() / 1000.0 };
        Some(DiskReport { flushes, flush_ms, mean_flush_ms, by_second })
    }

    /// The given second, if it was recorded.
    pub fn second(&self, second: u64) -> Option<&DiskSecond> {
        self.by_second.get(usize::try_from(second).ok()?).filter(|s| s.second == second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A 6.x kernel's lines: vda with a partition, a loop device, and a line of an old kernel (11 counters).
    const DISKSTATS: &str = "\
 254       0 vda 30601 5331 2599314 13807 24260 34818 2828392 14976 0 6076 29626 9827 117 961496 657 4698 183
 254       1 vda1 30000 5000 2500000 13000 24000 34000 2800000 14000 0 6000 29000 9000 100 900000 600 0 0
   7       0 loop0 12 0 24 1 0 0 0 0 0 4 1 0 0 0 0 0 0
 252       0 sdb 10 0 20 1 5 0 40 2 0 3 3
";

    #[test]
    fn the_flush_counters_of_the_disks_are_summed_and_partitions_and_others_left_out() {
        let disks = |name: &str| name == "vda" || name == "sdb";
        assert_eq!(parse_diskstats(DISKSTATS, disks), Some(Counters { flushes: 4698, flush_ms: 183 }));
        let two = format!("{DISKSTATS} 254      16 vdb 1 0 2 0 3 0 4 0 0 1 1 0 0 0 0 2 7\n");
        let disks = |name: &str| name == "vda" || name == "vdb";
        assert_eq!(parse_diskstats(&two, disks), Some(Counters { flushes: 4700, flush_ms: 190 }));
    }

    #[test]
    fn a_kernel_without_flush_counters_gives_none() {
        assert_eq!(parse_diskstats(DISKSTATS, |name| name == "sdb"), None);
        assert_eq!(parse_diskstats("", |_| true), None);
    }

    #[test]
    fn readings_become_seconds_and_totals() {
        let at = |flushes, flush_ms| Counters { flushes, flush_ms };
        let report = DiskReport::from_readings(&[at(100, 10), at(700, 40), at(1300, 140), at(1900, 170)]).unwrap();
        assert_eq!(report.flushes, 1800);
        assert_eq!(report.flush_ms, 160);
        assert_eq!(report.mean_flush_ms, 0.089);
        assert_eq!(
            report.by_second,
            vec![
                DiskSecond { second: 0, flushes: 600, flush_ms: 30 },
                DiskSecond { second: 1, flushes: 600, flush_ms: 100 },
                DiskSecond { second: 2, flushes: 600, flush_ms: 30 },
            ]
        );
        assert_eq!(report.second(1).map(|s| s.flush_ms), Some(100));
        assert_eq!(report.second(3), None);
        assert_eq!(DiskReport::from_readings(&[]), None);
        let one = DiskReport::from_readings(&[at(5, 5)]).unwrap();
        assert!(one.by_second.is_empty() && one.flushes == 0 && one.mean_flush_ms == 0.0);
    }
}
