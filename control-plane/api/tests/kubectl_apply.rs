//! The real kubectl against this crate's discovery, OpenAPI, fieldValidation and patch code.
//!
//! A throwaway HTTP/1.1 server on 127.0.0.1 (std only, one thread per connection, objects in a
//! map) answers exactly what `kubectl apply/patch/label/explain/api-resources` need, using only
//! the public functions the apiserver wires: `discovery::*`, `openapi::*`,
//! `schema::validate_and_prune` and `patch::apply`. kubectl computes its strategic merge patches
//! from our OpenAPI schemas and we apply them, so the stored objects show that both halves agree.
//!
//! Skipped (with a note) when `/usr/bin/kubectl` is missing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use keel_api::patch::{self, PatchType};
use keel_api::schema::{self, FieldValidation, Gvk};
use keel_api::{discovery, openapi, registry};
use serde_json::{json, Value};

const KUBECTL: &str = "/usr/bin/kubectl";

type Store = Arc<Mutex<HashMap<String, Value>>>;

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Response {
    code: u16,
    content_type: String,
    body: Vec<u8>,
    /// `Warning` header texts (fieldValidation=Warn).
    warnings: Vec<String>,
}

fn json_response(code: u16, v: &Value) -> Response {
    Response {
        code,
        content_type: "application/json".into(),
        body: serde_json::to_vec(v).unwrap(),
        warnings: Vec::new(),
    }
}

fn status(e: &keel_api::status::ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

fn not_found() -> Response {
    status(&keel_api::status::ApiError::no_such_path())
}

fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if stream.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        stream.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    stream.read_exact(&mut body).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `/apis/apps/v1/namespaces/default/deployments[/name]` → (resource, namespace, name).
fn parse_object_path(path: &str) -> Option<(&'static registry::ResourceType, String, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural] => Some((registry::find(group, version, plural)?, ns.to_string(), None)),
        ["namespaces", ns, plural, name] => Some((
            registry::find(group, version, plural)?,
            ns.to_string(),
            Some(name.to_string()),
        )),
        _ => None,
    }
}

fn handle(req: &Request, store: &Store) -> Response {
    let accept = req.headers.get("accept").cloned().unwrap_or_default();
    let path = req.path.trim_end_matches('/');
    match (req.method.as_str(), path) {
        ("GET", "/version") => {
            return json_response(
                200,
                &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0"}),
            )
        }
        ("GET", "/api") | ("GET", "/apis") => {
            if accept.contains("as=APIGroupDiscoveryList") {
                let doc = if path == "/api" {
                    discovery::aggregated_core()
                } else {
                    discovery::aggregated_groups(false)
                };
                let mut r = json_response(200, &doc);
                r.content_type = discovery::AGGREGATED_CONTENT_TYPE.into();
                return r;
            }
            let doc = if path == "/api" {
                discovery::api_versions(None)
            } else {
                discovery::api_group_list(false)
            };
            return json_response(200, &doc);
        }
        ("GET", "/openapi/v3") => return json_response(200, &openapi::index()),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/openapi/v3/") {
        return match openapi::document_for_path(rest) {
            Some(d) => Response {
                code: 200,
                content_type: "application/json".into(),
                body: d.bytes.clone(),
                warnings: Vec::new(),
            },
            None => not_found(),
        };
    }
    if req.method == "GET" {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let list = match segs.as_slice() {
            ["api", v] => discovery::api_resource_list("", v, false),
            ["apis", g, v] => discovery::api_resource_list(g, v, false),
            _ => None,
        };
        if let Some(l) = list {
            return json_response(200, &l);
        }
    }
    let Some((r, ns, name)) = parse_object_path(path) else {
        return not_found();
    };
    let gvk = Gvk::new(r.group, r.version, r.kind);
    let mode = match FieldValidation::parse(query_param(&req.query, "fieldValidation")) {
        Ok(m) => m,
        Err(e) => return status(&e),
    };
    let mut objects = store.lock().unwrap();
    match (req.method.as_str(), name) {
        ("GET", Some(name)) => match objects.get(&r.key(Some(&ns), &name)) {
            Some(o) => json_response(200, o),
            None => status(&keel_api::status::ApiError::not_found(r, &name)),
        },
        ("POST", None) => {
            let mut obj: Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => return status(&keel_api::status::ApiError::bad_request(e.to_string())),
            };
            let warnings = match schema::validate_and_prune(gvk, Some(&req.body), &mut obj, mode) {
                Ok(w) => w,
                Err(e) => return status(&e),
            };
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            obj["metadata"]["uid"] = json!(format!("uid-{name}"));
            obj["metadata"]["resourceVersion"] = json!("1");
            objects.insert(r.key(Some(&ns), &name), obj.clone());
            let mut resp = json_response(201, &obj);
            resp.warnings = warnings;
            resp
        }
        ("PATCH", Some(name)) => {
            let key = r.key(Some(&ns), &name);
            let Some(live) = objects.get(&key) else {
                return status(&keel_api::status::ApiError::not_found(r, &name));
            };
            let content_type = req.headers.get("content-type").cloned().unwrap_or_default();
            let Some(t) = PatchType::from_content_type(&content_type) else {
                return status(&patch::unsupported_patch_type(true));
            };
            let mut patched = match patch::apply(t, live, &req.body, gvk) {
                Ok(p) => p,
                Err(e) => return status(&e),
            };
            let warnings = match schema::validate_and_prune(gvk, Some(&req.body), &mut patched, mode) {
                Ok(w) => w,
                Err(e) => return status(&e),
            };
            objects.insert(key, patched.clone());
            let mut resp = json_response(200, &patched);
            resp.warnings = warnings;
            resp
        }
        _ => not_found(),
    }
}

