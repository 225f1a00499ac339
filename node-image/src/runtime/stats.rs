//! Resource usage as the kernel counts it, read the way the kubelet (through cAdvisor) reads it:
//!
//! * node CPU: `/proc/stat`'s first line, every state but idle and iowait (user, nice, system,
//!   irq, softirq, steal; guest time is already inside user), in `USER_HZ` ticks;
//! * node memory working set: `MemTotal - MemAvailable` of `/proc/meminfo`;
//! * container CPU: `usage_usec` of the cgroup's `cpu.stat`;
//! * container memory working set: `memory.current` minus `inactive_file` of `memory.stat`;
//! * the time of a sample: `/proc/uptime` (boot time clock, also across agent restarts).
//!
//! All counters are cumulative; the control plane computes rates between two samples.

use std::fs;
use std::path::Path;

/// `USER_HZ`: Linux reports `/proc/stat` in hundredths of a second on every architecture.
const USER_HZ: u64 = 100;

/// Cumulative non-idle CPU time of the node, nanoseconds, from the text of `/proc/stat`.
pub fn node_cpu_nanos(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(busy * (1_000_000_000 / USER_HZ))
}

/// `MemTotal - MemAvailable`, bytes, from the text of `/proc/meminfo`.
pub fn node_memory_working_set(meminfo: &str) -> Option<u64> {
    let kb = |key: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(kb("MemTotal")?.saturating_sub(kb("MemAvailable")?) * 1024)
}

/// Milliseconds since boot from the text of `/proc/uptime`.
pub fn uptime_millis(uptime: &str) -> Option<u64> {
    let first = uptime.split_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, "0"));
    let secs: u64 = secs.parse().ok()?;
    let frac = format!("{frac:0<3}");
    let millis: u64 = frac.get(..3)?.parse().ok()?;
    Some(secs * 1000 + millis)
}

fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse::<u64>().ok())?
    })
}

/// A container cgroup's cumulative CPU (nanoseconds) and memory working set (bytes); `None` if
/// the cgroup is gone.
pub fn cgroup_usage(dir: &Path) -> Option<(u64, u64)> {
    let cpu = fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let cpu_nanos = flat_key(&cpu, "usage_usec")?.saturating_mul(1000);
    let current: u64 = fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let inactive_file = fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .and_then(|t| flat_key(&t, "inactive_file"))
        .unwrap_or(0);
    Some((cpu_nanos, current.saturating_sub(inactive_file)))
}

/// The node's own counters: `(monotonic millis, cpu nanos, memory working set)`.
pub fn node_usage() -> Option<(u64, u64, u64)> {
    let now = uptime_millis(&fs::read_to_string("/proc/uptime").ok()?)?;
    let cpu = node_cpu_nanos(&fs::read_to_string("/proc/stat").ok()?)?;
    let mem = node_memory_working_set(&fs::read_to_string("/proc/meminfo").ok()?)?;
    Some((now, cpu, mem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1 2\n";
        // 100+5+50+3+2+1 = 161 ticks = 1.61 s
        assert_eq!(node_cpu_nanos(stat), Some(1_610_000_000));
        assert_eq!(node_cpu_nanos("cpu0 1 2 3\n"), None);
        assert_eq!(node_cpu_nanos("cpu  1 x 3\n"), None);

        let meminfo =
            "MemTotal:        2000000 kB\nMemFree:          100000 kB\nMemAvailable:    1500000 kB\n";
        assert_eq!(node_memory_working_set(meminfo), Some(500_000 * 1024));
        assert_eq!(node_memory_working_set("MemTotal: 1 kB\n"), None);

        assert_eq!(uptime_millis("12345.67 2000.00\n"), Some(12_345_670));
        assert_eq!(uptime_millis("7 1\n"), Some(7_000));
        assert_eq!(uptime_millis("x\n"), None);
    }

    #[test]
    fn cgroup_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(cgroup_usage(dir.path()), None);
        fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        )
        .expect("write");
        fs::write(dir.path().join("memory.current"), "1048576\n").expect("write");
        fs::write(
            dir.path().join("memory.stat"),
            "anon 4096\nfile 8192\nactive_file 4096\ninactive_file 262144\n",
        )
        .expect("write");
        assert_eq!(cgroup_usage(dir.path()), Some((2_500_000, 1_048_576 - 262_144)));
    }
}
