//! The Kubernetes API as a Rust program sees it: kube-rs (`kube::Client`, typed `Api<K>`), an
//! independent client that shares no code with Keel, against a real `keel-server`.
//!
//! Each test starts its own server (fresh data directory) and asserts what the same calls return
//! on a real Kubernetes 1.32 cluster: object contents and defaults, every patch type, watch event
//! order, list pagination, optimistic concurrency, error statuses and discovery.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use kube::discovery::{Discovery, Scope};
use kube::{Client, Config};
use serde_json::json;

/// A kube client from the server's admin kubeconfig, as `kube::Config::infer` would build it.
async fn client(s: &Server) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(s.kubeconfig()).expect("read admin.kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config from admin.kubeconfig");
    Client::try_from(config).expect("kube client")
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".to_string(), "kube-rs".to_string())])),
            ..Default::default()
        },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    }
}

fn data(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.data.clone().unwrap_or_default()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `Status` of a failed call; panics (with what came back) if the call did not fail that way.
fn api_status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<Status> {
    match r {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected a Kubernetes API error (Status), got {other:?}"),
    }
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "nginx",
                    "image": "nginx:1.25",
                    "ports": [{"containerPort": 80}],
                }]},
            },
        },
    }))
    .expect("deployment manifest")
}

#[tokio::test]
async fn config_maps_create_get_list_replace_delete() {
    let s = Server::start();
    let c = client(&s).await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.clone());

    let created = api
        .create(
            &PostParams::default(),
            &config_map("settings", &[("mode", "fast")]),
        )
        .await
        .expect("create");
    let meta = &created.metadata;
    assert_eq!(meta.name.as_deref(), Some("settings"));
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert!(meta.uid.as_deref().is_some_and(|u| !u.is_empty()), "{meta:?}");
    assert!(meta.creation_timestamp.is_some(), "{meta:?}");
    let rv1 = meta.resource_version.clone().expect("resourceVersion");

    let got = api.get("settings").await.expect("get");
    assert_eq!(data(&got), map(&[("mode", "fast")]));
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(got.metadata.resource_version.as_deref(), Some(rv1.as_str()));

    api.create(&PostParams::default(), &config_map("other", &[]))
        .await
        .expect("create other");
    let listed = api
        .list(&ListParams::default().labels("app=kube-rs"))
        .await
        .expect("list");
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, vec!["other", "settings"], "sorted by name");
    let list_rv: u64 = listed
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("numeric list resourceVersion");
    assert!(list_rv >= rv1.parse::<u64>().expect("numeric resourceVersion"));

    let mut changed = got.clone();
    changed.data = Some(map(&[("mode", "safe"), ("level", "3")]));
    let replaced = api
        .replace("settings", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(data(&replaced), map(&[("level", "3"), ("mode", "safe")]));
    assert_ne!(replaced.metadata.resource_version.as_deref(), Some(rv1.as_str()));

    let deleted = api
        .delete("settings", &DeleteParams::default())
        .await
        .expect("delete");
    // Upstream answers a ConfigMap delete with a success Status naming the object.
    let status = deleted
        .right()
        .expect("a Status for an immediately deleted ConfigMap");
    assert!(status.is_success(), "{status:?}");
    assert_eq!(
        status.details.as_ref().map(|d| d.name.as_str()),
        Some("settings"),
        "{status:?}"
    );
    let gone = api_status(api.get("settings").await);
    assert_eq!(gone.code, 404, "{gone:?}");
    assert_eq!(gone.reason, "NotFound", "{gone:?}");
    assert!(api.get_opt("settings").await.expect("get_opt").is_none());
}

