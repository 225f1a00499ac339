//! The HPA controller's passes against the real in-process API, with usage from a fixed
//! metrics source: what it writes to the target, to the HPA's status (as `autoscaling/v2` and as
//! `autoscaling/v1` read it) and as events, and how it reports what it cannot do.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::client::{Patch, WriteOptions};
use keel_api::metrics::{ContainerUsage, MetricsSource, NodeUsage, PodUsage, Usage};
use keel_api::registry;
use keel_controllers::hpa::{self, Autoscaler};
use serde_json::{json, Value};
use support::Cluster;

/// Usage per pod uid, in millicores; what `metrics.k8s.io` would answer.
#[derive(Debug, Default)]
struct Fixed(Mutex<Vec<(String, String, u64)>>);

impl Fixed {
    fn set(&self, name: &str, uid: &str, millicores: u64) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|(n, _, _)| n != name);
            v.push((name.into(), uid.into(), millicores));
        }
    }
}

impl MetricsSource for Fixed {
    fn nodes(&self) -> Vec<NodeUsage> {
        Vec::new()
    }
    fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
        if namespace.is_some_and(|n| n != "default") {
            return Vec::new();
        }
        let now = jiff::Timestamp::now().as_millisecond();
        self.0
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(name, uid, m)| PodUsage {
                namespace: "default".into(),
                name,
                uid,
                timestamp_unix_millis: now,
                window_millis: 10_000,
                containers: vec![ContainerUsage {
                    name: "app".into(),
                    usage: Usage {
                        cpu_nanocores: m * 1_000_000,
                        memory_bytes: 1 << 20,
                    },
                }],
            })
            .collect()
    }
}

fn ago(secs: i64) -> String {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs);
    keel_api::time::format_rfc3339(t)
}

/// A Running pod of `web`, Ready for 9 minutes, requesting 100m.
async fn running_pod(c: &Cluster, name: &str) -> String {
    let pod = c
        .create(
            "",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "busybox",
                    "resources": {"requests": {"cpu": "100m"}}}]}}),
        )
        .await;
    let mut status = pod.clone();
    status["status"] = json!({"phase": "Running", "startTime": ago(600),
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(540)}]});
    c.client
        .update(
            support::rt("", "pods"),
            Some("default".into()),
            status,
            Some("status".into()),
            WriteOptions::default(),
        )
        .await
        .expect("pod status");
    pod["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}

fn hpas_v2() -> &'static keel_api::registry::ResourceType {
    registry::find("autoscaling", "v2", "horizontalpodautoscalers").expect("hpa v2")
}

async fn pass(a: &Arc<Autoscaler>, c: &Cluster, name: &str) -> Value {
    let hpa = c
        .client
        .get(hpas_v2(), Some("default".into()), name.into())
        .await
        .expect("hpa");
    hpa::reconcile(Arc::new(hpa), a.clone()).await.expect("reconcile");
    c.client
        .get(hpas_v2(), Some("default".into()), name.into())
        .await
        .expect("hpa")
}

fn condition<'a>(hpa: &'a Value, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = hpa["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition: {hpa}"));
    (
        c["status"].as_str().unwrap_or(""),
        c["reason"].as_str().unwrap_or(""),
        c["message"].as_str().unwrap_or(""),
    )
}

async fn event_messages(c: &Cluster, reason: &str) -> Vec<String> {
    // Events are recorded in the background.
    support::wait_for(10, &format!("a {reason} event"), || async {
        let msgs: Vec<String> = c
            .list("", "events", "default")
            .await
            .iter()
            .filter(|e| e["reason"] == reason)
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .collect();
        (!msgs.is_empty()).then_some(msgs)
    })
    .await
}

