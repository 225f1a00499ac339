//! One container's life inside a pod: pull its image, start it, wait for it, restart it with
//! back-off according to the pod's `restartPolicy`, and stop it gracefully when asked.
//!
//! Each container runs this loop in its own task and publishes its state (a
//! [`ContainerView`]) to the pod, which turns the views into the pod status. Back-offs double
//! from 10 s to 5 min as the kubelet's do: image pulls (`ErrImagePull` → `ImagePullBackOff`)
//! and restarts (`CrashLoopBackOff`); a container that ran 10 minutes starts over at 10 s.
//!
//! Hooks: `postStart` (exec, httpGet or sleep) runs once the container started and before it is
//! reported running; a failed one kills the container (`FailedPostStartHook`).
//!
//! Stopping: the `preStop` hook (within the grace period), SIGTERM to the container (through
//! its helper, which forwards it to the container's PID 1), then, once the grace period is over
//! (at least 2 s after a hook), SIGKILL to everything in its cgroup.
//!
//! After an agent restart a running container is adopted ([`Resume::Adopt`]): the same run,
//! waited for through a pidfd, its exit code read from the file its helper writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::probes::{self, ProbeEvent};
use super::record::RunRecord;
use super::spec::{self, Downward, Hook, RestartPolicy};
use super::status::{ContainerView, State};
use super::volumes;
use super::worker::PodCtx;
use crate::runtime::cgroup::Cgroups;
use crate::runtime::container::{self, ContainerConfig};
use crate::runtime::image::{Image, ImageError};
use crate::runtime::process::{Proc, ProcRef};
use crate::runtime::reference::Reference;

const BACKOFF_MIN: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// How long a postStart hook may take (the kubelet sets no limit; a hung hook holds the
/// container in ContainerCreating until then).
const POST_START_BUDGET: Duration = Duration::from_secs(600);
/// How often a running container's image is compared with the desired one.
const SPEC_CHECK: Duration = Duration::from_secs(1);

/// `None` while the pod should run; `Some(grace)` once its containers must stop.
pub type StopSignal = watch::Receiver<Option<Duration>>;

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(BACKOFF_MAX)
}

/// Waits for `d` or until stopping is asked; true if asked to stop.
pub(super) async fn sleep_or_stop(d: Duration, stop: &mut StopSignal) -> bool {
    if stop.borrow().is_some() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = stop.wait_for(Option::is_some) => { let _ = r; true }
    }
}

/// A human duration the way the kubelet writes back-offs (`10s`, `2m40s`).
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{}m{}s", s / 60, s % 60)
        }
    } else {
        format!("{s}s")
    }
}

/// What an earlier agent left of a container (see [`super::record`]).
#[derive(Debug)]
pub enum Resume {
    Fresh,
    /// It was running: adopt that run.
    Adopt(RunRecord),
    /// It had run and was not running (finished, or waiting to be restarted).
    Continue(Box<ContainerView>),
}

pub struct ContainerTask {
    pub ctx: Arc<PodCtx>,
    pub index: usize,
    /// An init container: runs to success once, restarted on failure unless the policy is Never.
    pub init: bool,
    pub stop: StopSignal,
}

impl ContainerTask {
    fn spec(&self) -> spec::Container {
        let pod = &self.ctx.desired().pod;
        let list = if self.init {
            &pod.spec.init_containers
        } else {
            &pod.spec.containers
        };
        list.get(self.index).cloned().unwrap_or_default()
    }

    fn publish(&self, f: impl FnOnce(&mut ContainerView)) {
        self.ctx.update_view(self.init, self.index, f);
    }

