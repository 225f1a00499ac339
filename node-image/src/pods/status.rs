//! The pod status as the kubelet reports it, computed from what the node knows — a pure
//! function, so that every rule is testable without running anything.
//!
//! * Container states: `waiting` (ContainerCreating, ErrImagePull, ImagePullBackOff,
//!   CrashLoopBackOff, CreateContainerConfigError, RunContainerError), `running`, `terminated`
//!   (Completed, Error, OOMKilled), with `lastState`, `restartCount`, `ready`, `started`,
//!   `image`, `imageID`, `containerID`.
//! * Phase by the kubelet's rules (`getPhase`): Pending while a container waits without ever
//!   having run, Running while one runs (or will be restarted), Succeeded/Failed when all have
//!   stopped for good.
//! * Conditions PodReadyToStartContainers, Initialized, ContainersReady, Ready and PodScheduled,
//!   each with a `lastTransitionTime` that moves only when its status does.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::spec::RestartPolicy;
use crate::runtime::logs::civil;

/// RFC 3339 in UTC with seconds, as Kubernetes writes times.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: SystemTime,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: SystemTime,
        finished_at: SystemTime,
        container_id: String,
    },
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> State {
        State::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = Map::new();
                w.insert("reason".into(), json!(reason));
                if let Some(m) = message {
                    w.insert("message".into(), json!(m));
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => json!({"running": {"startedAt": rfc3339(*started_at)}}),
            State::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
                container_id,
            } => {
                let mut t = Map::new();
                t.insert("exitCode".into(), json!(exit_code));
                t.insert("reason".into(), json!(reason));
                if let Some(m) = message {
                    t.insert("message".into(), json!(m));
                }
                t.insert("startedAt".into(), json!(rfc3339(*started_at)));
                t.insert("finishedAt".into(), json!(rfc3339(*finished_at)));
                if !container_id.is_empty() {
                    t.insert("containerID".into(), json!(container_id));
                }
                json!({"terminated": t})
            }
        }
    }
}

/// What the node knows about one container (also what the pod's record keeps of it across
/// agent restarts).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerView {
    pub name: String,
    /// The image as the pod names it, normalised (`docker.io/library/busybox:1.35`).
    pub image: String,
    pub image_id: String,
    pub container_id: String,
    pub state: State,
    pub last_state: Option<State>,
    pub restart_count: u32,
    /// The readiness probe's verdict; `None` when the container has none (ready = running).
    pub probe_ready: Option<bool>,
}

impl ContainerView {
    pub fn new(name: &str, image: &str) -> ContainerView {
        ContainerView {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            container_id: String::new(),
            state: State::waiting("ContainerCreating", None),
            last_state: None,
            restart_count: 0,
            probe_ready: None,
        }
    }

    pub fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    pub fn ready(&self) -> bool {
        self.running() && self.probe_ready.unwrap_or(true)
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "state": self.state.json(),
            "lastState": self.last_state.as_ref().map_or(json!({}), State::json),
            "ready": self.ready(),
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": self.image_id,
            "started": self.running(),
        });
        if !self.container_id.is_empty() {
            v["containerID"] = json!(self.container_id);
        }
        v
    }
}

/// The kubelet's phase rules over the regular containers.
pub fn phase(policy: RestartPolicy, containers: &[ContainerView]) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } => {
                if c.last_state.is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            RestartPolicy::Always => "Running",
            _ if stopped == succeeded => "Succeeded",
            RestartPolicy::Never => "Failed",
            RestartPolicy::OnFailure => "Running",
        }
    } else {
        "Pending"
    }
}