#[tokio::test]
async fn config_maps_merge_json_strategic_and_apply_patches() {
    let s = Server::start();
    let c = client(&s).await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.clone());
    api.create(
        &PostParams::default(),
        &config_map("p", &[("a", "1"), ("b", "2")]),
    )
    .await
    .expect("create");

    // JSON merge patch: null deletes a key.
    let merged = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": null, "c": "3"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(data(&merged), map(&[("a", "1"), ("c", "3")]));

    // JSON patch (RFC 6902), including a `test` operation that guards it.
    let ops = serde_json::from_value(json!([
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "replace", "path": "/data/a", "value": "10"},
        {"op": "add", "path": "/data/d", "value": "4"},
        {"op": "remove", "path": "/data/c"},
    ]))
    .expect("json patch");
    let patched = api
        .patch("p", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .expect("json patch");
    assert_eq!(data(&patched), map(&[("a", "10"), ("d", "4")]));

    // A failing `test` operation leaves the object alone and is a 422 Invalid.
    let failing = serde_json::from_value(json!([
        {"op": "test", "path": "/data/a", "value": "not-it"},
        {"op": "replace", "path": "/data/a", "value": "11"},
    ]))
    .expect("json patch");
    let err = api_status(
        api.patch("p", &PatchParams::default(), &Patch::Json::<()>(failing))
            .await,
    );
    assert_eq!(err.code, 422, "{err:?}");
    assert_eq!(
        data(&api.get("p").await.expect("get")),
        map(&[("a", "10"), ("d", "4")])
    );

    // Strategic merge patch: on a plain map it merges like a merge patch.
    let strategic = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"tier": "web"}}, "data": {"e": "5"}})),
        )
        .await
        .expect("strategic merge patch");
    assert_eq!(data(&strategic), map(&[("a", "10"), ("d", "4"), ("e", "5")]));
    let labels = strategic.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels, map(&[("app", "kube-rs"), ("tier", "web")]));

    // Server-side apply: creates when absent, records the field manager.
    let applied = api
        .patch(
            "applied",
            &PatchParams::apply("kube-client-test"),
            &Patch::Apply(config_map("applied", &[("owner", "test")])),
        )
        .await
        .expect("apply creates");
    assert_eq!(data(&applied), map(&[("owner", "test")]));
    let managers: Vec<_> = applied
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert!(
        managers.contains(&(Some("kube-client-test".into()), Some("Apply".into()))),
        "managedFields: {managers:?}"
    );
    // Applying again with a changed value updates it.
    let reapplied = api
        .patch(
            "applied",
            &PatchParams::apply("kube-client-test"),
            &Patch::Apply(config_map("applied", &[("owner", "test"), ("extra", "x")])),
        )
        .await
        .expect("apply again");
    assert_eq!(data(&reapplied), map(&[("extra", "x"), ("owner", "test")]));
    // Another manager setting the same field to another value conflicts unless it forces.
    let conflict = api_status(
        api.patch(
            "applied",
            &PatchParams::apply("other-manager"),
            &Patch::Apply(config_map("applied", &[("owner", "someone-else")])),
        )
        .await,
    );
    assert_eq!(conflict.code, 409, "{conflict:?}");
    assert_eq!(conflict.reason, "Conflict", "{conflict:?}");
    assert!(conflict.message.contains("kube-client-test"), "{conflict:?}");
    let forced = api
        .patch(
            "applied",
            &PatchParams::apply("other-manager").force(),
            &Patch::Apply(config_map("applied", &[("owner", "someone-else")])),
        )
        .await
        .expect("forced apply");
    assert_eq!(
        data(&forced).get("owner").map(String::as_str),
        Some("someone-else")
    );
}