fn serve(listener: TcpListener, store: Store) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let store = store.clone();
        std::thread::spawn(move || {
            let Ok(write_half) = stream.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut writer = write_half;
            while let Some(req) = read_request(&mut reader) {
                let resp = handle(&req, &store);
                let warnings: String = resp
                    .warnings
                    .iter()
                    .map(|w| format!("Warning: 299 - {w:?}\r\n"))
                    .collect();
                let head = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\n{warnings}\r\n",
                    resp.code,
                    resp.content_type,
                    resp.body.len()
                );
                if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&resp.body).is_err() {
                    return;
                }
            }
        });
    }
}

struct Cluster {
    dir: PathBuf,
    store: Store,
}

impl Cluster {
    fn start(name: &str) -> Option<Cluster> {
        if !Path::new(KUBECTL).exists() {
            eprintln!("skipping: {KUBECTL} not installed");
            return None;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let store: Store = Arc::default();
        let s = store.clone();
        std::thread::spawn(move || serve(listener, s));
        let dir = std::env::temp_dir().join(format!("keel-api-kubectl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
                 users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u, namespace: default}}}}]\n\
                 current-context: x\n"
            ),
        )
        .unwrap();
        Some(Cluster { dir, store })
    }

    /// Runs kubectl (the embedded v1.32 build behind the dispatcher), returning (ok, stdout, stderr).
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(KUBECTL);
        cmd.args(args)
            .env("HOME", &self.dir)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn must(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.kubectl(args, stdin);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    fn deployment(&self, name: &str) -> Value {
        let r = registry::find("apps", "v1", "deployments").unwrap();
        self.store.lock().unwrap()[&r.key(Some("default"), name)].clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const V1: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        env: [{name: A, value: "1"}, {name: C, value: "3"}]
        ports: [{containerPort: 80}]
      - name: sidecar
        image: busybox
"#;

const V2: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.26
        env: [{name: A, value: "1"}, {name: B, value: "2"}, {name: C, value: "3"}]
        ports: [{containerPort: 80}, {containerPort: 443}]
"#;

#[test]
fn client_side_apply_round_trips_through_our_schemas_and_patches() {
    let Some(c) = Cluster::start("apply") else { return };
    let out = c.must(&["apply", "-f", "-"], Some(V1));
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let created = c.deployment("web");
    assert_eq!(
        created["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The second apply is a strategic merge patch kubectl computes from our OpenAPI schemas:
    // sidecar deleted by `$patch: delete`, env and ports merged in order.
    let (ok, out, err) = c.kubectl(&["apply", "-f", "-"], Some(V2));
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(
        !err.contains("openapi"),
        "kubectl could not use our schemas: {err}"
    );
    let d = c.deployment("web");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"],
        json!([{"name": "nginx", "image": "nginx:1.26",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}],
                "ports": [{"containerPort": 80}, {"containerPort": 443}]}])
    );
    let last = d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap();
    assert!(last.contains("nginx:1.26"));

    // Applying the same manifest again changes nothing.
    c.must(&["apply", "-f", "-"], Some(V2));
    assert_eq!(c.deployment("web"), d);
}

#[test]
fn strict_field_validation_reaches_the_user() {
    let Some(c) = Cluster::start("strict") else { return };
    let bad = V1.replace("image: busybox", "image: busybox\n        imagez: typo");
    let (ok, _, err) = c.kubectl(&["apply", "-f", "-"], Some(&bad));
    assert!(!ok);
    assert!(
        err.contains("strict decoding error: unknown field \"spec.template.spec.containers[1].imagez\""),
        "{err}"
    );
    // --validate=warn: stored without the field, the user warned.
    let (ok, out, err) = c.kubectl(&["apply", "--validate=warn", "-f", "-"], Some(&bad));
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("Warning: unknown field \"spec.template.spec.containers[1].imagez\""),
        "{err}"
    );
    assert!(c.deployment("web")["spec"]["template"]["spec"]["containers"][1]
        .get("imagez")
        .is_none());
}

