//! CPU time and memory of the server processes, read from `/proc` before and after a run.
//!
//! Groups: `gateway` (`api`), `user-service`, `message-service`, `rabbitmq` (`beam.smp`) and `postgres`. A group is
//! found by process name, or given as explicit pids (`--pid gateway=1234`, what `scripts/bench.sh` does, so that
//! other people's gateways on a shared machine are left out). PostgreSQL backends of other databases can be left
//! out with `--pg-database`: a backend names its database in its command line; the server's own processes
//! (checkpointer, WAL writer, …) are always counted. CPU is `utime + stime` of `/proc/PID/stat` (every thread),
//! memory is `VmRSS` of `/proc/PID/status` (for PostgreSQL a sum that counts shared buffers once per process), and
//! context switches are the voluntary and involuntary ones of every thread (`/proc/PID/task/*/status`): each is a
//! thread going to sleep or being put aside, and on a VM a hand-off to a sleeping vCPU costs CPU of its own
//! (docs/BENCHMARKS.md, "twentieth machine"). They are counted thread by thread, because a thread that ends takes
//! its count with it (tokio's blocking threads end after ten idle seconds): such a thread's switches since the
//! first reading are missed, the others' still count. So switches read a little low beside CPU, which keeps the
//! time of ended threads.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
};

use serde::Serialize;

/// The groups, in report order, with the process name that finds each.
pub const GROUPS: [(&str, &str); 5] = [
    ("gateway", "api"),
    ("user-service", "user-service"),
    ("message-service", "message-service"),
    ("rabbitmq", "beam.smp"),
    ("postgres", "postgres"),
];

/// One process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kb: u64,
}

/// The command name and `utime + stime` (ticks) from the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    // The name sits in parentheses and may itself contain spaces or parentheses: it ends at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// `VmRSS` in kB from the text of `/proc/PID/status` (absent for kernel threads and zombies).
pub fn parse_vm_rss(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
}

/// Voluntary plus involuntary context switches from the text of a thread's `/proc/PID/task/TID/status`.
pub fn parse_switches(status: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
    };
    Some(field("voluntary_ctxt_switches")? + field("nonvoluntary_ctxt_switches")?)
}

/// Whether a PostgreSQL process belongs to the run: the server's own processes always do, a backend (or an
/// autovacuum worker) only when it serves `database`. `cmdline` is `/proc/PID/cmdline` with NULs as spaces, e.g.
/// `postgres: 15/main: postgres warren 127.0.0.1(51234) idle`.
pub fn postgres_process_counts(cmdline: &str, database: Option<&str>) -> bool {
    let Some(database) = database else { return true };
    // "postgres: <cluster>: <title>"; the postmaster itself shows its real command line.
    let Some(title) = cmdline.strip_prefix("postgres: ").and_then(|rest| rest.split_once(": ")).map(|(_, t)| t) else {
        return true;
    };
    let words: Vec<&str> = title.split_whitespace().collect();
    if let Some(rest) = title.strip_prefix("autovacuum worker") {
        return rest.split_whitespace().next().is_none_or(|db| db == database);
    }
    // A backend: user, database, then the client (host(port) or [local]).
    match words.as_slice() {
        [_, db, client, ..] if client.contains('(') || *client == "[local]" => *db == database,
        _ => true,
    }
}

/// Which processes to watch.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Groups given as explicit pids; these are not searched by name.
    pub pids: BTreeMap<String, Vec<u32>>,
    /// Count only PostgreSQL backends of this database (and the server's own processes).
    pub pg_database: Option<String>,
    /// Clock ticks per second (`getconf CLK_TCK`).
    pub ticks_per_second: u64,
}

/// Every watched process, by group and pid, and the whole machine.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub groups: BTreeMap<String, HashMap<u32, Sample>>,
    /// Context switches so far of every thread of each group's processes, by thread id.
    pub switches: BTreeMap<String, HashMap<u32, u64>>,
    /// Busy and total ticks of all CPUs together (`/proc/stat`).
    pub machine: (u64, u64),
    /// This process's own CPU ticks.
    pub own_ticks: u64,
}