#[tokio::test]
async fn deployments_with_defaults_and_every_patch_type() {
    let s = Server::start();
    let c = client(&s).await;
    namespace(&c, "apps").await;
    let api: Api<Deployment> = Api::namespaced(c.clone(), "apps");

    let created = api
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .expect("create deployment");
    assert_eq!(created.metadata.generation, Some(1));
    let spec = created.spec.clone().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    // The defaults upstream's apps/v1 defaulting fills in.
    let strategy = spec.strategy.clone().expect("strategy defaulted");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    let pod = spec.template.spec.clone().expect("pod spec");
    assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(
        pod.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(
        pod.containers[0].termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    let ports = pod.containers[0].ports.clone().unwrap_or_default();
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));

    let got = api.get("web").await.expect("get");
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let listed = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);

    // Strategic merge patch merges containers by name: the image changes, the ports stay.
    let image = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.26"}
            ]}}}})),
        )
        .await
        .expect("strategic merge patch");
    let containers = image
        .spec
        .clone()
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].image.as_deref(), Some("nginx:1.26"));
    assert_eq!(
        containers[0].ports.as_ref().map(|p| p[0].container_port),
        Some(80),
        "strategic merge must keep the ports of the merged container"
    );
    assert_eq!(
        image.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );

    // ... and a second container with another name is added beside it.
    let sidecar = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "image": "busybox:1.36"}
            ]}}}})),
        )
        .await
        .expect("strategic merge patch adding a container");
    let names: Vec<_> = sidecar
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"nginx".to_string()) && names.contains(&"sidecar".to_string()));

    // JSON merge patch replaces lists wholesale.
    let merged = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "only", "image": "nginx:1.27"}
            ]}}}})),
        )
        .await
        .expect("merge patch");
    let containers = merged.spec.expect("spec").template.spec.expect("pod").containers;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].name, "only");

    // JSON patch.
    let ops = serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]))
        .expect("json patch");
    let scaled = api
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .expect("json patch");
    assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(4));

    // Server-side apply: one manager owns replicas; another conflicts on them unless forced.
    let applied = api
        .patch(
            "api",
            &PatchParams::apply("ci"),
            &Patch::Apply(deployment("api", 2)),
        )
        .await
        .expect("apply creates a deployment");
    assert_eq!(applied.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let scale = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api"}, "spec": {"replicas": 5},
    });
    let conflict = api_status(
        api.patch("api", &PatchParams::apply("autoscaler"), &Patch::Apply(&scale))
            .await,
    );
    assert_eq!(conflict.code, 409, "{conflict:?}");
    assert_eq!(conflict.reason, "Conflict", "{conflict:?}");
    assert!(conflict.message.contains(".spec.replicas"), "{conflict:?}");
    let forced = api
        .patch(
            "api",
            &PatchParams::apply("autoscaler").force(),
            &Patch::Apply(&scale),
        )
        .await
        .expect("forced apply");
    assert_eq!(forced.spec.as_ref().and_then(|s| s.replicas), Some(5));

    api.delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    wait_gone(&api, "web").await;
    assert_eq!(
        api.list(&ListParams::default()).await.expect("list").items.len(),
        1
    );
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.get_opt(name).await.expect("get") {
            None => return,
            Some(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(o) => panic!("{name} still exists after 30 s: {o:?}"),
        }
    }
}

#[tokio::test]
async fn namespaces_create_get_list_patch_delete() {
    let s = Server::start();
    let c = client(&s).await;
    let api: Api<Namespace> = Api::all(c.clone());

    namespace(&c, "team-a").await;
    let ns = api.get("team-a").await.expect("get");
    assert_eq!(
        ns.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Active")
    );
    assert_eq!(
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/metadata.name"))
            .map(String::as_str),
        Some("team-a"),
        "the automatic name label"
    );
    assert_eq!(
        ns.spec.as_ref().and_then(|s| s.finalizers.clone()),
        Some(vec!["kubernetes".to_string()])
    );

    let names: Vec<_> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for want in ["default", "kube-system", "team-a"] {
        assert!(names.iter().any(|n| n == want), "{want} missing in {names:?}");
    }

    let patched = api
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"owner": "a"}}})),
        )
        .await
        .expect("patch namespace");
    let labels = patched.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("owner").map(String::as_str), Some("a"));

    // Objects inside go with it.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "team-a");
    cms.create(&PostParams::default(), &config_map("inside", &[]))
        .await
        .expect("create inside");

    let deleted = api
        .delete("team-a", &DeleteParams::default())
        .await
        .expect("delete namespace");
    let terminating = deleted.left().expect("a namespace being finalized is returned");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(
        terminating.status.and_then(|s| s.phase),
        Some("Terminating".to_string())
    );
    wait_gone(&api, "team-a").await;
    assert!(cms.get_opt("inside").await.expect("get").is_none());
}

