//! The result of a run: one summary line for people, one JSON object for scripts.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    client::ClientReport,
    disk::DiskReport,
    procstat::{GroupUsage, MachineUsage, Snapshot},
    recorder::{Counts, Latencies},
};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub run: String,
    /// When the measured window began, so that its timelines can be matched with the servers' logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub params: serde_json::Value,
    /// The measured window (from the first scheduled send to the end of the grace period), seconds.
    pub window_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latencies>,
    pub rates: BTreeMap<String, f64>,
    pub clients: ClientReport,
    /// Server processes over the measured window.
    pub server: BTreeMap<String, GroupUsage>,
    pub server_cpu_us: u64,
    /// The whole machine over the measured window (the load generator runs on it too).
    pub machine: MachineUsage,
    /// Server CPU per unit of work (per delivered message, per acknowledged send, per page, …).
    pub cpu_us_per: BTreeMap<String, f64>,
    /// The server threads' context switches over the window, and per unit of work as `cpu_us_per`.
    pub server_context_switches: u64,
    pub context_switches_per: BTreeMap<String, f64>,
    /// Mode-specific results.
    pub results: serde_json::Value,
    pub loadgen_rss_kb: u64,
    /// The disks' cache flushes over the measured window, second by second (traffic modes, on Linux 5.5+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskReport>,
    /// The watched server processes' CPU in each second of the measured window (traffic modes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_by_second: Vec<crate::seconds::ServerSecond>,
    /// Problems that make the run fail (loss, duplicates, disorder, refused sends, …).
    pub problems: Vec<String>,
}

impl Report {
    /// Fills the server totals and the per-unit CPU from `server` and the given unit counts.
    pub fn set_server(&mut self, server: BTreeMap<String, GroupUsage>, units: &[(&str, u64)]) {
        self.server_cpu_us = server.values().map(|g| g.cpu_us).sum();
        self.server_context_switches = server.values().map(|g| g.context_switches).sum();
        for (unit, count) in units {
            if *count > 0 {
                self.cpu_us_per.insert((*unit).to_owned(), round1(self.server_cpu_us as f64 / *count as f64));
                let switches = self.server_context_switches as f64 / *count as f64;
                self.context_switches_per.insert((*unit).to_owned(), round1(switches));
            }
        }
        self.server = server;
    }

    /// Fills the machine's usage; call after [`Report::set_server`].
    pub fn set_machine(&mut self, before: &Snapshot, after: &Snapshot, ticks_per_second: u64) {
        self.machine = crate::procstat::machine(before, after, self.server_cpu_us, ticks_per_second);
    }

    /// `api 120 ms 90 us 1 rabbit 150 pg 51` µs per unit: where the CPU went, per `unit`.
    pub fn cpu_breakdown(&self, unit_count: u64) -> String {
        if unit_count == 0 {
            return String::new();
        }
        fn short(group: &str) -> &str {
            match group {
                "gateway" => "api",
                "user-service" => "users",
                "message-service" => "msgs",
                "rabbitmq" => "rabbit",
                "postgres" => "pg",
                other => other,
            }
        }
        self.server
            .iter()
            .map(|(group, usage)| format!("{} {:.0}", short(group), usage.cpu_us as f64 / unit_count as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// ` | machine busy 87% (loadgen 30%, others 9%)`: how much of the machine the run had.
    pub fn machine_note(&self) -> String {
        let window_us = self.window_s * 1e6 * self.machine.cpus.max(1) as f64;
        if window_us <= 0.0 {
            return String::new();
        }
        format!(
            " | machine busy {:.0}% (loadgen {:.0}%, others {:.0}%)",
            self.machine.busy_pct,
            self.machine.loadgen_cpu_us as f64 * 100.0 / window_us,
            self.machine.others_cpu_us as f64 * 100.0 / window_us
        )
    }

    /// Checks a traffic run's counts for what must never happen. `connections_dropped`: the run dropped its
    /// connections on purpose (`storm`), so deliveries found only by the final `sync` are expected; otherwise
    /// every member was connected throughout, and a delivery that never came live was dropped by the servers.
    pub fn check_counts(&mut self, connections_dropped: bool) {
        let Some(counts) = &self.counts else { return };
        let mut problems = Vec::new();
        if counts.lost > 0 {
            problems.push(format!("{} deliveries lost", counts.lost));
        }
        if counts.repaired > 0 && !connections_dropped {
            problems.push(format!(
                "{} deliveries never came live to a connected member (found only by the final sync)",
                counts.repaired
            ));
        }
        if counts.duplicated > 0 {
            problems.push(format!("{} duplicated live deliveries", counts.duplicated));
        }
        if counts.out_of_order > 0 {
            problems.push(format!("{} out-of-order live deliveries", counts.out_of_order));
        }
        if counts.mismatched > 0 {
            problems.push(format!("{} acknowledgements did not match their sends", counts.mismatched));
        }
        let failed: u64 = counts.failed.values().sum();
        if failed > 0 {
            problems.push(format!("{failed} sends refused: {:?}", counts.failed));
        }
        if counts.unanswered > 0 {
            problems.push(format!("{} sends never answered", counts.unanswered));
        }
        self.problems.extend(problems);
    }
}

pub fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_divided_per_unit_and_broken_down_by_group() {
        let mut report = Report::default();
        let mut server = BTreeMap::new();
        server
            .insert("gateway".to_owned(), GroupUsage { cpu_us: 3_000, context_switches: 300, ..GroupUsage::default() });
        server
            .insert("postgres".to_owned(), GroupUsage { cpu_us: 1_000, context_switches: 6, ..GroupUsage::default() });
        report.set_server(server, &[("delivered", 40), ("nothing", 0)]);
        assert_eq!(report.server_cpu_us, 4_000);
        assert_eq!(report.cpu_us_per.get("delivered"), Some(&100.0));
        assert!(!report.cpu_us_per.contains_key("nothing"));
        assert_eq!(report.server_context_switches, 306);
        assert_eq!(report.context_switches_per.get("delivered"), Some(&7.7));
        assert!(!report.context_switches_per.contains_key("nothing"));
        assert_eq!(report.cpu_breakdown(40), "api 75, pg 25");
    }

    #[test]
    fn loss_and_disorder_are_problems() {
        let mut report =
            Report { counts: Some(Counts { lost: 2, out_of_order: 1, ..Counts::default() }), ..Report::default() };
        report.check_counts(false);
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        let mut clean = Report { counts: Some(Counts::default()), ..Report::default() };
        clean.check_counts(false);
        assert!(clean.problems.is_empty());
    }

    #[test]
    fn a_delivery_found_only_by_sync_is_a_problem_unless_the_run_dropped_its_connections() {
        let repaired = || Report { counts: Some(Counts { repaired: 3, ..Counts::default() }), ..Report::default() };
        let mut steady = repaired();
        steady.check_counts(false);
        assert_eq!(steady.problems.len(), 1, "{:?}", steady.problems);
        assert!(steady.problems[0].starts_with("3 deliveries never came live"), "{:?}", steady.problems);
        let mut storm = repaired();
        storm.check_counts(true);
        assert!(storm.problems.is_empty(), "{:?}", storm.problems);
    }
}