/// The whole machine over a run: how busy it was, and who else was busy. On a shared machine `others` says how
/// far the numbers can be trusted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MachineUsage {
    pub cpus: usize,
    /// Busy share of all CPUs together, percent.
    pub busy_pct: f64,
    pub loadgen_cpu_us: u64,
    /// Busy CPU time spent by neither the watched servers nor the load generator (other people's work, the
    /// kernel's interrupts, …).
    pub others_cpu_us: u64,
}

/// `(busy, total)` ticks from the first (`cpu`) line of `/proc/stat`: busy is everything but idle and iowait.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|t| t.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is inside user already.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// The machine's usage between two snapshots, given what the servers spent (µs).
pub fn machine(before: &Snapshot, after: &Snapshot, server_cpu_us: u64, ticks_per_second: u64) -> MachineUsage {
    let micros_per_tick = 1_000_000 / ticks_per_second.max(1);
    let busy = after.machine.0.saturating_sub(before.machine.0);
    let total = after.machine.1.saturating_sub(before.machine.1);
    let loadgen_cpu_us = after.own_ticks.saturating_sub(before.own_ticks) * micros_per_tick;
    MachineUsage {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        busy_pct: if total == 0 { 0.0 } else { (busy as f64 * 1000.0 / total as f64).round() / 10.0 },
        loadgen_cpu_us,
        others_cpu_us: (busy * micros_per_tick).saturating_sub(server_cpu_us + loadgen_cpu_us),
    }
}

/// A group's cost over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupUsage {
    pub processes: usize,
    /// CPU time spent between the two snapshots, in microseconds.
    pub cpu_us: u64,
    pub rss_kb_before: u64,
    pub rss_kb_after: u64,
    /// Context switches of the group's threads between the two snapshots.
    pub context_switches: u64,
}

impl Watch {
    pub fn new(pids: BTreeMap<String, Vec<u32>>, pg_database: Option<String>) -> Self {
        Self { pids, pg_database, ticks_per_second: clock_ticks() }
    }

    /// Reads every watched process now, with the context switches of each of their threads.
    pub fn snapshot(&self) -> Snapshot {
        self.read(true)
    }

    /// [`Watch::snapshot`] without the threads' context switches, a file per thread that the per-second sampler
    /// does not use.
    pub fn cpu_snapshot(&self) -> Snapshot {
        self.read(false)
    }

    fn read(&self, with_threads: bool) -> Snapshot {
        let mut snapshot = Snapshot {
            machine: fs::read_to_string("/proc/stat").ok().and_then(|s| parse_proc_stat(&s)).unwrap_or_default(),
            own_ticks: fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s)).map_or(0, |s| s.1),
            ..Snapshot::default()
        };
        for (group, _) in GROUPS {
            snapshot.groups.insert(group.to_owned(), HashMap::new());
        }
        for (group, pids) in &self.pids {
            let entry = snapshot.groups.entry(group.clone()).or_default();
            for &pid in pids {
                if let Some((_, sample)) = read_process(pid) {
                    entry.insert(pid, sample);
                    if with_threads {
                        snapshot.switches.entry(group.clone()).or_default().extend(thread_switches(pid));
                    }
                }
            }
        }
        let by_name: HashMap<&str, &str> =
            GROUPS.iter().filter(|(group, _)| !self.pids.contains_key(*group)).map(|(g, n)| (*n, *g)).collect();
        if by_name.is_empty() {
            return snapshot;
        }
        let Ok(entries) = fs::read_dir("/proc") else { return snapshot };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
            let Some((name, sample)) = read_process(pid) else { continue };
            let Some(group) = by_name.get(name.as_str()) else { continue };
            if *group == "postgres" && self.pg_database.is_some() {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if !postgres_process_counts(cmdline.trim_end(), self.pg_database.as_deref()) {
                    continue;
                }
            }
            snapshot.groups.entry((*group).to_owned()).or_default().insert(pid, sample);
            if with_threads {
                snapshot.switches.entry((*group).to_owned()).or_default().extend(thread_switches(pid));
            }
        }
        snapshot
    }
}

