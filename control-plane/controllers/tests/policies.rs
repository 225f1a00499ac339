//! Controller policies against the in-memory fake API: the invariants a rollout must keep
//! while it runs (maxSurge, maxUnavailable, Recreate's gap), which pods a scale-down removes,
//! and history cleanup.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use keel_api::client::{ApiClient, ListParams, Patch, WatchEventKind, WriteOptions};
use keel_controllers::deployment::revision;
use keel_controllers::pods;
use serde_json::{json, Value};
use support::fake::FakeApi;
use support::{rt, wait_for};
use tokio::sync::watch;

struct Fake {
    client: Arc<dyn ApiClient>,
    stop: watch::Sender<bool>,
}

impl Fake {
    fn start(kubelet: bool) -> Fake {
        let client: Arc<dyn ApiClient> = Arc::new(FakeApi::default());
        let (stop, _) = watch::channel(false);
        let mut rx = stop.subscribe();
        let c = client.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            keel_controllers::run_all(c, stopped).await.expect("controllers")
        });
        if kubelet {
            let c = client.clone();
            let mut rx = stop.subscribe();
            tokio::spawn(async move {
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => {}
                    _ = support::fake_kubelet(c) => {}
                }
            });
        }
        Fake { client, stop }
    }

    async fn create(&self, group: &str, plural: &str, obj: Value) -> Value {
        self.client
            .create(
                rt(group, plural),
                Some("default".into()),
                obj,
                WriteOptions::default(),
            )
            .await
            .expect("create")
    }

    async fn get(&self, group: &str, plural: &str, name: &str) -> Value {
        self.client
            .get(rt(group, plural), Some("default".into()), name.into())
            .await
            .expect("get")
    }

    async fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        let l = self
            .client
            .list(rt(group, plural), Some("default".into()), ListParams::default())
            .await
            .expect("list");
        l["items"].as_array().cloned().unwrap_or_default()
    }

    async fn merge(&self, group: &str, plural: &str, name: &str, patch: Value) {
        self.client
            .patch(
                rt(group, plural),
                Some("default".into()),
                name.into(),
                Patch::Merge(patch),
                None,
                WriteOptions::default(),
            )
            .await
            .expect("patch");
    }

    /// Waits until the deployment reports a finished rollout of `revision`.
    async fn rolled_out(&self, name: &str, replicas: i64, rev: &str) {
        wait_for(20, "the rollout to finish", || async {
            let d = self.get("apps", "deployments", name).await;
            let s = &d["status"];
            let done = s["updatedReplicas"] == replicas
                && s["availableReplicas"] == replicas
                && s["replicas"] == replicas
                && s["observedGeneration"] == d["metadata"]["generation"]
                && d["metadata"]["annotations"][keel_controllers::deployment::REVISION] == rev;
            done.then_some(())
        })
        .await;
    }

    /// Follows pods from now on, recording every state the rollout passes through.
    async fn observe_pods(&self) -> Arc<Mutex<Observed>> {
        let list = self
            .client
            .list(rt("", "pods"), Some("default".into()), ListParams::default())
            .await
            .expect("list");
        let mut start = Observed::default();
        for pod in list["items"].as_array().into_iter().flatten() {
            start.live.insert(
                pods::name(pod).to_string(),
                (
                    pod["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    pods::is_ready(pod),
                ),
            );
        }
        let observed = Arc::new(Mutex::new(start));
        let params = ListParams {
            resource_version: list["metadata"]["resourceVersion"].as_str().map(str::to_string),
            ..Default::default()
        };
        let mut stream = self
            .client
            .watch(rt("", "pods"), Some("default".into()), params)
            .await
            .expect("watch");
        let o = observed.clone();
        tokio::spawn(async move {
            while let Some(Ok(ev)) = stream.next().await {
                let mut o = o.lock().unwrap_or_else(|p| p.into_inner());
                o.record(ev.kind, &ev.object);
            }
        });
        observed
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Live pods by name with (image, ready), and the extremes seen.
#[derive(Default)]
struct Observed {
    live: HashMap<String, (String, bool)>,
    max_live: usize,
    min_ready: Option<usize>,
    /// Images that had live pods at the same time.
    overlapping_images: HashSet<(String, String)>,
}

impl Observed {
    fn record(&mut self, kind: WatchEventKind, pod: &Value) {
        let name = pods::name(pod).to_string();
        if kind == WatchEventKind::Deleted {
            self.live.remove(&name);
        } else {
            let image = pod["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string();
            self.live.insert(name, (image, pods::is_ready(pod)));
        }
        self.max_live = self.max_live.max(self.live.len());
        let ready = self.live.values().filter(|(_, r)| *r).count();
        self.min_ready = Some(self.min_ready.map_or(ready, |m| m.min(ready)));
        let images: HashSet<&String> = self.live.values().map(|(i, _)| i).collect();
        for a in &images {
            for b in &images {
                if a < b {
                    self.overlapping_images.insert(((*a).clone(), (*b).clone()));
                }
            }
        }
    }
}

fn deployment(name: &str, replicas: i64, image: &str, strategy: Value) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": image}]}},
        },
    })
}

