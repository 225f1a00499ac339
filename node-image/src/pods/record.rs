//! A pod's record on the node: what its worker must know to take the pod over again after an
//! agent restart — the sandbox and each running container's helper (pid and start time), the
//! container views (states, restart counts, ids), the pod IP and start time.
//!
//! The worker rewrites it (`<pods dir>/<uid>/record.json`, written whole and renamed into place)
//! whenever any of that changes; the manager reads every record when the agent starts. The pods
//! directory is under `/var` (a tmpfs), so records live as long as the boot; the boot id in each
//! record makes sure nothing recorded in another boot is taken for a live process.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::spec::KeelStatus;
use super::status::{ContainerView, State};
use crate::runtime::process::ProcRef;

pub const FILE: &str = "record.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodRecord {
    pub boot_id: String,
    pub uid: String,
    pub start_time: Option<SystemTime>,
    pub pod_ip: String,
    pub sandbox: Option<SandboxRecord>,
    pub views: Vec<ContainerView>,
    pub init_views: Vec<ContainerView>,
    /// The running containers, by name.
    pub runs: BTreeMap<String, RunRecord>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub proc: ProcRef,
    pub netns: bool,
}

/// One running container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run number (the restart count of this run).
    pub run: u32,
    /// The `keel-node container` helper, the container's parent.
    pub helper: ProcRef,
    /// The image as the pod spec named it when this run started.
    pub image: String,
    pub started_at: SystemTime,
    pub cgroup: PathBuf,
    pub container_id: String,
}

/// What the kubelet reports for a container that was running and is gone without a trace.
const LOST_REASON: &str = "ContainerStatusUnknown";
const LOST_MESSAGE: &str = "The container could not be located when the pod was terminated";

/// After a reboot (no record survives, `/var` is a tmpfs), for a pod created before this boot:
/// its containers as the control plane last heard of them from this node (`keelStatus`), so
/// restart counts go on. Each container ran and is gone: it becomes terminated
/// `ContainerStatusUnknown` (exit code 137) and the restart policy decides — except in a pod that
/// had finished (`phase` Succeeded or Failed), whose containers stay finished. Init containers
/// run again (the pod gets a new sandbox).
pub fn after_reboot(
    status: &KeelStatus,
    names: &[String],
    start_time: Option<SystemTime>,
    now: SystemTime,
) -> PodRecord {
    let views = names
        .iter()
        .map(|name| {
            let mut v = ContainerView::new(name, "");
            v.restart_count = status.restarts.get(name).copied().unwrap_or(0);
            let (exit_code, reason, message) = match status.phase.as_deref() {
                Some("Succeeded") => (0, "Completed", None),
                Some("Failed") => (1, "Error", None),
                _ => (137, LOST_REASON, Some(LOST_MESSAGE.to_string())),
            };
            v.state = State::Terminated {
                exit_code,
                reason: reason.into(),
                message,
                started_at: start_time.unwrap_or(now),
                finished_at: now,
                container_id: String::new(),
            };
            v
        })
        .collect();
    PodRecord {
        start_time,
        views,
        ..Default::default()
    }
}

/// When this boot began.
pub fn boot_time(now: SystemTime) -> SystemTime {
    let up = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()))
        .unwrap_or(0.0);
    now.checked_sub(std::time::Duration::from_secs_f64(up))
        .unwrap_or(now)
}

/// `2026-11-23T16:00:00Z` (what the node writes; fractions and offsets are not read).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

/// Writes the record into the pod's directory.
pub fn save(pod_dir: &Path, r: &PodRecord) -> io::Result<()> {
    let json = serde_json::to_vec(r).map_err(io::Error::other)?;
    let tmp = pod_dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, pod_dir.join(FILE))
}

/// Every readable record under `pods_dir` written in the boot `boot_id`, by pod uid.
pub fn load_all(pods_dir: &Path, boot_id: &str) -> BTreeMap<String, PodRecord> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path().join(FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        match serde_json::from_slice::<PodRecord>(&bytes) {
            Ok(r) if r.boot_id == boot_id && !r.uid.is_empty() => {
                out.insert(r.uid.clone(), r);
            }
            Ok(_) => {}
            Err(e) => eprintln!("keel: pod record {}: {e}", path.display()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_reboot_restart_counts_go_on_and_finished_pods_stay_finished() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
        let names = ["a".to_string(), "b".to_string()];
        let mut ks = KeelStatus::default();
        ks.restarts.insert("a".into(), 2);
        let r = after_reboot(&ks, &names, parse_rfc3339("2026-11-23T16:00:00Z"), now);
        assert_eq!(r.start_time, parse_rfc3339("2026-11-23T16:00:00Z"));
        assert_eq!((r.views[0].restart_count, r.views[1].restart_count), (2, 0));
        let State::Terminated {
            exit_code, reason, ..
        } = &r.views[0].state
        else {
            panic!("{:?}", r.views[0].state)
        };
        assert_eq!((*exit_code, reason.as_str()), (137, "ContainerStatusUnknown"));
        ks.phase = Some("Succeeded".into());
        let r = after_reboot(&ks, &names, None, now);
        assert!(matches!(r.views[1].state, State::Terminated { exit_code: 0, .. }));
    }

    #[test]
    fn rfc3339_times_parse() {
        let t = |s| parse_rfc3339(s).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(t("2026-11-23T16:00:00Z"), Some(1_795_449_600));
        assert_eq!(t("garbage"), None);
        assert_eq!(t("2026-13-23T16:00:00Z"), None);
    }

    #[test]
    fn records_round_trip_and_other_boots_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = PodRecord {
            boot_id: "b1".into(),
            uid: "u1".into(),
            pod_ip: "10.244.0.5".into(),
            views: vec![ContainerView::new("main", "docker.io/library/busybox:1.35")],
            ..Default::default()
        };
        r.runs.insert(
            "main".into(),
            RunRecord {
                run: 2,
                helper: ProcRef { pid: 42, start: 7 },
                image: "busybox:1.35".into(),
                started_at: SystemTime::UNIX_EPOCH,
                cgroup: "/sys/fs/cgroup/kubepods/u1/main".into(),
                container_id: "keel://x".into(),
            },
        );
        for (uid, boot) in [("u1", "b1"), ("u2", "b0")] {
            let d = dir.path().join(uid);
            std::fs::create_dir_all(&d).unwrap();
            save(
                &d,
                &PodRecord {
                    uid: uid.into(),
                    boot_id: boot.into(),
                    ..r.clone()
                },
            )
            .unwrap();
        }
        std::fs::create_dir_all(dir.path().join("u3")).unwrap();
        std::fs::write(dir.path().join("u3").join(FILE), "{not json").unwrap();
        let all = load_all(dir.path(), "b1");
        assert_eq!(all.keys().collect::<Vec<_>>(), ["u1"]);
        let back = &all["u1"];
        assert_eq!(back.runs["main"].run, 2);
        assert_eq!(back.runs["main"].helper, ProcRef { pid: 42, start: 7 });
        assert_eq!(back.views, r.views);
        assert_eq!(back.pod_ip, "10.244.0.5");
    }
}