/// The usage of each group between `before` and `after`. A process that appeared meanwhile counts from zero; one
/// that vanished counts nothing (its time since `before` is unknown).
pub fn usage(before: &Snapshot, after: &Snapshot, ticks_per_second: u64) -> BTreeMap<String, GroupUsage> {
    let micros_per_tick = 1_000_000 / ticks_per_second.max(1);
    let mut usage = BTreeMap::new();
    for (group, now) in &after.groups {
        let empty = HashMap::new();
        let then = before.groups.get(group).unwrap_or(&empty);
        let ticks: u64 = now
            .iter()
            .map(|(pid, sample)| sample.cpu_ticks.saturating_sub(then.get(pid).map_or(0, |s| s.cpu_ticks)))
            .sum();
        let no_threads = HashMap::new();
        let threads_then = before.switches.get(group).unwrap_or(&no_threads);
        let switches: u64 = after.switches.get(group).map_or(0, |threads| {
            threads.iter().map(|(tid, &count)| count.saturating_sub(threads_then.get(tid).copied().unwrap_or(0))).sum()
        });
        usage.insert(
            group.clone(),
            GroupUsage {
                processes: now.len(),
                cpu_us: ticks * micros_per_tick,
                rss_kb_before: then.values().map(|s| s.rss_kb).sum(),
                rss_kb_after: now.values().map(|s| s.rss_kb).sum(),
                context_switches: switches,
            },
        );
    }
    usage
}

fn read_process(pid: u32) -> Option<(String, Sample)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (name, cpu_ticks) = parse_stat(&stat)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((name, Sample { cpu_ticks, rss_kb: parse_vm_rss(&status).unwrap_or(0) }))
}

/// The context switches so far of each thread of `pid`, by thread id (none when they cannot be read).
fn thread_switches(pid: u32) -> Vec<(u32, u64)> {
    let Ok(threads) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    threads
        .flatten()
        .filter_map(|thread| {
            let tid = thread.file_name().to_str()?.parse().ok()?;
            Some((tid, parse_switches(&fs::read_to_string(thread.path().join("status")).ok()?)?))
        })
        .collect()
}

/// This process's own resident memory, in kB.
pub fn own_rss_kb() -> u64 {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_vm_rss(&s)).unwrap_or(0)
}

