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