#[tokio::test]
async fn a_pass_scales_the_target_and_reports_why() {
    let c = Cluster::start().await;
    let source = Arc::new(Fixed::default());
    let a = Arc::new(
        Autoscaler::new(c.client.clone(), Some(source.clone()), Duration::from_secs(300))
            .expect("autoscaler"),
    );
    c.create(
        "apps",
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}}),
    )
    .await;
    let u1 = running_pod(&c, "web-1").await;
    let u2 = running_pod(&c, "web-2").await;
    source.set("web-1", &u1, 150);
    source.set("web-2", &u2, 150);
    // Created as autoscaling/v1, as `kubectl autoscale` may.
    let v1 = registry::find("autoscaling", "v1", "horizontalpodautoscalers").expect("hpa v1");
    c.client
        .create(
            v1,
            Some("default".into()),
            json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    "minReplicas": 1, "maxReplicas": 10, "targetCPUUtilizationPercentage": 50}}),
            WriteOptions::default(),
        )
        .await
        .expect("hpa");

    // 150% of the requests against 50%: 6 replicas wanted, at most doubling (4) in one step.
    let hpa = pass(&a, &c, "web").await;
    let deploy = c.get("apps", "deployments", "default", "web").await;
    assert_eq!(deploy["spec"]["replicas"], 4);
    assert_eq!(hpa["status"]["currentReplicas"], 2);
    assert_eq!(hpa["status"]["desiredReplicas"], 4);
    assert_eq!(
        hpa["status"]["currentMetrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu",
            "current": {"averageUtilization": 150, "averageValue": "150m"}}}])
    );
    assert!(hpa["status"]["lastScaleTime"].is_string());
    assert_eq!(
        condition(&hpa, "AbleToScale"),
        (
            "True",
            "SucceededRescale",
            "the HPA controller was able to update the target scale to 4"
        )
    );
    assert_eq!(
        condition(&hpa, "ScalingActive"),
        (
            "True",
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"
        )
    );
    assert_eq!(
        condition(&hpa, "ScalingLimited"),
        (
            "True",
            "ScaleUpLimit",
            "the desired replica count is increasing faster than the maximum scale rate"
        )
    );
    assert_eq!(
        event_messages(&c, "SuccessfulRescale").await,
        ["New size: 4; reason: cpu resource utilization (percentage of request) above target"]
    );
    // The v1 view of the same object.
    let as_v1 = c
        .client
        .get(v1, Some("default".into()), "web".into())
        .await
        .expect("v1");
    assert_eq!(as_v1["status"]["currentCPUUtilizationPercentage"], 150, "{as_v1}");
    assert_eq!(as_v1["status"]["desiredReplicas"], 4);

    // A second pass within the sync period does nothing.
    let again = pass(&a, &c, "web").await;
    assert_eq!(again["status"], hpa["status"]);

    // The usage drops to near zero, and the spec changes (a new generation is evaluated at once).
    source.set("web-1", &u1, 1);
    source.set("web-2", &u2, 1);
    c.client
        .patch(
            hpas_v2(),
            Some("default".into()),
            "web".into(),
            Patch::Merge(json!({"spec": {"minReplicas": 2}})),
            None,
            WriteOptions::default(),
        )
        .await
        .expect("patch");
    // As upstream: the highest recommendation of the window (the 6 of the first pass) still
    // holds, so the drop does not scale down; the rate limit that held it at 4 now allows 6.
    let hpa = pass(&a, &c, "web").await;
    assert_eq!(
        c.get("apps", "deployments", "default", "web").await["spec"]["replicas"],
        6
    );
    assert_eq!(condition(&hpa, "AbleToScale").1, "SucceededRescale");
    assert_eq!(hpa["status"]["currentReplicas"], 4);
    assert_eq!(hpa["status"]["desiredReplicas"], 6);
    assert_eq!(
        hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
        1
    );
}

#[tokio::test]
async fn what_cannot_be_done_is_reported() {
    let c = Cluster::start().await;
    let a = Arc::new(
        Autoscaler::new(
            c.client.clone(),
            Some(Arc::new(Fixed::default())),
            Duration::from_secs(300),
        )
        .expect("autoscaler"),
    );
    let hpa = |name: &str, target: &str| {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                "minReplicas": 1, "maxReplicas": 3,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}]}})
    };
    c.client
        .create(
            hpas_v2(),
            Some("default".into()),
            hpa("lost", "nothing"),
            WriteOptions::default(),
        )
        .await
        .expect("hpa");
    let lost = pass(&a, &c, "lost").await;
    let (status, reason, message) = condition(&lost, "AbleToScale");
    assert_eq!((status, reason), ("False", "FailedGetScale"));
    assert!(
        message.contains("deployments.apps \"nothing\" not found"),
        "{message}"
    );

    // A target whose pods have no metrics yet.
    c.create(
        "apps",
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}}),
    )
    .await;
    running_pod(&c, "web-1").await;
    c.client
        .create(
            hpas_v2(),
            Some("default".into()),
            hpa("blind", "web"),
            WriteOptions::default(),
        )
        .await
        .expect("hpa");
    let blind = pass(&a, &c, "blind").await;
    assert_eq!(
        condition(&blind, "ScalingActive"),
        (
            "False",
            "FailedGetResourceMetric",
            "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get \
             metrics for resource cpu: no metrics returned from resource metrics API"
        )
    );
    assert_eq!(
        c.get("apps", "deployments", "default", "web").await["spec"]["replicas"],
        1
    );
    assert_eq!(
        event_messages(&c, "FailedComputeMetricsReplicas").await,
        ["invalid metrics (1 invalid out of 1), first error is: failed to get cpu utilization: unable to get \
          metrics for resource cpu: no metrics returned from resource metrics API"]
    );
}