/// `getconf CLK_TCK`, or 100 (every Linux platform's value) when it cannot be run.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "2960 (beam.smp) S 1 2960 2960 0 -1 4194624 81467 0 10 0 5874 2394 0 0 20 0 83 0 4233 \
                        2330685440 46435 18446744073709551615 1 1 0 0 0 0 0 4096 1073763839 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_gives_the_name_and_user_plus_system_ticks() {
        assert_eq!(parse_stat(STAT), Some(("beam.smp".to_owned(), 5874 + 2394)));
        let odd_name = "77 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 11 12 0 0 0 0";
        assert_eq!(parse_stat(odd_name), Some(("a (b) c".to_owned(), 23)));
        assert_eq!(parse_stat("1 (x) S 1 2"), None, "too short");
    }

    #[test]
    fn status_gives_the_resident_set() {
        let status = "Name:\tapi\nVmPeak:\t  123 kB\nVmRSS:\t   45678 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(45_678));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn only_the_runs_postgres_backends_count_besides_the_servers_own_processes() {
        let db = Some("warren_bench_1");
        assert!(postgres_process_counts("postgres: 15/main: postgres warren_bench_1 127.0.0.1(51234) idle", db));
        assert!(!postgres_process_counts("postgres: 15/main: postgres warren_test_x 127.0.0.1(5123) idle", db));
        assert!(!postgres_process_counts("postgres: 15/main: postgres other [local] SELECT", db));
        assert!(postgres_process_counts("postgres: 15/main: checkpointer", db));
        assert!(postgres_process_counts("postgres: 15/main: logical replication launcher", db));
        assert!(postgres_process_counts("postgres: 15/main: autovacuum worker warren_bench_1", db));
        assert!(!postgres_process_counts("postgres: 15/main: autovacuum worker warren", db));
        assert!(postgres_process_counts("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", db));
        assert!(postgres_process_counts("postgres: 15/main: postgres other 127.0.0.1(1) idle", None));
    }

    fn snapshot(entries: &[(&str, u32, u64, u64)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for &(group, pid, cpu_ticks, rss_kb) in entries {
            snapshot.groups.entry(group.to_owned()).or_default().insert(pid, Sample { cpu_ticks, rss_kb });
        }
        snapshot
    }

    #[test]
    fn usage_is_the_difference_per_group_in_microseconds() {
        let before = snapshot(&[("gateway", 1, 100, 10_000), ("postgres", 2, 50, 1_000), ("postgres", 3, 70, 1_000)]);
        let after = snapshot(&[
            ("gateway", 1, 350, 30_000),
            ("postgres", 2, 60, 1_000),
            // pid 3 exited; pid 4 started during the run
            ("postgres", 4, 5, 2_000),
        ]);
        let usage = usage(&before, &after, 100);
        assert_eq!(
            usage["gateway"],
            GroupUsage {
                processes: 1,
                cpu_us: 2_500_000,
                rss_kb_before: 10_000,
                rss_kb_after: 30_000,
                context_switches: 0
            }
        );
        assert_eq!(usage["postgres"].cpu_us, 150_000);
        assert_eq!(usage["postgres"].processes, 2);
    }

    #[test]
    fn switches_are_counted_thread_by_thread_so_a_thread_that_ends_loses_only_its_own() {
        let mut before = snapshot(&[("gateway", 1, 0, 0)]);
        before.switches.insert("gateway".to_owned(), HashMap::from([(1, 100), (2, 50), (3, 1_000)]));
        let mut after = snapshot(&[("gateway", 1, 0, 0)]);
        // Thread 3 (a blocking-pool thread, say) ended; thread 4 started.
        after.switches.insert("gateway".to_owned(), HashMap::from([(1, 130), (2, 55), (4, 7)]));
        assert_eq!(usage(&before, &after, 100)["gateway"].context_switches, 30 + 5 + 7);
    }

    #[test]
    fn the_machine_is_busy_except_when_idle_or_waiting() {
        let text = "cpu  100 5 45 800 50 0 0 0 0 0\ncpu0 50 2 20 400 25 0 0 0 0 0\nintr 1 2\n";
        assert_eq!(parse_proc_stat(text), Some((150, 1000)));
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        let before = Snapshot { machine: (1_000, 10_000), own_ticks: 10, ..Snapshot::default() };
        let after = Snapshot { machine: (1_500, 11_000), own_ticks: 110, ..Snapshot::default() };
        let usage = machine(&before, &after, 2_000_000, 100);
        assert_eq!(usage.busy_pct, 50.0);
        assert_eq!(usage.loadgen_cpu_us, 1_000_000);
        assert_eq!(usage.others_cpu_us, 2_000_000);
    }

    #[test]
    fn status_gives_a_threads_voluntary_and_involuntary_switches() {
        let status = "Name:\ttokio-runtime-w\nThreads:\t3\nvoluntary_ctxt_switches:\t1200\n\
                      nonvoluntary_ctxt_switches:\t34\n";
        assert_eq!(parse_switches(status), Some(1_234));
        assert_eq!(parse_switches("Name:\tx\nvoluntary_ctxt_switches:\t5\n"), None, "one of the two missing");
    }

    #[test]
    fn this_process_can_read_itself() {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&stat).is_some());
        assert!(own_rss_kb() > 0);
        // Every thread of this process: the test harness's main thread has at least waited for this one.
        let threads = std::thread::spawn(|| thread_switches(std::process::id())).join().unwrap();
        assert!(threads.len() >= 2 && threads.iter().map(|(_, n)| n).sum::<u64>() > 0, "{threads:?}");
    }
}