#[test]
fn patch_label_and_set_image_verbs() {
    let Some(c) = Cluster::start("verbs") else { return };
    c.must(&["apply", "-f", "-"], Some(V1));
    c.must(&["label", "deploy/web", "tier=front"], None);
    c.must(&["annotate", "deploy/web", "note=hi"], None);
    c.must(&["set", "image", "deploy/web", "sidecar=busybox:1.36"], None);
    c.must(
        &[
            "patch",
            "deploy/web",
            "--type=merge",
            "-p",
            r#"{"spec":{"paused":true}}"#,
        ],
        None,
    );
    c.must(
        &[
            "patch",
            "deploy/web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
        ],
        None,
    );
    let (ok, _, err) = c.kubectl(
        &[
            "patch",
            "deploy/web",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":1}]"#,
        ],
        None,
    );
    assert!(!ok);
    assert!(
        err.contains("the server rejected our request due to an error in our request"),
        "{err}"
    );
    c.must(&["label", "deploy/web", "tier-"], None);
    let d = c.deployment("web");
    assert!(d["metadata"]["labels"].get("tier").is_none(), "{d}");
    assert_eq!(d["metadata"]["annotations"]["note"], "hi");
    assert_eq!(d["spec"]["paused"], true);
    assert_eq!(d["spec"]["replicas"], 5);
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "nginx:1.25");
    assert_eq!(containers[1]["image"], "busybox:1.36");
}

#[test]
fn explain_and_api_resources_read_our_documents() {
    let Some(c) = Cluster::start("explain") else {
        return;
    };
    let out = c.must(&["explain", "deploy.spec.strategy"], None);
    assert!(out.contains("FIELD: strategy <DeploymentStrategy>"), "{out}");
    assert!(out.contains("rollingUpdate\t<RollingUpdateDeployment>"), "{out}");
    let out = c.must(&["explain", "pods.spec.containers.ports"], None);
    assert!(out.contains("containerPort\t<integer> -required-"), "{out}");
    let out = c.must(&["api-resources", "--no-headers"], None);
    for r in registry::RESOURCES.iter().filter(|r| r.is_stored()) {
        if r.group == "autoscaling" && r.version == "v1" {
            continue; // api-resources lists the preferred version only
        }
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(r.plural) && l.contains(&r.api_version())),
            "{} missing from:\n{out}",
            r.qualified_plural()
        );
    }
}

#[test]
fn retain_keys_switches_strategy_and_volume_source() {
    let Some(c) = Cluster::start("retain") else {
        return;
    };
    let rolling = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: db, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres}]
      volumes: [{name: data, emptyDir: {}}]
"#;
    let recreate = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: db, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  strategy:
    type: Recreate
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres}]
      volumes: [{name: data, hostPath: {path: /srv/db}}]
"#;
    c.must(&["apply", "-f", "-"], Some(rolling));
    c.must(&["apply", "-f", "-"], Some(recreate));
    let d = c.deployment("db");
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}), "{d}");
    assert_eq!(
        d["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "data", "hostPath": {"path": "/srv/db"}}])
    );
}