#[tokio::test]
async fn watch_from_a_resource_version_sees_added_modified_deleted() {
    let s = Server::start();
    let c = client(&s).await;
    namespace(&c, "w").await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "w");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list resourceVersion");

    let mut stream = api
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .expect("watch")
        .boxed();
    api.create(&PostParams::default(), &config_map("watched", &[("v", "1")]))
        .await
        .expect("create");
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .expect("patch");
    api.delete("watched", &DeleteParams::default())
        .await
        .expect("delete");

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.try_next())
            .await
            .unwrap_or_else(|_| panic!("watch events so far: {seen:?}"))
            .expect("watch stream")
            .unwrap_or_else(|| panic!("watch ended; events so far: {seen:?}"));
        match ev {
            WatchEvent::Added(cm) => seen.push(("ADDED", data(&cm))),
            WatchEvent::Modified(cm) => seen.push(("MODIFIED", data(&cm))),
            WatchEvent::Deleted(cm) => seen.push(("DELETED", data(&cm))),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            ("ADDED", map(&[("v", "1")])),
            ("MODIFIED", map(&[("v", "2")])),
            ("DELETED", map(&[("v", "2")])),
        ]
    );
}

#[tokio::test]
async fn list_pagination_with_limit_and_continue_is_a_consistent_snapshot() {
    let s = Server::start();
    let c = client(&s).await;
    namespace(&c, "pages").await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "pages");
    for i in 0..25 {
        api.create(&PostParams::default(), &config_map(&format!("cm-{i:02}"), &[]))
            .await
            .expect("create");
    }

    let lp = ListParams::default().labels("app=kube-rs").limit(10);
    let first = api.list(&lp).await.expect("first page");
    assert_eq!(first.items.len(), 10);
    let token = first.metadata.continue_.clone().expect("continue token");
    assert!(!token.is_empty());
    let snapshot = first.metadata.resource_version.clone();

    // Created after the first page: not part of the snapshot the pages are read from.
    api.create(&PostParams::default(), &config_map("cm-15x", &[]))
        .await
        .expect("create during pagination");

    let mut names: Vec<String> = first
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let mut next = Some(token);
    let mut pages = 1;
    while let Some(token) = next.filter(|t| !t.is_empty()) {
        let page = api
            .list(&lp.clone().continue_token(&token))
            .await
            .expect("next page");
        assert!(page.items.len() <= 10);
        assert_eq!(
            page.metadata.resource_version, snapshot,
            "pages share one snapshot"
        );
        names.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        next = page.metadata.continue_.clone();
        pages += 1;
        assert!(pages <= 3, "25 objects in pages of 10 are 3 pages");
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, want);

    let everything = api
        .list(&ListParams::default().labels("app=kube-rs"))
        .await
        .expect("full list");
    assert_eq!(everything.items.len(), 26, "a fresh list sees the new object");
}

#[tokio::test]
async fn stale_resource_version_is_a_409_conflict() {
    let s = Server::start();
    let c = client(&s).await;
    let api: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let original = api
        .create(&PostParams::default(), &config_map("occ", &[("n", "0")]))
        .await
        .expect("create");

    let mut first = original.clone();
    first.data = Some(map(&[("n", "1")]));
    api.replace("occ", &PostParams::default(), &first)
        .await
        .expect("first update");

    let mut stale = original.clone();
    stale.data = Some(map(&[("n", "2")]));
    let status = api_status(api.replace("occ", &PostParams::default(), &stale).await);
    assert_eq!(status.code, 409, "{status:?}");
    assert_eq!(status.reason, "Conflict", "{status:?}");
    assert!(
        status.message.contains("the object has been modified"),
        "{status:?}"
    );
    assert_eq!(
        data(&api.get("occ").await.expect("get")),
        map(&[("n", "1")]),
        "the stale write must not land"
    );

    // Creating what exists is a 409 AlreadyExists.
    let exists = api_status(api.create(&PostParams::default(), &config_map("occ", &[])).await);
    assert_eq!(exists.code, 409, "{exists:?}");
    assert_eq!(exists.reason, "AlreadyExists", "{exists:?}");
}

