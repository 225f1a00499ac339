//! `metrics.k8s.io/v1beta1`, served from the node usage the control plane keeps (a
//! [`MetricsSource`], wired by `keel-server` to the node gate), read-only, as metrics-server
//! answers it: `nodes` and `pods` (per namespace or across all), get and list, label selectors
//! and field selectors applied to the Nodes and Pods themselves, whose labels the metrics carry.
//! A node or pod without two usage samples yet is absent from lists and not found by name.

use std::collections::HashMap;

use keel_api::client::ListParams;
use keel_api::discovery::METRICS_RESOURCES;
use keel_api::metrics::{self, MetricsSource};
use keel_api::registry::{self, ResourceType};
use keel_api::status::{ApiError, ApiResult};
use serde_json::Value;

use crate::Objects;

/// A metrics answer: one object or the items of a list.
pub enum Answer {
    Object(&'static ResourceType, Value),
    List(&'static ResourceType, Vec<Value>),
}

fn metrics_rt(plural: &str) -> Option<&'static ResourceType> {
    METRICS_RESOURCES.iter().find(|r| r.plural == plural)
}

fn core(plural: &'static str) -> ApiResult<&'static ResourceType> {
    registry::find("", "v1", plural).ok_or_else(|| ApiError::internal(format!("no {plural} in the registry")))
}

/// Answers `GET /apis/metrics.k8s.io/v1beta1/[namespaces/{ns}/]{plural}[/{name}]`.
pub async fn get(
    objects: &Objects,
    source: &dyn MetricsSource,
    namespace: Option<&str>,
    plural: &str,
    name: Option<&str>,
    params: &ListParams,
) -> ApiResult<Answer> {
    let rt = metrics_rt(plural).ok_or_else(ApiError::no_such_path)?;
    let selectors = ListParams {
        label_selector: params.label_selector.clone(),
        field_selector: params.field_selector.clone(),
        ..ListParams::default()
    };
    match (plural, name) {
        ("nodes", _) if namespace.is_some() => Err(ApiError::no_such_path()),
        ("nodes", Some(n)) => {
            let node = objects
                .get(core("nodes")?, None, n)
                .await
                .map_err(|e| relabel(e, rt, n))?;
            let usage = source
                .nodes()
                .into_iter()
                .find(|u| u.name == n)
                .ok_or_else(|| ApiError::not_found(rt, n))?;
            Ok(Answer::Object(rt, metrics::node_metrics(&node, &usage)))
        }
        ("nodes", None) => {
            let nodes = objects.list(core("nodes")?, None, &selectors).await?.items;
            let usage: HashMap<String, _> = source.nodes().into_iter().map(|u| (u.name.clone(), u)).collect();
            let items = nodes
                .iter()
                .filter_map(|n| {
                    let u = usage.get(n.pointer("/metadata/name").and_then(Value::as_str)?)?;
                    Some(metrics::node_metrics(n, u))
                })
                .collect();
            Ok(Answer::List(rt, items))
        }
        ("pods", Some(n)) => {
            let ns = namespace.ok_or_else(ApiError::no_such_path)?;
            let pod = objects
                .get(core("pods")?, Some(ns), n)
                .await
                .map_err(|e| relabel(e, rt, n))?;
            let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
            let usage = source
                .pods(Some(ns))
                .into_iter()
                .find(|u| u.uid == uid && u.name == n)
                .ok_or_else(|| ApiError::not_found(rt, n))?;
            Ok(Answer::Object(rt, metrics::pod_metrics(&pod, &usage)))
        }
        ("pods", None) => {
            let pods = objects.list(core("pods")?, namespace, &selectors).await?.items;
            let usage: HashMap<String, _> = source
                .pods(namespace)
                .into_iter()
                .map(|u| (u.uid.clone(), u))
                .collect();
            let items = pods
                .iter()
                .filter_map(|p| {
                    let u = usage.get(p.pointer("/metadata/uid").and_then(Value::as_str)?)?;
                    Some(metrics::pod_metrics(p, u))
                })
                .collect();
            Ok(Answer::List(rt, items))
        }
        _ => Err(ApiError::no_such_path()),
    }
}

/// A missing Node or Pod is a missing NodeMetrics or PodMetrics.
fn relabel(e: ApiError, rt: &'static ResourceType, name: &str) -> ApiError {
    if e.code == 404 {
        ApiError::not_found(rt, name)
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keel_api::client::{ApiClient, WriteOptions};
    use keel_api::metrics::{ContainerUsage, NodeUsage, PodUsage, Usage};
    use serde_json::json;

    use super::*;
    use crate::client::InProcessClient;

    #[derive(Debug)]
    struct Fixed {
        nodes: Vec<NodeUsage>,
        pods: Vec<PodUsage>,
    }

    impl MetricsSource for Fixed {
        fn nodes(&self) -> Vec<NodeUsage> {
            self.nodes.clone()
        }
        fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
            self.pods
                .iter()
                .filter(|p| namespace.is_none_or(|ns| ns == p.namespace))
                .cloned()
                .collect()
        }
    }

    fn usage(cpu: u64) -> Usage {
        Usage {
            cpu_nanocores: cpu,
            memory_bytes: 1 << 20,
        }
    }

    fn items(a: Answer) -> Vec<Value> {
        match a {
            Answer::List(_, items) => items,
            Answer::Object(..) => panic!("a list was expected"),
        }
    }

    fn names(items: &[Value]) -> Vec<&str> {
        items
            .iter()
            .map(|i| i.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""))
            .collect()
    }

    #[tokio::test]
    async fn answers_join_usage_with_the_objects() {
        struct Dir(std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = Dir(std::env::temp_dir().join(format!("keel-metrics-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        let store = keel_store::embedded::EmbeddedStore::open(&dir.0, Default::default()).expect("store");
        let objects = Arc::new(Objects::new(Arc::new(store), Arc::new(crate::Config::default())));
        crate::bootstrap::ensure(&objects).await.expect("bootstrap");
        let client = InProcessClient::new(objects.clone());
        let w = WriteOptions::default;
        let (nodes, pods) = (core("nodes").expect("nodes"), core("pods").expect("pods"));
        for (n, zone) in [("n1", "a"), ("n2", "b"), ("n3", "a")] {
            client
                .create(
                    nodes,
                    None,
                    json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": n, "labels": {"zone": zone}}}),
                    w(),
                )
                .await
                .expect("node");
        }
        let mut uids = HashMap::new();
        for (p, app) in [("web", "web"), ("db", "db"), ("gone", "web")] {
            let pod = client
                .create(
                    pods,
                    Some("default".into()),
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": p, "labels": {"app": app}},
                           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
                    w(),
                )
                .await
                .expect("pod");
            uids.insert(p, pod["metadata"]["uid"].as_str().unwrap_or("").to_string());
        }
        let node = |name: &str| NodeUsage {
            name: name.into(),
            timestamp_unix_millis: 1_700_000_000_000,
            window_millis: 10_000,
            usage: usage(250_000_000),
        };
        let pod = |name: &str, uid: &str| PodUsage {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
            timestamp_unix_millis: 1_700_000_000_000,
            window_millis: 10_000,
            containers: vec![ContainerUsage {
                name: "c".into(),
                usage: usage(5_000_000),
            }],
        };
        // n2 has no usage yet; "gone" is known under another uid (a pod of the same name before).
        let source = Fixed {
            nodes: vec![node("n1"), node("n3"), node("deleted-node")],
            pods: vec![
                pod("web", &uids["web"]),
                pod("db", &uids["db"]),
                pod("gone", "old-uid"),
            ],
        };
        let all = ListParams::default();
        let sel = |l: &str| ListParams {
            label_selector: Some(l.into()),
            ..ListParams::default()
        };

        let list = items(
            get(&objects, &source, None, "nodes", None, &all)
                .await
                .expect("nodes"),
        );
        assert_eq!(names(&list), ["n1", "n3"]);
        assert_eq!(list[0]["kind"], "NodeMetrics");
        assert_eq!(list[0]["usage"]["cpu"], "250m");
        assert_eq!(list[0]["metadata"]["labels"]["zone"], "a");
        let list = items(
            get(&objects, &source, None, "nodes", None, &sel("zone=a"))
                .await
                .expect("nodes"),
        );
        assert_eq!(names(&list), ["n1", "n3"]);
        let field = ListParams {
            field_selector: Some("metadata.name=n3".into()),
            ..ListParams::default()
        };
        let list = items(
            get(&objects, &source, None, "nodes", None, &field)
                .await
                .expect("nodes"),
        );
        assert_eq!(names(&list), ["n3"]);
        match get(&objects, &source, None, "nodes", Some("n1"), &all).await {
            Ok(Answer::Object(rt, o)) => {
                assert_eq!(rt.kind, "NodeMetrics");
                assert_eq!(o["window"], "10s");
            }
            _ => panic!("n1"),
        }
        for missing in ["n2", "nope"] {
            let e = get(&objects, &source, None, "nodes", Some(missing), &all)
                .await
                .err()
                .expect("not found");
            assert_eq!(e.code, 404);
            assert_eq!(e.message, format!("nodes.metrics.k8s.io \"{missing}\" not found"));
        }

        let list = items(
            get(&objects, &source, Some("default"), "pods", None, &all)
                .await
                .expect("pods"),
        );
        assert_eq!(names(&list), ["db", "web"]);
        assert_eq!(
            list[1]["containers"][0],
            json!({"name": "c", "usage": {"cpu": "5m", "memory": "1Mi"}})
        );
        let list = items(
            get(&objects, &source, None, "pods", None, &sel("app=web"))
                .await
                .expect("pods"),
        );
        assert_eq!(names(&list), ["web"]);
        assert!(items(
            get(&objects, &source, Some("other"), "pods", None, &all)
                .await
                .expect("pods")
        )
        .is_empty());
        let e = get(&objects, &source, Some("default"), "pods", Some("gone"), &all)
            .await
            .err()
            .expect("not found");
        assert_eq!(e.message, "pods.metrics.k8s.io \"gone\" not found");
        assert!(get(&objects, &source, Some("default"), "nodes", None, &all)
            .await
            .is_err());
        assert!(get(&objects, &source, None, "deployments", None, &all)
            .await
            .is_err());
    }
}