    async fn pull(&mut self, c: &spec::Container) -> Option<Image> {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = {
                // A pod stopped while its image is pulled (or waits to be) does not wait for it.
                let mut stop = self.stop.clone();
                let mut puller = tokio::select! {
                    p = self.ctx.shared.puller.lock() => p,
                    _ = stop.wait_for(Option::is_some) => return None,
                };
                let waited = started.elapsed();
                let needs_pull = match Reference::parse(&c.image) {
                    Ok(r) => {
                        puller.store.local(&r).is_none() || c.image_pull_policy.as_deref() == Some("Always")
                    }
                    Err(_) => false,
                };
                if needs_pull {
                    self.ctx
                        .event("Normal", "Pulling", format!("Pulling image \"{}\"", c.image));
                }
                let registries = self.ctx.shared.settings.registries.clone();
                let creds = spec::registry_credentials(&self.ctx.desired().pod);
                let r = tokio::select! {
                    r = puller.ensure(&c.image, c.image_pull_policy.as_deref(), &registries, creds) => r,
                    _ = stop.wait_for(Option::is_some) => return None,
                };
                (r, waited)
            };
            match result {
                (Ok((img, stats)), waited) => {
                    match stats {
                        Some(s) => {
                            let total = started.elapsed();
                            self.ctx.event(
                                "Normal",
                                "Pulled",
                                format!(
                                    "Successfully pulled image \"{}\" in {}ms ({}ms including waiting). Image size: {} bytes.",
                                    c.image,
                                    s.millis,
                                    total.as_millis(),
                                    s.bytes
                                ),
                            );
                            eprintln!(
                                "keel: pulled {} from {} in {} ms ({} bytes, {} layers fetched; waited {} ms)",
                                img.reference,
                                s.from,
                                s.millis,
                                s.bytes,
                                s.layers_fetched,
                                waited.as_millis()
                            );
                        }
                        None => self.ctx.event(
                            "Normal",
                            "Pulled",
                            format!("Container image \"{}\" already present on machine", c.image),
                        ),
                    }
                    return Some(img);
                }
                (Err(e), _) => {
                    let (reason, msg) = match &e {
                        ImageError::Reference(_) => ("InvalidImageName", e.to_string()),
                        ImageError::NeverPull(_) => ("ErrImageNeverPull", e.to_string()),
                        _ => (
                            "ErrImagePull",
                            format!("failed to pull image \"{}\": {e}", c.image),
                        ),
                    };
                    self.ctx.event(
                        "Warning",
                        "Failed",
                        format!("Failed to pull image \"{}\": {e}", c.image),
                    );
                    self.publish(|v| v.state = State::waiting(reason, Some(msg.clone())));
                    // Show the error a moment, then the back-off, as the kubelet does.
                    if sleep_or_stop(Duration::from_secs(2).min(backoff), &mut self.stop).await {
                        return None;
                    }
                    if reason == "ErrImagePull" {
                        let m = format!("Back-off pulling image \"{}\": {msg}", c.image);
                        self.publish(|v| v.state = State::waiting("ImagePullBackOff", Some(m.clone())));
                        self.ctx.event(
                            "Normal",
                            "BackOff",
                            format!("Back-off pulling image \"{}\"", c.image),
                        );
                    }
                    if sleep_or_stop(backoff, &mut self.stop).await {
                        return None;
                    }
                    backoff = next_backoff(backoff);
                }
            }
        }
    }

    /// The container's whole life. Returns when the pod stops it (or it finished for good and
    /// the pod then stops). `resume` is what an earlier agent left of it.
    pub async fn run(mut self, resume: Resume) {
        let mut crash_backoff = BACKOFF_MIN;
        let mut run_number: u32 = 0;
        let mut adopt = None;
        let mut no_backoff = false;
        match resume {
            Resume::Fresh => {}
            Resume::Adopt(r) => {
                run_number = r.run;
                adopt = Some(r);
            }
            Resume::Continue(view) => {
                // Not running when the agent stopped: finished for good, or between runs.
                if let State::Terminated { exit_code, .. } = view.state {
                    let policy = self.ctx.desired().pod.restart_policy();
                    let done = if self.init {
                        exit_code == 0 || policy == RestartPolicy::Never
                    } else {
                        !policy.restarts(exit_code)
                    };
                    if done {
                        if !self.init {
                            let _ = self.stop.wait_for(Option::is_some).await;
                        }
                        return;
                    }
                    self.publish(|v| v.last_state = Some(v.state.clone()));
                }
                if !view.container_id.is_empty() || matches!(view.state, State::Terminated { .. }) {
                    run_number = view.restart_count + 1;
                }
            }
        }
        loop {
            if self.stop.borrow().is_some() {
                return;
            }
            let (c, started_wall, started, mut proc, cgroup, id) = match adopt.take() {
                Some(r) => {
                    // The run an earlier agent started: wait for it as if it were ours.
                    let mut c = self.spec();
                    c.image = r.image.clone();
                    let exit_file = self
                        .ctx
                        .container_dir(&c.name, r.run)
                        .join("bundle")
                        .join(container::EXIT_FILE);
                    let proc = Proc::adopt(r.helper, Some(exit_file));
                    // One that died meanwhile restarts at once (the back-off died with the agent).
                    no_backoff = proc.pid().is_none();
                    let ran = SystemTime::now().duration_since(r.started_at).unwrap_or_default();
                    let started = Instant::now().checked_sub(ran).unwrap_or_else(Instant::now);
                    eprintln!(
                        "keel: pod {}: container {} (run {}) {}",
                        self.ctx.desired().pod.key(),
                        c.name,
                        r.run,
                        if proc.pid().is_some() {
                            "adopted"
                        } else {
                            "exited while the agent was away"
                        }
                    );
                    (c, r.started_at, started, proc, r.cgroup, r.container_id)
                }
                None => {
                    let c = self.spec();
                    let t_pull = Instant::now();
                    let Some(image) = self.pull(&c).await else {
                        return;
                    };
                    let pull_ms = t_pull.elapsed().as_millis();
                    let image_ref = Reference::parse(&c.image)
                        .map(|r| r.to_string())
                        .unwrap_or_else(|_| c.image.clone());
                    self.publish(|v| {
                        v.image = image_ref.clone();
                        v.image_id = image.repo_digest.clone();
                    });
                    let started_wall = SystemTime::now();
                    let started = Instant::now();
                    let (child, cgroup, id) = match self.start(&c, &image, run_number).await {
                        Ok(x) => x,
                        Err((reason, msg)) => {
                            self.ctx.event("Warning", "Failed", format!("Error: {msg}"));
                            self.publish(|v| v.state = State::waiting(reason, Some(msg.clone())));
                            if sleep_or_stop(crash_backoff, &mut self.stop).await {
                                return;
                            }
                            crash_backoff = next_backoff(crash_backoff);
                            continue;
                        }
                    };
                    if let Some(helper) = child.id().and_then(|p| ProcRef::of(p as i32)) {
                        self.ctx.set_run(
                            &c.name,
                            Some(RunRecord {
                                run: run_number,
                                helper,
                                image: c.image.clone(),
                                started_at: started_wall,
                                cgroup: cgroup.clone(),
                                container_id: id.clone(),
                            }),
                        );
                    }
                    self.ctx
                        .event("Normal", "Created", format!("Created container: {}", c.name));
                    self.ctx
                        .event("Normal", "Started", format!("Started container {}", c.name));
                    let mut proc = Proc::Child(child);
                    if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                        // The container counts as started once its postStart hook is done; a
                        // failed hook kills it (and the restart policy decides), as the kubelet does.
                        let pid_file = self
                            .ctx
                            .container_dir(&c.name, run_number)
                            .join("bundle")
                            .join(container::PID_FILE);
                        if let Err(e) = self.run_hook(hook, &pid_file, POST_START_BUDGET).await {
                            self.ctx.event(
                                "Warning",
                                "FailedPostStartHook",
                                format!("PostStartHook failed: {e}"),
                            );
                            let grace = Duration::from_secs(self.ctx.desired().pod.grace_seconds());
                            let code = self.kill(&c, run_number, &mut proc, &cgroup, grace).await;
                            self.finished(&c, code, &cgroup, &id, started_wall, run_number);
                            self.publish(|v| {
                                if let State::Terminated { reason, message, .. } = &mut v.state {
                                    *reason = "PostStartHookError".into();
                                    *message = Some(e.clone());
                                }
                            });
                            if self
                                .after_exit(&c, started, &mut crash_backoff, &mut no_backoff)
                                .await
                            {
                                return;
                            }
                            run_number += 1;
                            continue;
                        }
                    }
                    self.publish(|v| {
                        v.container_id = id.clone();
                        v.state = State::Running {
                            started_at: started_wall,
                        };
                        v.restart_count = run_number;
                        v.probe_ready = c.readiness_probe.as_ref().map(|_| false);
                    });
                    if run_number == 0 {
                        eprintln!(
                            "keel: pod {}: {} running {} ms after the pod arrived ({}; image {pull_ms} ms, container {} ms)",
                            self.ctx.desired().pod.key(),
                            c.name,
                            self.ctx.arrived.elapsed().as_millis(),
                            self.ctx.setup_timing(),
                            started.elapsed().as_millis()
                        );
                    }
                    (c, started_wall, started, proc, cgroup, id)
                }
            };
            let (probe_tx, mut probe_rx) = tokio::sync::mpsc::channel(4);
            let prober = tokio::spawn(probes::run(
                c.readiness_probe.clone(),
                c.liveness_probe.clone(),
                self.ctx.pod_ip(),
                c.ports.clone(),
                self.ctx
                    .container_dir(&c.name, run_number)
                    .join("bundle")
                    .join(container::PID_FILE),
                probe_tx,
            ));
            let mut stop = self.stop.clone();
            // The image is the one field of a running pod's containers that may change.
            let mut spec_check = tokio::time::interval(SPEC_CHECK);
            let outcome = loop {
                tokio::select! {
                    code = proc.wait() => break Outcome::Exited(code),
                    g = stop.wait_for(Option::is_some) => {
                        break Outcome::Stop(g.ok().and_then(|g| *g).unwrap_or_default())
                    }
                    _ = spec_check.tick() => {
                        if self.spec().image != c.image {
                            break Outcome::SpecChanged;
                        }
                    }
                    Some(ev) = probe_rx.recv() => match ev {
                        ProbeEvent::Ready(r) => self.publish(|v| v.probe_ready = Some(r)),
                        ProbeEvent::Unhealthy(msg) => {
                            self.ctx.event("Warning", "Unhealthy", format!("Liveness probe failed: {msg}"));
                            break Outcome::Unhealthy;
                        }
                    },
                }
            };
            prober.abort();
            match outcome {
                Outcome::Exited(code) => self.finished(&c, code, &cgroup, &id, started_wall, run_number),
                Outcome::Unhealthy => {
                    self.ctx.event(
                        "Normal",
                        "Killing",
                        format!("Container {} failed liveness probe, will be restarted", c.name),
                    );
                    let grace = Duration::from_secs(self.ctx.desired().pod.grace_seconds());
                    let code = self.kill(&c, run_number, &mut proc, &cgroup, grace).await;
                    self.finished(&c, code, &cgroup, &id, started_wall, run_number);
                }
                Outcome::SpecChanged => {
                    self.ctx.event(
                        "Normal",
                        "Killing",
                        format!("Container {} definition changed, will be restarted", c.name),
                    );
                    let grace = Duration::from_secs(self.ctx.desired().pod.grace_seconds());
                    let code = self.kill(&c, run_number, &mut proc, &cgroup, grace).await;
                    self.finished(&c, code, &cgroup, &id, started_wall, run_number);
                    self.publish(|v| v.last_state = Some(v.state.clone()));
                    run_number += 1;
                    continue;
                }
                Outcome::Stop(grace) => {
                    self.ctx
                        .event("Normal", "Killing", format!("Stopping container {}", c.name));
                    let code = self.kill(&c, run_number, &mut proc, &cgroup, grace).await;
                    self.finished(&c, code, &cgroup, &id, started_wall, run_number);
                    return;
                }
            }
            if self
                .after_exit(&c, started, &mut crash_backoff, &mut no_backoff)
                .await
            {
                return;
            }
            run_number += 1;
        }
    }

    /// After a run ended: whether the container is done for good (true: return from `run`,
    /// having waited for the pod to stop when that is the worker's job) or, after the back-off,
    /// runs again (false).
    async fn after_exit(
        &mut self,
        c: &spec::Container,
        started: Instant,
        crash_backoff: &mut Duration,
        no_backoff: &mut bool,
    ) -> bool {
        let code = match self.ctx.view(self.init, self.index).map(|v| v.state) {
            Some(State::Terminated { exit_code, .. }) => exit_code,
            _ => 0,
        };
        let policy = self.ctx.desired().pod.restart_policy();
        if self.init && (code == 0 || policy == RestartPolicy::Never) {
            // The pod worker goes on (or fails the pod) from here.
            return true;
        }
        if !self.init && !policy.restarts(code) {
            // Done for good: wait for the pod to stop.
            let _ = self.stop.wait_for(Option::is_some).await;
            return true;
        }
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            *crash_backoff = BACKOFF_MIN;
        }
        let pod = &self.ctx.desired().pod;
        let msg = format!(
            "back-off {} restarting failed container={} pod={}_{}({})",
            human(*crash_backoff),
            c.name,
            pod.metadata.name,
            pod.metadata.namespace,
            pod.metadata.uid
        );
        self.publish(|v| {
            v.last_state = Some(v.state.clone());
            v.state = State::waiting("CrashLoopBackOff", Some(msg.clone()));
        });
        self.ctx.event(
            "Warning",
            "BackOff",
            format!(
                "Back-off restarting failed container {} in pod {}_{}({})",
                c.name, pod.metadata.name, pod.metadata.namespace, pod.metadata.uid
            ),
        );
        if !std::mem::take(no_backoff) && sleep_or_stop(*crash_backoff, &mut self.stop).await {
            return true;
        }
        *crash_backoff = next_backoff(*crash_backoff);
        false
    }

    /// Runs a postStart or preStop hook in (or against) the running container, within `budget`.
    async fn run_hook(&self, hook: &Hook, pid_file: &Path, budget: Duration) -> Result<(), String> {
        if let Some(sleep) = &hook.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds).min(budget)).await;
            return Ok(());
        }
        if hook.exec.is_some() {
            // The helper writes the container's pid as it forks it.
            let deadline = Instant::now() + Duration::from_secs(10).min(budget);
            let started = || std::fs::read_to_string(pid_file).is_ok_and(|p| p.trim().parse::<i32>().is_ok());
            while !started() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let c = self.spec();
        let probe = probes::Probe {
            exec: hook.exec.clone(),
            http_get: hook.http_get.clone(),
            timeout_seconds: Some(budget.as_secs().max(1)),
            ..Default::default()
        };
        probes::check(&probe, &self.ctx.pod_ip(), &c.ports, pid_file).await
    }

    /// Stops a run: its preStop hook (within the grace period), SIGTERM, and SIGKILL to its
    /// whole cgroup once the grace period is over (at least 2 s after the hook, as the kubelet
    /// gives). Returns the exit code.
    async fn kill(
        &self,
        c: &spec::Container,
        run: u32,
        proc: &mut Proc,
        cgroup: &Path,
        grace: Duration,
    ) -> i32 {
        let began = Instant::now();
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
            let pid_file = self
                .ctx
                .container_dir(&c.name, run)
                .join("bundle")
                .join(container::PID_FILE);
            let hook_run = self.run_hook(hook, &pid_file, grace);
            tokio::select! {
                r = hook_run => if let Err(e) = r {
                    self.ctx.event("Warning", "FailedPreStopHook", format!("PreStopHook failed: {e}"));
                },
                _ = tokio::time::sleep(grace) => {}
                // A container that exits during its hook is done.
                code = proc.wait() => return code,
            }
        }
        let rest = grace.saturating_sub(began.elapsed());
        let rest = if c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()) {
            rest.max(Duration::from_secs(2))
        } else {
            rest
        };
        stop_process(proc, cgroup, rest).await
    }

    fn finished(
        &self,
        c: &spec::Container,
        code: i32,
        cgroup: &PathBuf,
        id: &str,
        started: SystemTime,
        run: u32,
    ) {
        let reason = if Cgroups::oom_killed(cgroup) {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        self.publish(|v| {
            v.state = State::Terminated {
                exit_code: code,
                reason: reason.to_string(),
                message: None,
                started_at: started,
                finished_at: SystemTime::now(),
                container_id: id.to_string(),
            };
        });
        self.ctx.set_run(&c.name, None);
        let _ = std::fs::remove_dir(cgroup);
        let _ = std::fs::remove_dir_all(self.ctx.container_dir(&c.name, run));
    }

    /// Prepares and starts one run of the container.
    async fn start(
        &self,
        c: &spec::Container,
        image: &Image,
        run: u32,
    ) -> Result<(tokio::process::Child, PathBuf, String), (&'static str, String)> {
        let desired = self.ctx.desired();
        let pod = &desired.pod;
        let settings = &self.ctx.shared.settings;
        let facts = Downward {
            pod_ip: self.ctx.pod_ip(),
            host_ip: settings.host_ip.clone(),
            node_name: settings.node_name.clone(),
        };
        let env = spec::environment(pod, c, &image.config, &desired.resolved, &facts)
            .map_err(|m| ("CreateContainerConfigError", m))?;
        let mut args = spec::command_line(c, &image.config);
        let defined: Vec<(String, String)> = env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        for a in args.iter_mut() {
            *a = spec::expand(a, &defined);
        }
        if args.is_empty() {
            return Err(("CreateContainerConfigError", "no command specified".to_string()));
        }
        let mounts =
            volumes::prepare(pod, c, self.ctx.pod_dir()).map_err(|m| ("CreateContainerConfigError", m))?;
        let (uid, gid) = spec::user(pod, c, &image.config);
        let cgroup = self
            .ctx
            .shared
            .cgroups
            .create(&pod.metadata.uid, &c.name, &spec::limits(c))
            .map_err(|e| ("RunContainerError", format!("cgroup: {e}")))?;
        // Never two of one container: leftovers of a run nobody recorded (an agent killed
        // between starting it and recording it) go first.
        if Cgroups::populated(&cgroup) {
            eprintln!(
                "keel: pod {}: container {}: killing unrecorded processes",
                pod.key(),
                c.name
            );
            let _ = Cgroups::kill(&cgroup);
            for _ in 0..100 {
                if !Cgroups::populated(&cgroup) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let dir = self.ctx.container_dir(&c.name, run);
        let _ = std::fs::remove_dir_all(&dir);
        let cwd = c
            .working_dir
            .clone()
            .or_else(|| image.config.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        let cfg = ContainerConfig {
            layers: image.layers.clone(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            rootfs: dir.join("rootfs"),
            args,
            env,
            cwd,
            uid,
            gid,
            cgroup: Some(cgroup.clone()),
            sandbox_pid: self.ctx.sandbox_pid(),
            join_net: self.ctx.sandbox_netns(),
            etc_files: self.ctx.etc_files(),
            mounts,
        };
        let log = self.ctx.log_path(&c.name, run);
        let child = container::spawn(&cfg, &dir.join("bundle"), &log)
            .map_err(|e| ("RunContainerError", e.to_string()))?;
        let id = format!(
            "keel://{}",
            hex::encode(Sha256::digest(format!(
                "{}/{}/{run}/{:?}",
                pod.metadata.uid,
                c.name,
                SystemTime::now()
            )))
        );
        Ok((child, cgroup, id))
    }
}

enum Outcome {
    Exited(i32),
    Stop(Duration),
    Unhealthy,
    SpecChanged,
}

/// SIGTERM, then SIGKILL to the whole cgroup after `grace`. Returns the exit code.
async fn stop_process(proc: &mut Proc, cgroup: &Path, grace: Duration) -> i32 {
    proc.signal(libc::SIGTERM);
    if let Ok(code) = tokio::time::timeout(grace, proc.wait()).await {
        return code;
    }
    let _ = Cgroups::kill(cgroup);
    proc.signal(libc::SIGKILL);
    proc.wait().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let mut d = BACKOFF_MIN;
        let mut seen = vec![];
        for _ in 0..7 {
            seen.push(human(d));
            d = next_backoff(d);
        }
        assert_eq!(seen, ["10s", "20s", "40s", "1m20s", "2m40s", "5m", "5m"]);
    }
}