#[tokio::test]
async fn missing_objects_are_404_not_found() {
    let s = Server::start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let status = api_status(cms.get("nope").await);
    assert_eq!(status.code, 404, "{status:?}");
    assert_eq!(status.reason, "NotFound", "{status:?}");
    assert_eq!(status.message, "configmaps \"nope\" not found");
    let details = status.details.expect("details");
    assert_eq!(details.name, "nope");
    assert_eq!(details.kind, "configmaps");

    let status = api_status(cms.delete("nope", &DeleteParams::default()).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));

    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let status = api_status(deployments.get("nope").await);
    assert_eq!(status.code, 404, "{status:?}");
    assert_eq!(status.message, "deployments.apps \"nope\" not found");

    let in_missing_ns: Api<ConfigMap> = Api::namespaced(c.clone(), "no-such-namespace");
    let status = api_status(
        in_missing_ns
            .create(&PostParams::default(), &config_map("x", &[]))
            .await,
    );
    assert_eq!(status.code, 404, "{status:?}");
    assert_eq!(status.reason, "NotFound", "{status:?}");
}

#[tokio::test]
async fn discovery_finds_core_and_apps_resources() {
    let s = Server::start();
    let c = client(&s).await;
    let discovery = Discovery::new(c.clone()).run().await.expect("discovery");
    assert!(
        discovery.has_group("apps"),
        "groups: {:?}",
        group_names(&discovery)
    );
    let apps = discovery.get("apps").expect("apps group");
    assert_eq!(apps.preferred_version(), Some("v1"));
    let (ar, caps) = apps.recommended_kind("Deployment").expect("Deployment in apps");
    assert_eq!(ar.plural, "deployments");
    assert_eq!(ar.version, "v1");
    assert_eq!(ar.api_version, "apps/v1");
    assert_eq!(caps.scope, Scope::Namespaced);
    for verb in ["create", "get", "list", "watch", "patch", "update", "delete"] {
        assert!(
            caps.supports_operation(verb),
            "deployments lack {verb}: {:?}",
            caps.operations
        );
    }
    let subresources: Vec<_> = caps.subresources.iter().map(|(r, _)| r.plural.clone()).collect();
    assert!(
        subresources.iter().any(|s| s == "scale") && subresources.iter().any(|s| s == "status"),
        "deployment subresources: {subresources:?}"
    );

    let core = discovery.get("").expect("core group");
    let (cm, cm_caps) = core.recommended_kind("ConfigMap").expect("ConfigMap");
    assert_eq!(
        (cm.plural.as_str(), cm.api_version.as_str()),
        ("configmaps", "v1")
    );
    assert_eq!(cm_caps.scope, Scope::Namespaced);
    let (_, ns_caps) = core.recommended_kind("Namespace").expect("Namespace");
    assert_eq!(ns_caps.scope, Scope::Cluster);

    // What discovery found is usable as a dynamic API.
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(c.clone(), "default", &cm);
    let list = dynamic.list(&ListParams::default()).await.expect("dynamic list");
    assert!(list.metadata.resource_version.is_some());
}

fn group_names(d: &Discovery) -> Vec<String> {
    d.groups().map(|g| g.name().to_string()).collect()
}

