//! The controllers against the real in-process API: Deployments, ReplicaSets and
//! ReplicationControllers as a user drives them with kubectl, with a fake kubelet marking pods
//! ready.

mod support;

use keel_controllers::deployment::{revision, REVISION};
use keel_controllers::pods;
use serde_json::{json, Value};
use support::{active_owned, wait_for, Cluster};

fn deployment(name: &str, replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "annotations": {"kubernetes.io/change-cause": "first"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    })
}

async fn replica_sets_of(c: &Cluster, d: &Value) -> Vec<Value> {
    let uid = pods::uid(d).to_string();
    c.list("apps", "replicasets", "default")
        .await
        .into_iter()
        .filter(|rs| pods::controller_uid(rs) == Some(uid.as_str()))
        .collect()
}

async fn active_pods_of(c: &Cluster, owner: &Value) -> Vec<Value> {
    let all = c.list("", "pods", "default").await;
    active_owned(&all, pods::uid(owner))
        .into_iter()
        .cloned()
        .collect()
}

fn condition_reason(d: &Value, kind: &str) -> Option<String> {
    d.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["reason"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_creates_replaces_scales_and_rolls() {
    let c = Cluster::start().await;
    c.run_controllers();
    c.run_fake_kubelet();
    let d = c
        .create("apps", "deployments", deployment("web", 3, "nginx:1.0"))
        .await;

    // A ReplicaSet with 3 pods, owned as controller; the rollout completes.
    let rs = wait_for(20, "one replica set with 3 ready pods", || async {
        let rss = replica_sets_of(&c, &d).await;
        let rs = rss.first()?.clone();
        (rss.len() == 1 && rs.pointer("/status/readyReplicas") == Some(&json!(3))).then_some(rs)
    })
    .await;
    assert_eq!(
        rs["metadata"]["name"],
        format!(
            "web-{}",
            rs["metadata"]["labels"]["pod-template-hash"]
                .as_str()
                .unwrap_or("?")
        )
    );
    assert_eq!(revision(&rs), 1);
    assert_eq!(
        rs["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "first"
    );
    let owned = active_pods_of(&c, &rs).await;
    assert_eq!(owned.len(), 3);
    for p in &owned {
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["controller"].clone(), owner["blockOwnerDeletion"].clone()),
            (json!(true), json!(true))
        );
        let name = pods::name(p);
        let suffix = name.strip_prefix(&format!("{}-", pods::name(&rs))).unwrap_or("");
        assert_eq!(suffix.len(), 5, "pod name {name}");
    }
    wait_for(20, "the deployment to report a complete rollout", || async {
        let d = c.get("apps", "deployments", "default", "web").await;
        let done = d.pointer("/status/availableReplicas") == Some(&json!(3))
            && d.pointer("/status/updatedReplicas") == Some(&json!(3))
            && d.pointer("/status/observedGeneration") == d.pointer("/metadata/generation")
            && condition_reason(&d, "Progressing").as_deref() == Some("NewReplicaSetAvailable")
            && condition_reason(&d, "Available").as_deref() == Some("MinimumReplicasAvailable")
            && d.pointer(&format!("/metadata/annotations/{}", REVISION.replace('/', "~1")))
                == Some(&json!("1"));
        done.then_some(())
    })
    .await;

    // A deleted pod is replaced.
    let victim = pods::name(&owned[0]).to_string();
    c.client
        .delete(
            support::rt("", "pods"),
            Some("default".into()),
            victim.clone(),
            Value::Null,
        )
        .await
        .expect("delete pod");
    wait_for(20, "the deleted pod to be replaced", || async {
        let now = active_pods_of(&c, &rs).await;
        (now.len() == 3 && now.iter().all(|p| pods::name(p) != victim)).then_some(())
    })
    .await;

    // Scale to 5 and back to 3.
    c.patch(
        "apps",
        "deployments",
        "default",
        "web",
        json!({"spec": {"replicas": 5}}),
    )
    .await;
    wait_for(20, "5 pods", || async {
        (active_pods_of(&c, &rs).await.len() == 5).then_some(())
    })
    .await;
    c.patch(
        "apps",
        "deployments",
        "default",
        "web",
        json!({"spec": {"replicas": 3}}),
    )
    .await;
    wait_for(20, "3 pods again", || async {
        (active_pods_of(&c, &rs).await.len() == 3).then_some(())
    })
    .await;

    // A new image rolls to a second ReplicaSet (revision 2); the first ends at 0.
    let first_uid = pods::uid(&rs).to_string();
    c.patch(
        "apps",
        "deployments",
        "default",
        "web",
        json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "second"}},
               "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2.0"}]}}}}),
    )
    .await;
    let (old, new) = wait_for(30, "the rollout to revision 2", || async {
        let rss = replica_sets_of(&c, &d).await;
        let new = rss.iter().find(|rs| revision(rs) == 2)?.clone();
        let old = rss.iter().find(|rs| pods::uid(rs) == first_uid)?.clone();
        let d = c.get("apps", "deployments", "default", "web").await;
        let done = new.pointer("/status/readyReplicas") == Some(&json!(3))
            && old.pointer("/spec/replicas") == Some(&json!(0))
            && old.pointer("/status/replicas") == Some(&json!(0))
            && d.pointer("/status/updatedReplicas") == Some(&json!(3))
            && d.pointer("/status/replicas") == Some(&json!(3))
            && condition_reason(&d, "Progressing").as_deref() == Some("NewReplicaSetAvailable");
        done.then_some((old, new))
    })
    .await;
    assert_eq!(
        new["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:2.0"
    );
    assert_eq!(
        new["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "second"
    );
    assert_eq!(revision(&old), 1);
    let d = c.get("apps", "deployments", "default", "web").await;
    assert_eq!(d["metadata"]["annotations"][REVISION], "2");

    // Undo: the old template comes back, the old ReplicaSet is reused as revision 3.
    let mut template = old["spec"]["template"].clone();
    if let Some(l) = template["metadata"]["labels"].as_object_mut() {
        l.remove("pod-template-hash");
    }
    c.patch(
        "apps",
        "deployments",
        "default",
        "web",
        json!({"spec": {"template": template}}),
    )
    .await;
    wait_for(30, "the undo to reuse the first replica set", || async {
        let old = c.get("apps", "replicasets", "default", pods::name(&old)).await;
        let new = c.get("apps", "replicasets", "default", pods::name(&new)).await;
        let done = revision(&old) == 3
            && old.pointer("/status/readyReplicas") == Some(&json!(3))
            && new.pointer("/spec/replicas") == Some(&json!(0));
        done.then_some(())
    })
    .await;
    assert_eq!(replica_sets_of(&c, &d).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controller_adopts_orphans_and_fills_up() {
    let c = Cluster::start().await;
    // An orphan that matches the selector exists before the controller.
    c.create(
        "",
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "stray", "namespace": "default", "labels": {"app": "db"}},
               "spec": {"containers": [{"name": "db", "image": "postgres"}]}}),
    )
    .await;
    c.run_controllers();
    let rc = c
        .create(
            "",
            "replicationcontrollers",
            json!({"apiVersion": "v1", "kind": "ReplicationController",
                   "metadata": {"name": "db", "namespace": "default"},
                   "spec": {"replicas": 2, "selector": {"app": "db"},
                            "template": {"metadata": {"labels": {"app": "db"}},
                                         "spec": {"containers": [{"name": "db", "image": "postgres"}]}}}}),
        )
        .await;
    let owned = wait_for(
        20,
        "2 pods of the controller, one of them the adopted orphan",
        || async {
            let owned = active_pods_of(&c, &rc).await;
            (owned.len() == 2).then_some(owned)
        },
    )
    .await;
    assert!(owned.iter().any(|p| pods::name(p) == "stray"));
    wait_for(20, "the status to count both", || async {
        let rc = c.get("", "replicationcontrollers", "default", "db").await;
        (rc.pointer("/status/replicas") == Some(&json!(2))
            && rc.pointer("/status/fullyLabeledReplicas") == Some(&json!(2))
            && rc.pointer("/status/observedGeneration") == Some(&json!(1)))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_ready_pods_of_a_service() {
    let c = Cluster::start().await;
    c.run_controllers();
    c.run_fake_kubelet();
    c.create(
        "",
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "api", "namespace": "default", "labels": {"team": "x"}},
               "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await;
    let mut d = deployment("api", 2, "nginx:1.0");
    d["metadata"]["annotations"] = json!({});
    c.create("apps", "deployments", d).await;
    let ep = wait_for(20, "2 ready addresses", || async {
        let ep = c
            .client
            .get(support::rt("", "endpoints"), Some("default".into()), "api".into())
            .await
            .ok()?;
        (ep.pointer("/subsets/0/addresses")
            .and_then(Value::as_array)?
            .len()
            == 2)
            .then_some(ep)
    })
    .await;
    assert_eq!(
        ep["subsets"][0]["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(ep["metadata"]["labels"]["team"], "x");
    assert_eq!(ep["subsets"][0]["addresses"][0]["targetRef"]["kind"], "Pod");

    // Scaled to 3: the new pod's address appears.
    c.patch(
        "apps",
        "deployments",
        "default",
        "api",
        json!({"spec": {"replicas": 3}}),
    )
    .await;
    wait_for(20, "3 addresses", || async {
        let ep = c
            .client
            .get(support::rt("", "endpoints"), Some("default".into()), "api".into())
            .await
            .ok()?;
        (ep.pointer("/subsets/0/addresses")
            .and_then(Value::as_array)?
            .len()
            == 3)
            .then_some(())
    })
    .await;

    // The Service goes, and its Endpoints with it.
    c.client
        .delete(
            support::rt("", "services"),
            Some("default".into()),
            "api".into(),
            Value::Null,
        )
        .await
        .expect("delete service");
    wait_for(20, "the endpoints deleted", || async {
        let r = c
            .client
            .get(support::rt("", "endpoints"), Some("default".into()), "api".into())
            .await;
        matches!(r, Err(e) if e.code == 404).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_completes_on_the_real_api() {
    let c = Cluster::start().await;
    c.run_controllers();
    let job = c
        .create(
            "batch",
            "jobs",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once", "namespace": "default"},
                   "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}),
        )
        .await;
    let mut pod = wait_for(20, "the job's pod", || async {
        active_pods_of(&c, &job).await.into_iter().next()
    })
    .await;
    assert_eq!(pod["metadata"]["labels"]["job-name"], "once");
    pod["status"]["phase"] = json!("Succeeded");
    c.client
        .update(
            support::rt("", "pods"),
            Some("default".into()),
            pod,
            Some("status".into()),
            keel_api::client::WriteOptions::default(),
        )
        .await
        .expect("pod status");
    let job = wait_for(20, "the job to complete", || async {
        let j = c.get("batch", "jobs", "default", "once").await;
        let complete = j["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Complete" && c["status"] == "True");
        complete.then_some(j)
    })
    .await;
    assert_eq!(job["status"]["succeeded"], 1);
}

async fn ready_node(c: &Cluster, name: &str, taints: Value) {
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {"taints": taints}});
    let mut node = c.create("", "nodes", node).await;
    node["status"] = json!({"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}]});
    c.client
        .update(
            support::rt("", "nodes"),
            None,
            node,
            Some("status".into()),
            keel_api::client::WriteOptions::default(),
        )
        .await
        .expect("node status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_eligible_node_and_rolls_updates() {
    let c = Cluster::start().await;
    ready_node(&c, "n1", json!([])).await;
    ready_node(&c, "n2", json!([])).await;
    ready_node(
        &c,
        "tainted",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    c.run_controllers();
    c.run_fake_kubelet();
    let ds = c
        .create(
            "apps",
            "daemonsets",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "default"},
                   "spec": {"selector": {"matchLabels": {"app": "agent"}},
                            "template": {"metadata": {"labels": {"app": "agent"}},
                                         "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}}),
        )
        .await;
    let pods_now = wait_for(20, "a pod for n1 and n2", || async {
        let p = active_pods_of(&c, &ds).await;
        let mut nodes: Vec<String> = p
            .iter()
            .filter_map(keel_controllers::daemonset::target_node)
            .collect();
        nodes.sort();
        (nodes == ["n1", "n2"]).then_some(p)
    })
    .await;
    assert!(pods_now
        .iter()
        .all(|p| p["metadata"]["labels"]["controller-revision-hash"].is_string()));
    wait_for(20, "the status", || async {
        let ds = c.get("apps", "daemonsets", "default", "agent").await;
        let s = &ds["status"];
        (s["desiredNumberScheduled"] == 2
            && s["currentNumberScheduled"] == 2
            && s["numberReady"] == 2
            && s["updatedNumberScheduled"] == 2)
            .then_some(())
    })
    .await;

    // A new image replaces the pods; two revisions are recorded.
    c.patch(
        "apps",
        "daemonsets",
        "default",
        "agent",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "agent:2"}]}}}}),
    )
    .await;
    wait_for(30, "both pods on the new image", || async {
        let p = active_pods_of(&c, &ds).await;
        (p.len() == 2
            && p.iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "agent:2" && pods::is_ready(p)))
        .then_some(())
    })
    .await;
    let revisions = c.list("apps", "controllerrevisions", "default").await;
    assert_eq!(revisions.len(), 2);
}

async fn bound_pod(c: &Cluster, name: &str, node: &str, tolerations: Value) -> Value {
    c.create(
        "",
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
               "spec": {"nodeName": node, "tolerations": tolerations, "containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await
}

/// Gone, or being deleted.
async fn evicted(c: &Cluster, name: &str) -> bool {
    match c
        .client
        .get(support::rt("", "pods"), Some("default".into()), name.into())
        .await
    {
        Err(e) => e.code == 404,
        Ok(p) => pods::is_terminating(&p),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_execute_taints_evict_and_deleted_nodes_lose_their_pods() {
    let c = Cluster::start().await;
    ready_node(&c, "n1", json!([])).await;
    ready_node(&c, "n2", json!([])).await;
    c.run_controllers();
    bound_pod(&c, "plain", "n1", json!([])).await;
    bound_pod(
        &c,
        "patient",
        "n1",
        json!([{"key": "maintenance", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]),
    )
    .await;
    bound_pod(&c, "stoic", "n1", json!([{"operator": "Exists"}])).await;

    // The node is tainted for maintenance (the API server's default tolerations cover only
    // not-ready and unreachable, for 300 s).
    let now = keel_api::time::now_rfc3339();
    c.patch(
        "",
        "nodes",
        "",
        "n1",
        json!({"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute", "timeAdded": now}]}}),
    )
    .await;
    wait_for(10, "the untolerating pod evicted", || async {
        evicted(&c, "plain").await.then_some(())
    })
    .await;
    assert!(!evicted(&c, "patient").await, "tolerated for 2s");
    wait_for(10, "the 2s toleration to run out", || async {
        evicted(&c, "patient").await.then_some(())
    })
    .await;
    assert!(!evicted(&c, "stoic").await, "tolerates everything");

    // A deleted node's pods go at once, graceful or not.
    bound_pod(&c, "on-n2", "n2", json!([])).await;
    c.client
        .delete(support::rt("", "nodes"), None, "n2".into(), Value::Null)
        .await
        .expect("delete node");
    wait_for(10, "the pod of the deleted node gone", || async {
        let r = c
            .client
            .get(support::rt("", "pods"), Some("default".into()), "on-n2".into())
            .await;
        matches!(r, Err(e) if e.code == 404).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_starts_the_missed_run_and_tracks_it() {
    let c = Cluster::start().await;
    c.run_controllers();
    let mut cj = c
        .create(
            "batch",
            "cronjobs",
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick", "namespace": "default"},
                   "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid",
                            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                                "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
        )
        .await;
    // Pretend the last run was two minutes ago: a run is due now.
    let two_minutes_ago =
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 120).expect("time");
    cj["status"] = json!({"lastScheduleTime": keel_api::time::format_rfc3339(two_minutes_ago)});
    let rt_cj = support::rt("batch", "cronjobs");
    for _ in 0..20 {
        let mut fresh = c.get("batch", "cronjobs", "default", "tick").await;
        fresh["status"] = cj["status"].clone();
        if c.client
            .update(
                rt_cj,
                Some("default".into()),
                fresh,
                Some("status".into()),
                keel_api::client::WriteOptions::default(),
            )
            .await
            .is_ok()
        {
            break;
        }
    }
    let job = wait_for(20, "the due job", || async {
        c.list("batch", "jobs", "default").await.into_iter().next()
    })
    .await;
    let minutes: i64 = job["metadata"]["name"]
        .as_str()
        .and_then(|n| n.strip_prefix("tick-"))
        .and_then(|m| m.parse().ok())
        .expect("job named tick-<minutes>");
    assert!(
        minutes * 60 > two_minutes_ago.as_second(),
        "the most recent missed time"
    );
    assert!(job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].is_string());
    wait_for(20, "the job listed as active", || async {
        let cj = c.get("batch", "cronjobs", "default", "tick").await;
        (cj["status"]["active"][0]["name"] == job["metadata"]["name"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_keeps_names_claims_and_order() {
    let c = Cluster::start().await;
    c.run_controllers();
    c.run_fake_kubelet();
    let sts = c
        .create(
            "apps",
            "statefulsets",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "default"},
                   "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                            "template": {"metadata": {"labels": {"app": "db"}},
                                         "spec": {"containers": [{"name": "db", "image": "postgres:1"}]}},
                            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        )
        .await;
    let pods_now = wait_for(30, "db-0, db-1, db-2 ready", || async {
        let mut p = active_pods_of(&c, &sts).await;
        p.sort_by_key(|p| pods::name(p).to_string());
        let names: Vec<&str> = p.iter().map(pods::name).collect();
        (names == ["db-0", "db-1", "db-2"] && p.iter().all(pods::is_ready)).then_some(p)
    })
    .await;
    // Ordered: each pod was created after the previous one.
    let created: Vec<String> = pods_now
        .iter()
        .map(|p| {
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]), "{created:?}");
    assert_eq!(pods_now[1]["spec"]["hostname"], "db-1");
    assert_eq!(pods_now[1]["spec"]["subdomain"], "db");
    assert_eq!(
        pods_now[1]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data-db-1"
    );
    let claims: Vec<String> = c
        .list("", "persistentvolumeclaims", "default")
        .await
        .iter()
        .map(|p| pods::name(p).to_string())
        .collect();
    for n in ["data-db-0", "data-db-1", "data-db-2"] {
        assert!(claims.iter().any(|c| c == n), "{claims:?}");
    }

    // A new image replaces the pods (highest first) until all run it.
    c.patch(
        "apps",
        "statefulsets",
        "default",
        "db",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "db", "image": "postgres:2"}]}}}}),
    )
    .await;
    wait_for(30, "every pod on the new image", || async {
        let p = active_pods_of(&c, &sts).await;
        (p.len() == 3
            && p.iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "postgres:2" && pods::is_ready(p)))
        .then_some(())
    })
    .await;
    wait_for(20, "the status", || async {
        let s = c.get("apps", "statefulsets", "default", "db").await;
        let st = &s["status"];
        (st["updatedReplicas"] == 3
            && st["readyReplicas"] == 3
            && st["currentRevision"] == st["updateRevision"])
            .then_some(())
    })
    .await;

    // Scale down removes the highest ordinals; the claims stay.
    c.patch(
        "apps",
        "statefulsets",
        "default",
        "db",
        json!({"spec": {"replicas": 1}}),
    )
    .await;
    wait_for(30, "only db-0 left", || async {
        let p = active_pods_of(&c, &sts).await;
        (p.len() == 1 && pods::name(&p[0]) == "db-0").then_some(())
    })
    .await;
    assert_eq!(c.list("", "persistentvolumeclaims", "default").await.len(), 3);
}
