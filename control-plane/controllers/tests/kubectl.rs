//! The stock kubectl against a real API server (HTTPS, in this process) with the controllers
//! running and a fake kubelet marking pods ready: the rollout commands a user types.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_api::client::ApiClient;
use keel_auth::{Pki, PkiOptions};
use tokio::sync::watch;

struct Server {
    kubeconfig: PathBuf,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn start() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let pki = Pki::load_or_create(
        dir.path(),
        &PkiOptions {
            extra_sans: Vec::new(),
            kubeconfig_server: format!("https://{addr}"),
        },
    )
    .expect("pki");
    let store = keel_store::embedded::EmbeddedStore::open(dir.path().join("store"), Default::default())
        .expect("store");
    let config = keel_apiserver::Config {
        advertise: addr,
        ..Default::default()
    };
    let objects = Arc::new(keel_apiserver::Objects::new(Arc::new(store), Arc::new(config)));
    keel_apiserver::gc::spawn(objects.clone());
    keel_apiserver::bootstrap::ensure(&objects)
        .await
        .expect("bootstrap");
    let server = Arc::new(keel_apiserver::ApiServer {
        objects: objects.clone(),
        authn: keel_apiserver::authn::Authenticator::new(None, objects.clone()),
        streams: None,
    });
    let (stop, _) = watch::channel(false);
    let stopped = |stop: &watch::Sender<bool>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(keel_apiserver::http::serve(
        server,
        listener,
        pki.server_tls_config(&[b"h2", b"http/1.1"]),
        stopped(&stop),
    ));
    let client: Arc<dyn ApiClient> = Arc::new(keel_apiserver::client::InProcessClient::new(objects));
    let c = client.clone();
    let s = stopped(&stop);
    tokio::spawn(async move { keel_controllers::run_all(c, s).await.expect("controllers") });
    let s = stopped(&stop);
    tokio::spawn(async move {
        tokio::select! {
            _ = s => {}
            _ = support::fake_kubelet(client) => {}
        }
    });
    Server {
        kubeconfig: pki.admin_kubeconfig_path(),
        stop,
        _dir: dir,
    }
}

impl Server {
    /// Runs kubectl; returns stdout, failing the test with both outputs if it fails.
    ///
    /// A write that meets a conflict is retried, as a user would: the API server currently
    /// answers 409 to a patch without a resourceVersion when a controller wrote the object at the
    /// same moment (upstream retries such patches server-side).
    async fn kubectl(&self, args: &[&str]) -> String {
        let mut attempt = 0;
        loop {
            let out = tokio::time::timeout(
                Duration::from_secs(90),
                tokio::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&self.kubeconfig)
                    .args(args)
                    .output(),
            )
            .await
            .expect("kubectl finished in time")
            .expect("kubectl runs");
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if !out.status.success() && stderr.contains("the object has been modified") && attempt < 10 {
                attempt += 1;
                continue;
            }
            assert!(
                out.status.success(),
                "kubectl {args:?} failed:\n{stdout}\n{stderr}"
            );
            return stdout;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_commands_work() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("kubectl not installed; skipping");
        return;
    }
    let s = start().await;
    s.kubectl(&["create", "deployment", "web", "--image=nginx:1.0", "--replicas=3"])
        .await;
    let out = s
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    s.kubectl(&["set", "image", "deployment/web", "nginx=nginx:2.0"])
        .await;
    s.kubectl(&["annotate", "deployment/web", "kubernetes.io/change-cause=image 2"])
        .await;
    let out = s
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let history = s.kubectl(&["rollout", "history", "deployment/web"]).await;
    assert!(history.lines().any(|l| l.starts_with('1')), "{history}");
    assert!(
        history
            .lines()
            .any(|l| l.starts_with('2') && l.contains("image 2")),
        "{history}"
    );

    let out = s.kubectl(&["rollout", "undo", "deployment/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let image = s
        .kubectl(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(image, "nginx:1.0");
    let revision = s
        .kubectl(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
        ])
        .await;
    assert_eq!(revision, "3");

    s.kubectl(&["scale", "deployment/web", "--replicas=5"]).await;
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let ready = s
        .kubectl(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .await;
    assert_eq!(ready, "5");
    let rs = s.kubectl(&["get", "replicasets", "-o", "name"]).await;
    assert_eq!(rs.lines().count(), 2, "{rs}");

    // A StatefulSet from a manifest: rolled out in order, with its history.
    let manifest = s._dir.path().join("sts.json");
    let sts = serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "default"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres:1"}]}}}});
    std::fs::write(&manifest, sts.to_string()).expect("manifest");
    s.kubectl(&["apply", "-f", manifest.to_str().unwrap_or_default()])
        .await;
    // (The API server defaults `partition: 0`, so kubectl reports a partitioned roll out.)
    let out = s
        .kubectl(&["rollout", "status", "statefulset/db", "--timeout=60s"])
        .await;
    assert!(
        out.contains("roll out complete: 2 new pods") || out.contains("rolling update complete 2 pods"),
        "{out}"
    );
    s.kubectl(&["set", "image", "statefulset/db", "db=postgres:2"])
        .await;
    let out = s
        .kubectl(&["rollout", "status", "statefulset/db", "--timeout=60s"])
        .await;
    assert!(
        out.contains("roll out complete: 2 new pods") || out.contains("rolling update complete 2 pods"),
        "{out}"
    );
    let image = s
        .kubectl(&["get", "pod", "db-0", "-o", "jsonpath={.spec.containers[0].image}"])
        .await;
    assert_eq!(image, "postgres:2");
    let history = s.kubectl(&["rollout", "history", "statefulset/db"]).await;
    assert!(history.lines().any(|l| l.starts_with('2')), "{history}");
}