/// With the controllers running, a Deployment's status is written behind the client's back; a
/// PATCH without a resourceVersion must still never fail with 409 (upstream re-reads and re-applies
/// the patch on a storage conflict). Every patch type, including a forced apply, in quick
/// succession while the deployment controller works on the object.
#[tokio::test]
async fn patches_without_resource_version_do_not_conflict_with_controllers() {
    let s = Server::start_full(&[]);
    let c = client(&s).await;
    let api: Api<Deployment> = Api::namespaced(c.clone(), "default");
    api.create(&PostParams::default(), &deployment("busy", 1))
        .await
        .expect("create deployment");
    for i in 0..10 {
        let label = format!("v{i}");
        let patches: Vec<(&str, Patch<serde_json::Value>)> = vec![
            (
                "strategic",
                Patch::Strategic(json!({"metadata": {"labels": {"round": label}}})),
            ),
            ("merge", Patch::Merge(json!({"spec": {"replicas": i % 3 + 1}}))),
            (
                "json",
                Patch::Json(
                    serde_json::from_value(json!([
                        {"op": "add", "path": "/metadata/annotations", "value": {"round": label}}
                    ]))
                    .expect("json patch"),
                ),
            ),
        ];
        for (kind, patch) in patches {
            api.patch("busy", &PatchParams::default(), &patch)
                .await
                .unwrap_or_else(|e| panic!("{kind} patch in round {i}: {e}"));
        }
        let scale = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "busy"}, "spec": {"replicas": i % 2 + 1},
        });
        api.patch(
            "busy",
            &PatchParams::apply("scaler").force(),
            &Patch::Apply(&scale),
        )
        .await
        .unwrap_or_else(|e| panic!("forced apply in round {i}: {e}"));
    }
    let last = api.get("busy").await.expect("get");
    assert_eq!(last.spec.and_then(|s| s.replicas), Some(2), "the last apply wins");
}

/// The status and scale subresources, dry runs and collection deletes, as typed kube calls.
#[tokio::test]
async fn status_and_scale_subresources_dry_run_and_delete_collection() {
    let s = Server::start();
    let c = client(&s).await;
    let api: Api<Deployment> = Api::namespaced(c.clone(), "default");
    api.create(&PostParams::default(), &deployment("sub", 2))
        .await
        .expect("create deployment");

    // The status subresource writes status only, and does not bump generation.
    let with_status = api
        .patch_status(
            "sub",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 1}, "spec": {"replicas": 9}})),
        )
        .await
        .expect("patch status");
    let status = with_status.status.clone().expect("status");
    assert_eq!((status.replicas, status.ready_replicas), (Some(2), Some(1)));
    assert_eq!(
        with_status.spec.as_ref().and_then(|s| s.replicas),
        Some(2),
        "spec changes through /status are ignored"
    );
    assert_eq!(with_status.metadata.generation, Some(1));
    assert_eq!(
        api.get_status("sub")
            .await
            .expect("get status")
            .status
            .and_then(|s| s.ready_replicas),
        Some(1)
    );

    // A write to the main resource leaves the status as it was.
    let mut changed = api.get("sub").await.expect("get");
    changed.status = None;
    if let Some(labels) = changed.metadata.labels.as_mut() {
        labels.insert("edited".into(), "yes".into());
    }
    let replaced = api
        .replace("sub", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(
        replaced.status.and_then(|s| s.ready_replicas),
        Some(1),
        "status survives a PUT of the main resource"
    );

    // The scale subresource reads and writes spec.replicas.
    let scale = api.get_scale("sub").await.expect("get scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    api.patch_scale(
        "sub",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .expect("patch scale");
    assert_eq!(
        api.get("sub").await.expect("get").spec.and_then(|s| s.replicas),
        Some(4)
    );

    // A dry-run create answers with the object and stores nothing.
    let dry = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &deployment("dry", 1),
        )
        .await
        .expect("dry-run create");
    assert_eq!(dry.metadata.name.as_deref(), Some("dry"));
    assert!(api.get_opt("dry").await.expect("get").is_none());

    // deletecollection with a label selector removes the matching objects only.
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    for name in ["keep", "drop-1", "drop-2"] {
        let mut cm = config_map(name, &[]);
        if name.starts_with("drop") {
            cm.metadata.labels = Some(map(&[("batch", "old")]));
        }
        cms.create(&PostParams::default(), &cm).await.expect("create");
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("batch=old"),
    )
    .await
    .expect("delete collection");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = cms
            .list(&ListParams::default().labels("batch=old"))
            .await
            .expect("list")
            .items
            .len();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} labelled config maps left after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cms.get_opt("keep").await.expect("get").is_some());
}