/// Each condition's last status and when it last changed.
#[derive(Clone, Debug, Default)]
pub struct Transitions(BTreeMap<&'static str, (bool, SystemTime)>);

impl Transitions {
    fn at(&mut self, kind: &'static str, status: bool, now: SystemTime) -> SystemTime {
        let e = self.0.entry(kind).or_insert((status, now));
        if e.0 != status {
            *e = (status, now);
        }
        e.1
    }
}

/// Everything the status is computed from.
pub struct PodView<'a> {
    pub policy: RestartPolicy,
    pub containers: &'a [ContainerView],
    pub init_containers: &'a [ContainerView],
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    pub start_time: Option<SystemTime>,
    pub sandbox_ready: bool,
    /// A failure of the whole pod (e.g. its JSON could not be understood): phase Failed.
    pub failure: Option<(&'a str, String)>,
}

/// The PodStatus JSON.
pub fn pod_status(v: &PodView<'_>, tr: &mut Transitions, now: SystemTime) -> Value {
    let init_failed = v.policy == RestartPolicy::Never
        && v.init_containers
            .iter()
            .any(|c| matches!(c.state, State::Terminated { exit_code, .. } if exit_code != 0));
    let uninitialized: Vec<&str> = v
        .init_containers
        .iter()
        .filter(|c| !matches!(c.state, State::Terminated { exit_code: 0, .. }))
        .map(|c| c.name.as_str())
        .collect();
    let phase = if v.failure.is_some() || init_failed {
        "Failed"
    } else if !uninitialized.is_empty() {
        "Pending"
    } else {
        phase(v.policy, v.containers)
    };
    let unready: Vec<&str> = v
        .containers
        .iter()
        .filter(|c| !c.ready())
        .map(|c| c.name.as_str())
        .collect();
    let all_ready = unready.is_empty() && !v.containers.is_empty();
    let completed = phase == "Succeeded" || phase == "Failed";
    let mut cond = |kind: &'static str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let mut c = json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "lastProbeTime": Value::Null,
            "lastTransitionTime": rfc3339(tr.at(kind, ok, now)),
        });
        if let (false, Some(r)) = (ok, reason) {
            c["reason"] = json!(r);
        }
        if let (false, Some(m)) = (ok, message) {
            c["message"] = json!(m);
        }
        c
    };
    let not_ready_msg = format!("containers with unready status: [{}]", unready.join(" "));
    let not_ready_reason = if completed {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let conditions = vec![
        cond("PodReadyToStartContainers", v.sandbox_ready, None, None),
        cond(
            "Initialized",
            uninitialized.is_empty(),
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                uninitialized.join(" ")
            )),
        ),
        cond(
            "Ready",
            all_ready,
            Some(not_ready_reason),
            (!completed).then(|| not_ready_msg.clone()),
        ),
        cond(
            "ContainersReady",
            all_ready,
            Some(not_ready_reason),
            (!completed).then_some(not_ready_msg),
        ),
        cond("PodScheduled", true, None, None),
    ];
    let mut s = json!({
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": v.containers.iter().map(ContainerView::json).collect::<Vec<_>>(),
    });
    if !v.init_containers.is_empty() {
        s["initContainerStatuses"] = json!(v
            .init_containers
            .iter()
            .map(ContainerView::json)
            .collect::<Vec<_>>());
    }
    if !v.host_ip.is_empty() {
        s["hostIP"] = json!(v.host_ip);
        s["hostIPs"] = json!([{"ip": v.host_ip}]);
    }
    if !v.pod_ip.is_empty() {
        s["podIP"] = json!(v.pod_ip);
        s["podIPs"] = json!([{"ip": v.pod_ip}]);
    }
    if let Some(t) = v.start_time {
        s["startTime"] = json!(rfc3339(t));
    }
    if let Some((reason, message)) = &v.failure {
        s["reason"] = json!(reason);
        s["message"] = json!(message);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn view(state: State, last: Option<State>) -> ContainerView {
        ContainerView {
            state,
            last_state: last,
            ..ContainerView::new("c", "docker.io/library/busybox:1.35")
        }
    }

    fn done(code: i32) -> State {
        State::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: t(1),
            finished_at: t(2),
            container_id: "keel://x".into(),
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(1_795_000_000)), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn phases_follow_the_kubelet() {
        use RestartPolicy::*;
        let running = view(State::Running { started_at: t(1) }, None);
        let creating = view(State::waiting("ContainerCreating", None), None);
        let backoff = view(State::waiting("CrashLoopBackOff", None), Some(done(1)));
        assert_eq!(phase(Always, std::slice::from_ref(&creating)), "Pending");
        assert_eq!(phase(Always, std::slice::from_ref(&running)), "Running");
        assert_eq!(phase(Always, &[running.clone(), creating]), "Pending");
        assert_eq!(phase(Always, std::slice::from_ref(&backoff)), "Running");
        assert_eq!(phase(Never, &[view(done(0), None)]), "Succeeded");
        assert_eq!(phase(Never, &[view(done(2), None)]), "Failed");
        assert_eq!(phase(OnFailure, &[view(done(0), None)]), "Succeeded");
        assert_eq!(phase(OnFailure, &[backoff]), "Running");
        assert_eq!(phase(Always, &[view(done(0), None)]), "Running");
        assert_eq!(phase(Never, &[running, view(done(0), None)]), "Running");
        assert_eq!(phase(Never, &[]), "Pending");
    }

    #[test]
    fn status_json_as_kubectl_reads_it() {
        let mut c = view(State::Running { started_at: t(10) }, None);
        c.image_id = "docker.io/library/busybox@sha256:ab".into();
        c.container_id = "keel://abc".into();
        let containers = [c];
        let v = PodView {
            policy: RestartPolicy::Always,
            containers: &containers,
            init_containers: &[],
            host_ip: "10.0.2.15",
            pod_ip: "10.0.2.15",
            start_time: Some(t(5)),
            sandbox_ready: true,
            failure: None,
        };
        let mut tr = Transitions::default();
        let s = pod_status(&v, &mut tr, t(20));
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.0.2.15");
        assert_eq!(s["hostIPs"][0]["ip"], "10.0.2.15");
        assert_eq!(s["startTime"], "1970-01-01T00:00:05Z");
        let cs = &s["containerStatuses"][0];
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["started"], true);
        assert_eq!(cs["restartCount"], 0);
        assert_eq!(cs["containerID"], "keel://abc");
        assert_eq!(cs["state"]["running"]["startedAt"], "1970-01-01T00:00:10Z");
        assert_eq!(cs["lastState"], json!({}));
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastTransitionTime"], "1970-01-01T00:00:20Z");

        // The container crashes: Ready goes False at the new time; Initialized keeps its time.
        let containers = [view(
            State::waiting("CrashLoopBackOff", Some("back-off 10s".into())),
            Some(done(1)),
        )];
        let v = PodView {
            containers: &containers,
            ..v
        };
        let s = pod_status(&v, &mut tr, t(30));
        let find = |k: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == k)
                .unwrap()
                .clone()
        };
        assert_eq!(find("Ready")["status"], "False");
        assert_eq!(find("Ready")["lastTransitionTime"], "1970-01-01T00:00:30Z");
        assert_eq!(find("Ready")["message"], "containers with unready status: [c]");
        assert_eq!(find("Initialized")["lastTransitionTime"], "1970-01-01T00:00:20Z");
        let cs = &s["containerStatuses"][0];
        assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(cs["ready"], false);
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let running_init = [view(State::Running { started_at: t(1) }, None)];
        let app = [view(State::waiting("PodInitializing", None), None)];
        let v = PodView {
            policy: RestartPolicy::Always,
            containers: &app,
            init_containers: &running_init,
            host_ip: "",
            pod_ip: "",
            start_time: None,
            sandbox_ready: true,
            failure: None,
        };
        let mut tr = Transitions::default();
        let s = pod_status(&v, &mut tr, t(1));
        assert_eq!(s["phase"], "Pending");
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["running"]["startedAt"],
            "1970-01-01T00:00:01Z"
        );
        let init = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Initialized")
            .unwrap()
            .clone();
        assert_eq!(
            (init["status"].as_str(), init["reason"].as_str()),
            (Some("False"), Some("ContainersNotInitialized"))
        );
        let done_init = [view(done(0), None)];
        let running = [view(State::Running { started_at: t(2) }, None)];
        let v2 = PodView {
            containers: &running,
            init_containers: &done_init,
            ..v
        };
        let s = pod_status(&v2, &mut tr, t(2));
        assert_eq!(s["phase"], "Running");
        let failed_init = [view(done(1), None)];
        let v3 = PodView {
            policy: RestartPolicy::Never,
            containers: &app,
            init_containers: &failed_init,
            ..v2
        };
        assert_eq!(pod_status(&v3, &mut tr, t(3))["phase"], "Failed");
    }

    #[test]
    fn completed_and_failed_pods() {
        let containers = [view(done(0), None)];
        let v = PodView {
            policy: RestartPolicy::Never,
            containers: &containers,
            init_containers: &[],
            host_ip: "",
            pod_ip: "",
            start_time: None,
            sandbox_ready: false,
            failure: None,
        };
        let s = pod_status(&v, &mut Transitions::default(), t(1));
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["reason"], "PodCompleted");
        assert!(s.get("podIP").is_none());
        let v = PodView {
            failure: Some(("Invalid", "bad".into())),
            ..v
        };
        let s = pod_status(&v, &mut Transitions::default(), t(1));
        assert_eq!(
            (s["phase"].as_str(), s["reason"].as_str()),
            (Some("Failed"), Some("Invalid"))
        );
    }
}
