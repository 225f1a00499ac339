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

/// After a reboot (no record survives, `/var` is a tmpfs): the pod's containers as the control
/// plane last heard of them from this node, so restart counts go on. A container that was
/// running is gone: it becomes terminated `ContainerStatusUnknown` (exit code 137), and the
/// restart policy decides. Init containers run again (the pod gets a new sandbox). `None` when
/// the status names no container that ran.
pub fn from_api_status(status: &serde_json::Value, names: &[String], now: SystemTime) -> Option<PodRecord> {
    let list = status.get("containerStatuses")?.as_array()?;
    let mut views = Vec::new();
    let mut any = false;
    for name in names {
        let s = list.iter().find(|c| c["name"].as_str() == Some(name.as_str()));
        let Some(s) = s else {
            views.push(ContainerView::new(name, ""));
            continue;
        };
        let mut v = ContainerView::new(name, s["image"].as_str().unwrap_or_default());
        v.image_id = s["imageID"].as_str().unwrap_or_default().to_string();
        v.container_id = s["containerID"].as_str().unwrap_or_default().to_string();
        v.restart_count = s["restartCount"].as_u64().unwrap_or(0) as u32;
        v.last_state = state_of(&s["lastState"], now);
        if let Some(st) = state_of(&s["state"], now) {
            v.state = match st {
                State::Running { started_at } => State::Terminated {
                    exit_code: 137,
                    reason: LOST_REASON.into(),
                    message: Some(LOST_MESSAGE.into()),
                    started_at,
                    finished_at: now,
                    container_id: v.container_id.clone(),
                },
                other => other,
            };
        }
        any |= !v.container_id.is_empty();
        views.push(v);
    }
    any.then(|| PodRecord {
        start_time: status["startTime"].as_str().and_then(parse_rfc3339),
        views,
        ..Default::default()
    })
}

/// A container state from its API JSON (`{"running": {...}}` and so on).
fn state_of(v: &serde_json::Value, now: SystemTime) -> Option<State> {
    let time = |x: &serde_json::Value| x.as_str().and_then(parse_rfc3339).unwrap_or(now);
    let text = |x: &serde_json::Value| x.as_str().map(str::to_string);
    if let Some(w) = v.get("waiting") {
        return Some(State::Waiting {
            reason: w["reason"].as_str().unwrap_or_default().to_string(),
            message: text(&w["message"]),
        });
    }
    if let Some(r) = v.get("running") {
        return Some(State::Running {
            started_at: time(&r["startedAt"]),
        });
    }
    let t = v.get("terminated")?;
    Some(State::Terminated {
        exit_code: t["exitCode"].as_i64().unwrap_or(0) as i32,
        reason: t["reason"].as_str().unwrap_or_default().to_string(),
        message: text(&t["message"]),
        started_at: time(&t["startedAt"]),
        finished_at: time(&t["finishedAt"]),
        container_id: t["containerID"].as_str().unwrap_or_default().to_string(),
    })
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
    fn after_a_reboot_restart_counts_go_on_from_the_api_status() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
        let status = serde_json::json!({
            "startTime": "2026-11-23T16:00:00Z",
            "containerStatuses": [
                {"name": "a", "restartCount": 2, "containerID": "keel://1", "image": "i", "imageID": "d",
                 "state": {"running": {"startedAt": "2026-11-23T16:00:05Z"}}, "lastState": {}},
                {"name": "b", "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]
        });
        let names = ["a".to_string(), "b".to_string()];
        let r = from_api_status(&status, &names, now).unwrap();
        assert_eq!(r.start_time, parse_rfc3339("2026-11-23T16:00:00Z"));
        assert_eq!(r.views[0].restart_count, 2);
        assert_eq!(r.views[0].container_id, "keel://1");
        let State::Terminated {
            exit_code,
            reason,
            started_at,
            ..
        } = &r.views[0].state
        else {
            panic!("{:?}", r.views[0].state)
        };
        assert_eq!((*exit_code, reason.as_str()), (137, "ContainerStatusUnknown"));
        assert_eq!(Some(*started_at), parse_rfc3339("2026-11-23T16:00:05Z"));
        assert_eq!(r.views[1].container_id, "");
        assert!(from_api_status(
            &serde_json::json!({"containerStatuses": [{"name": "b"}]}),
            &names,
            now
        )
        .is_none());
        assert!(from_api_status(&serde_json::json!({}), &names, now).is_none());
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