fn set_image(image: &str) -> Value {
    json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_stays_within_max_surge_and_max_unavailable() {
    let f = Fake::start(true);
    let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    f.create("apps", "deployments", deployment("web", 4, "app:1", strategy))
        .await;
    f.rolled_out("web", 4, "1").await;
    let observed = f.observe_pods().await;
    f.merge("apps", "deployments", "web", set_image("app:2")).await;
    f.rolled_out("web", 4, "2").await;
    wait_for(20, "only new pods left", || async {
        let o = observed.lock().unwrap_or_else(|p| p.into_inner());
        (o.live.len() == 4 && o.live.values().all(|(i, r)| i == "app:2" && *r)).then_some(())
    })
    .await;
    let o = observed.lock().unwrap_or_else(|p| p.into_inner());
    assert!(o.max_live <= 5, "maxSurge 1 allows 5 pods, saw {}", o.max_live);
    assert_eq!(o.min_ready, Some(4), "maxUnavailable 0 keeps 4 ready pods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_removes_old_pods_before_creating_new_ones() {
    let f = Fake::start(true);
    f.create(
        "apps",
        "deployments",
        deployment("db", 3, "db:1", json!({"type": "Recreate"})),
    )
    .await;
    f.rolled_out("db", 3, "1").await;
    let observed = f.observe_pods().await;
    f.merge("apps", "deployments", "db", set_image("db:2")).await;
    f.rolled_out("db", 3, "2").await;
    let o = observed.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        o.overlapping_images.is_empty(),
        "old and new pods overlapped: {:?}",
        o.overlapping_images
    );
    assert!(o.max_live <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_removes_pods_that_are_not_ready_first() {
    let f = Fake::start(false);
    f.create(
        "apps",
        "replicasets",
        json!({"metadata": {"name": "rs"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "rs"}},
               "template": {"metadata": {"labels": {"app": "rs"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
    )
    .await;
    let created = wait_for(20, "3 pods", || async {
        let p = f.list("", "pods").await;
        (p.len() == 3).then_some(p)
    })
    .await;
    let mut ready = Vec::new();
    for mut pod in created.into_iter().take(2) {
        support::mark_ready(&mut pod);
        ready.push(pods::name(&pod).to_string());
        f.client
            .update(
                rt("", "pods"),
                Some("default".into()),
                pod,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await
            .expect("status");
    }
    wait_for(20, "the status to count 2 ready", || async {
        (f.get("apps", "replicasets", "rs").await["status"]["readyReplicas"] == 2).then_some(())
    })
    .await;
    f.merge("apps", "replicasets", "rs", json!({"spec": {"replicas": 2}}))
        .await;
    let left = wait_for(20, "2 pods", || async {
        let p = f.list("", "pods").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    let mut names: Vec<String> = left.iter().map(|p| pods::name(p).to_string()).collect();
    names.sort();
    ready.sort();
    assert_eq!(names, ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_beyond_the_limit_is_deleted_and_paused_deployments_do_not_roll() {
    let f = Fake::start(true);
    let mut d = deployment("app", 2, "v1", json!({"type": "RollingUpdate"}));
    d["spec"]["revisionHistoryLimit"] = json!(1);
    f.create("apps", "deployments", d).await;
    f.rolled_out("app", 2, "1").await;
    for (i, image) in ["v2", "v3"].iter().enumerate() {
        f.merge("apps", "deployments", "app", set_image(image)).await;
        f.rolled_out("app", 2, &(i + 2).to_string()).await;
    }
    let rss = wait_for(20, "one old replica set kept", || async {
        let rss = f.list("apps", "replicasets").await;
        (rss.len() == 2).then_some(rss)
    })
    .await;
    let mut revisions: Vec<i64> = rss.iter().map(revision).collect();
    revisions.sort();
    assert_eq!(revisions, [2, 3]);

    // Paused: a template change makes no new ReplicaSet; resuming rolls it out.
    f.merge("apps", "deployments", "app", json!({"spec": {"paused": true}}))
        .await;
    wait_for(20, "the paused condition", || async {
        let d = f.get("apps", "deployments", "app").await;
        let paused = d["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["reason"] == "DeploymentPaused");
        paused.then_some(())
    })
    .await;
    f.merge("apps", "deployments", "app", set_image("v4")).await;
    wait_for(20, "the paused deployment to observe its generation", || async {
        let d = f.get("apps", "deployments", "app").await;
        (d["status"]["observedGeneration"] == d["metadata"]["generation"]).then_some(())
    })
    .await;
    let images: Vec<Value> = f
        .list("apps", "replicasets")
        .await
        .iter()
        .map(|rs| rs["spec"]["template"]["spec"]["containers"][0]["image"].clone())
        .collect();
    assert!(
        !images.contains(&json!("v4")),
        "a paused deployment made a new replica set: {images:?}"
    );
    f.merge("apps", "deployments", "app", json!({"spec": {"paused": false}}))
        .await;
    f.rolled_out("app", 2, "4").await;
}

async fn finish_pods(f: &Fake, job_uid: &str, phase: &str) -> usize {
    let mut n = 0;
    for mut pod in f.list("", "pods").await {
        if pods::controller_uid(&pod) != Some(job_uid) || !pods::is_active(&pod) {
            continue;
        }
        pod["status"]["phase"] = json!(phase);
        f.client
            .update(
                rt("", "pods"),
                Some("default".into()),
                pod,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await
            .expect("status");
        n += 1;
    }
    n
}

fn job(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["template"] = json!({"metadata": {"labels": {"job": name}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}});
    json!({"metadata": {"name": name}, "spec": spec})
}

fn has_condition(obj: &Value, kind: &str, reason: &str) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True" && c["reason"] == reason)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_completions_within_parallelism() {
    let f = Fake::start(false);
    let j = f
        .create(
            "batch",
            "jobs",
            job("pi", json!({"completions": 3, "parallelism": 2})),
        )
        .await;
    let uid = pods::uid(&j).to_string();
    let mut done = 0;
    while done < 3 {
        let active = wait_for(20, "active pods", || async {
            let n = f
                .list("", "pods")
                .await
                .iter()
                .filter(|p| pods::controller_uid(p) == Some(uid.as_str()) && pods::is_active(p))
                .count();
            (n > 0).then_some(n)
        })
        .await;
        assert!(active <= 2, "parallelism 2, saw {active} active pods");
        assert!(done + active <= 3, "never more pods than completions left");
        done += finish_pods(&f, &uid, "Succeeded").await;
        wait_for(20, "the job to count them", || async {
            (f.get("batch", "jobs", "pi").await["status"]["succeeded"] == done as i64).then_some(())
        })
        .await;
    }
    let j = wait_for(20, "Complete", || async {
        let j = f.get("batch", "jobs", "pi").await;
        has_condition(&j, "Complete", "CompletionsReached").then_some(j)
    })
    .await;
    assert_eq!(j["status"]["succeeded"], 3);
    assert_eq!(j["status"]["active"], 0);
    assert!(j["status"]["completionTime"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_fails_after_the_backoff_limit() {
    let f = Fake::start(false);
    let j = f
        .create("batch", "jobs", job("flaky", json!({"backoffLimit": 1})))
        .await;
    let uid = pods::uid(&j).to_string();
    for _ in 0..2 {
        wait_for(20, "a pod to fail", || async {
            (finish_pods(&f, &uid, "Failed").await > 0).then_some(())
        })
        .await;
    }
    let j = wait_for(20, "Failed", || async {
        let j = f.get("batch", "jobs", "flaky").await;
        has_condition(&j, "Failed", "BackoffLimitExceeded").then_some(j)
    })
    .await;
    assert_eq!(j["status"]["failed"], 2);
    assert_eq!(j["status"]["active"], 0);
}
