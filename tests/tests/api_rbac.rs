//! RBAC as kubectl users meet it: each test starts its own API-only `keel-server`, grants with
//! Roles, ClusterRoles and their bindings as the admin, and checks what other users may do, both
//! as token users of their own (`--token-auth-file`) and through impersonation (`--as`,
//! `--as-group`) by the admin, with upstream's Forbidden texts and `kubectl auth can-i` answers.

mod common;

use std::path::{Path, PathBuf};

use common::Server;
use keel_lab::Kubectl;
use serde_json::Value;

const TOKENS: &str = "bob-token,bob,bob-uid,\"devs\"\ncarol-token,carol,carol-uid,\"\"\n";

/// A server that also knows the token users bob (group devs) and carol.
fn server_with_tokens() -> (Server, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("keel-rbac-test-")
        .tempdir()
        .expect("temp dir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, TOKENS).expect("token file");
    let tokens = tokens.display().to_string();
    let s = Server::start_with(&["--no-controllers", "--token-auth-file", &tokens]);
    (s, dir)
}

/// kubectl as a token user: a kubeconfig of its own, without the admin's certificate.
fn kubectl_as(s: &Server, dir: &Path, user: &str) -> Kubectl {
    let path: PathBuf = dir.join(format!("{user}.kubeconfig"));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keel\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: {user}\n  user:\n    token: {user}-token\ncontexts:\n- name: {user}\n  context:\n    cluster: keel\n    user: {user}\n    namespace: default\ncurrent-context: {user}\n",
        port = s.port
    );
    std::fs::write(&path, config).expect("kubeconfig");
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    Kubectl::new(Path::new(&bin), &path).expect("kubectl")
}

/// Runs kubectl, which must fail; returns its stderr, trimmed.
fn fails(s: &Server, k: &Kubectl, args: &[&str]) -> String {
    let out = k
        .run(args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")));
    assert!(
        !out.success(),
        "kubectl {} must fail, but printed:\n{}\n{}",
        args.join(" "),
        out.stdout,
        s.log_tail()
    );
    out.stderr.trim_end().to_string()
}

/// Asserts that `f` holds right away: a policy write is answered only once the authorizer has
/// it, so what kubectl does next already sees it (read-your-writes).
fn holds(what: &str, f: impl FnOnce() -> bool) {
    assert!(f(), "does not hold right after the write: {what}");
}

/// `kubectl auth can-i …`'s answer (`yes` or `no`).
fn can_i(k: &Kubectl, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let out = k.run(&all).expect("kubectl auth can-i");
    out.stdout.trim().to_string()
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: team}
spec:
  containers:
  - {name: c, image: busybox}
"#;

#[test]
fn token_users_are_forbidden_until_granted_and_only_where_granted() {
    let (s, dir) = server_with_tokens();
    let admin = s.kubectl();
    let bob = kubectl_as(&s, dir.path(), "bob");
    let carol = kubectl_as(&s, dir.path(), "carol");

    // Nothing granted: discovery works, resources do not.
    s.ok(&bob, &["api-versions"]);
    assert_eq!(
        fails(&s, &bob, &["get", "pods"]),
        r#"Error from server (Forbidden): pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    assert_eq!(
        fails(&s, &bob, &["get", "nodes"]),
        r#"Error from server (Forbidden): nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" at the cluster scope"#
    );
    // Nor may bob act as someone else.
    assert_eq!(
        fails(&s, &bob, &["get", "pods", "--as", "jane"]),
        r#"Error from server (Forbidden): users "jane" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#
    );
    let whoami = s.ok(
        &bob,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"],
    );
    assert_eq!(whoami, r#"["devs","system:authenticated"]"#);

    // A Role and RoleBinding grant in their namespace only.
    s.ok(&admin, &["create", "namespace", "team"]);
    s.apply(&admin, POD);
    s.ok(
        &admin,
        &[
            "create",
            "role",
            "pod-reader",
            "-n",
            "team",
            "--verb=get,list,watch",
            "--resource=pods",
        ],
    );
    s.ok(
        &admin,
        &[
            "create",
            "rolebinding",
            "bob-reads",
            "-n",
            "team",
            "--role=pod-reader",
            "--user=bob",
        ],
    );
    holds("bob lists pods in team", || {
        bob.run(&["get", "pods", "-n", "team"]).is_ok_and(|o| o.success())
    });
    let names = s.ok(&bob, &["get", "pods", "-n", "team", "-o", "name"]);
    assert_eq!(names.trim(), "pod/p");
    assert_eq!(
        fails(&s, &bob, &["get", "pods"]),
        r#"Error from server (Forbidden): pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    assert_eq!(
        fails(&s, &bob, &["delete", "pod", "p", "-n", "team"]),
        r#"Error from server (Forbidden): pods "p" is forbidden: User "bob" cannot delete resource "pods" in API group "" in the namespace "team""#
    );
    // Subresources are resources of their own: get pods does not grant pods/log.
    assert_eq!(
        fails(&s, &bob, &["logs", "p", "-n", "team"]),
        r#"Error from server (Forbidden): pods "p" is forbidden: User "bob" cannot get resource "pods/log" in API group "" in the namespace "team""#
    );

    // A ClusterRole bound cluster-wide to a group: every member, every namespace.
    s.ok(
        &admin,
        &[
            "create",
            "clusterrole",
            "deploy-viewer",
            "--verb=get,list,watch",
            "--resource=deployments.apps",
        ],
    );
    s.ok(
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "devs-view-deployments",
            "--clusterrole=deploy-viewer",
            "--group=devs",
        ],
    );
    holds("devs list deployments everywhere", || {
        bob.run(&["get", "deployments", "-A"]).is_ok_and(|o| o.success())
    });
    s.ok(&bob, &["get", "deployments", "-n", "kube-system"]);
    assert_eq!(
        fails(&s, &carol, &["get", "deployments", "-A"]),
        r#"Error from server (Forbidden): deployments.apps is forbidden: User "carol" cannot list resource "deployments" in API group "apps" at the cluster scope"#
    );

    // resourceNames: one ConfigMap by name, and no list.
    s.ok(&admin, &["create", "configmap", "one", "--from-literal=k=1"]);
    s.ok(&admin, &["create", "configmap", "two", "--from-literal=k=2"]);
    s.ok(
        &admin,
        &[
            "create",
            "role",
            "cm-one",
            "--verb=get,update",
            "--resource=configmaps",
            "--resource-name=one",
        ],
    );
    s.ok(
        &admin,
        &[
            "create",
            "rolebinding",
            "carol-cm-one",
            "--role=cm-one",
            "--user=carol",
        ],
    );
    holds("carol reads configmap one", || {
        carol.run(&["get", "configmap", "one"]).is_ok_and(|o| o.success())
    });
    let k = s.ok(&carol, &["get", "configmap", "one", "-o", "jsonpath={.data.k}"]);
    assert_eq!(k, "1");
    assert_eq!(
        fails(&s, &carol, &["get", "configmap", "two"]),
        r#"Error from server (Forbidden): configmaps "two" is forbidden: User "carol" cannot get resource "configmaps" in API group "" in the namespace "default""#
    );
    assert_eq!(
        fails(&s, &carol, &["get", "configmaps"]),
        r#"Error from server (Forbidden): configmaps is forbidden: User "carol" cannot list resource "configmaps" in API group "" in the namespace "default""#
    );

    // Deleting the binding takes the grant away.
    s.ok(&admin, &["delete", "rolebinding", "bob-reads", "-n", "team"]);
    holds("bob loses pods in team", || {
        bob.run(&["get", "pods", "-n", "team"])
            .is_ok_and(|o| !o.success())
    });

    // Impersonation is a grant like any other.
    s.ok(
        &admin,
        &[
            "create",
            "clusterrole",
            "impersonator",
            "--verb=impersonate",
            "--resource=users,groups",
        ],
    );
    s.ok(
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "bob-impersonates",
            "--clusterrole=impersonator",
            "--user=bob",
        ],
    );
    holds("bob acts as carol", || {
        bob.run(&["get", "configmap", "one", "--as", "carol"])
            .is_ok_and(|o| o.success())
    });
    assert_eq!(can_i(&bob, &["get", "configmaps/two", "--as", "carol"]), "no");
    assert_eq!(
        can_i(
            &bob,
            &[
                "list",
                "deployments.apps",
                "-A",
                "--as",
                "carol",
                "--as-group",
                "devs"
            ]
        ),
        "yes"
    );
}

#[test]
fn can_i_and_reviews_answer_from_the_policy() {
    let s = Server::start();
    let k = s.kubectl();
    // The admin (system:masters) may do anything, and says so.
    assert_eq!(can_i(&k, &["*", "*"]), "yes");
    assert_eq!(can_i(&k, &["delete", "nodes"]), "yes");
    let list = s.ok(&k, &["auth", "can-i", "--list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("*.*") && l.trim_end().ends_with("[*]")),
        "{list}"
    );

    // jane, impersonated by the admin, may do nothing but ask.
    assert_eq!(can_i(&k, &["list", "pods", "--as", "jane"]), "no");
    assert_eq!(
        can_i(
            &k,
            &[
                "create",
                "selfsubjectaccessreviews.authorization.k8s.io",
                "--as",
                "jane"
            ]
        ),
        "yes"
    );
    let whoami = s.ok(
        &k,
        &[
            "auth",
            "whoami",
            "--as",
            "jane",
            "--as-group",
            "devs",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert_eq!(whoami, r#"jane ["devs","system:authenticated"]"#);

    // The default `view` role, bound in one namespace.
    s.ok(&k, &["create", "namespace", "team"]);
    s.ok(
        &k,
        &[
            "create",
            "rolebinding",
            "jane-view",
            "-n",
            "team",
            "--clusterrole=view",
            "--user=jane",
        ],
    );
    holds("jane views team", || {
        can_i(&k, &["list", "pods", "-n", "team", "--as", "jane"]) == "yes"
    });
    assert_eq!(
        can_i(&k, &["watch", "deployments.apps", "-n", "team", "--as", "jane"]),
        "yes"
    );
    assert_eq!(can_i(&k, &["get", "secrets", "-n", "team", "--as", "jane"]), "no");
    assert_eq!(can_i(&k, &["delete", "pods", "-n", "team", "--as", "jane"]), "no");
    assert_eq!(
        can_i(&k, &["list", "pods", "-n", "default", "--as", "jane"]),
        "no"
    );
    assert_eq!(
        can_i(
            &k,
            &["get", "pods", "--subresource=log", "-n", "team", "--as", "jane"]
        ),
        "yes"
    );
    let list = s.ok(&k, &["auth", "can-i", "--list", "-n", "team", "--as", "jane"]);
    let pods = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some("pods"))
        .unwrap_or_else(|| panic!("no pods rule in\n{list}"));
    assert!(pods.trim_end().ends_with("[get list watch]"), "{pods}");
    assert!(!list.lines().any(|l| l.starts_with("secrets ")), "{list}");
    let elsewhere = s.ok(&k, &["auth", "can-i", "--list", "-n", "default", "--as", "jane"]);
    assert!(!elsewhere.lines().any(|l| l.starts_with("pods ")), "{elsewhere}");

    // Aggregation: a ClusterRole labelled aggregate-to-view extends view (and so edit and admin),
    // and the aggregated roles show the rules they grant.
    assert_eq!(
        can_i(
            &k,
            &["list", "leases.coordination.k8s.io", "-n", "team", "--as", "jane"]
        ),
        "no"
    );
    s.ok(
        &k,
        &[
            "create",
            "clusterrole",
            "lease-viewer",
            "--verb=get,list",
            "--resource=leases.coordination.k8s.io",
        ],
    );
    s.ok(
        &k,
        &[
            "label",
            "clusterrole",
            "lease-viewer",
            "rbac.authorization.k8s.io/aggregate-to-view=true",
        ],
    );
    holds("view aggregates lease-viewer", || {
        can_i(
            &k,
            &["list", "leases.coordination.k8s.io", "-n", "team", "--as", "jane"],
        ) == "yes"
    });
    holds("admin shows the aggregated rules", || {
        let rules = s.ok(
            &k,
            &[
                "get",
                "clusterrole",
                "admin",
                "-o",
                "jsonpath={.rules[*].resources}",
            ],
        );
        rules.contains("leases") && rules.contains("rolebindings") && rules.contains("deployments")
    });

    // SubjectAccessReview and LocalSubjectAccessReview ask about anyone.
    let sar = r#"{"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "jane", "resourceAttributes": {"namespace": "team", "verb": "list", "resource": "pods"}}}"#;
    let out = k
        .run_with_stdin(&["create", "-f", "-", "-o", "json"], Some(sar))
        .expect("kubectl create");
    assert!(out.success(), "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["status"]["allowed"], true);
    assert_eq!(
        v["status"]["reason"],
        r#"RBAC: allowed by RoleBinding "jane-view/team" of ClusterRole "view" to User "jane""#
    );
    let lsar = r#"{"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": "default"},
        "spec": {"user": "jane", "resourceAttributes": {"verb": "list", "resource": "pods"}}}"#;
    let out = k
        .run_with_stdin(
            &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
            Some(lsar),
        )
        .expect("kubectl create");
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "false");
}

#[test]
fn roles_and_bindings_grant_no_more_than_their_writer_holds() {
    let s = Server::start();
    let k = s.kubectl();
    // YAML-43: user-1 may create RoleBindings in user-1-namespace, and bind admin, edit and view.
    let grantor = common::workspace_root()
        .join("tests/manifests/seeds/yaml-43-role-grantor.yaml")
        .display()
        .to_string();
    s.ok(&k, &["apply", "-f", &grantor]);
    let ns = "user-1-namespace";
    holds("user-1 may create rolebindings", || {
        can_i(&k, &["create", "rolebindings", "-n", ns, "--as", "user-1"]) == "yes"
    });
    // Binding admin is allowed by `bind`, though user-1 does not hold admin's rules.
    s.ok(
        &k,
        &[
            "create",
            "rolebinding",
            "u2-admin",
            "-n",
            ns,
            "--clusterrole=admin",
            "--user=u2",
            "--as",
            "user-1",
        ],
    );
    let err = fails(
        &s,
        &k,
        &[
            "create",
            "rolebinding",
            "u2-root",
            "-n",
            ns,
            "--clusterrole=cluster-admin",
            "--user=u2",
            "--as",
            "user-1",
        ],
    );
    assert!(
        err.contains(
            "rolebindings.rbac.authorization.k8s.io \"u2-root\" is forbidden: user \"user-1\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}\n{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}"
        ),
        "{err}"
    );
    // u2, now admin of the namespace, may write roles with what admin holds, and no more.
    holds("u2 administers user-1-namespace", || {
        can_i(&k, &["create", "roles", "-n", ns, "--as", "u2"]) == "yes"
    });
    s.ok(
        &k,
        &[
            "create",
            "role",
            "secret-reader",
            "-n",
            ns,
            "--verb=get,list",
            "--resource=secrets",
            "--as",
            "u2",
        ],
    );
    let err = fails(
        &s,
        &k,
        &[
            "create",
            "role",
            "node-reader",
            "-n",
            ns,
            "--verb=get",
            "--resource=nodes",
            "--as",
            "u2",
        ],
    );
    assert!(
        err.contains(
            "roles.rbac.authorization.k8s.io \"node-reader\" is forbidden: user \"u2\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}"
        ),
        "{err}"
    );
    // Nor by patching a role it may edit.
    let err = fails(
        &s,
        &k,
        &[
            "patch",
            "role",
            "secret-reader",
            "-n",
            ns,
            "--as",
            "u2",
            "--type=json",
            "-p",
            r#"[{"op": "add", "path": "/rules/-", "value": {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}}]"#,
        ],
    );
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    // And bindings elsewhere are refused outright.
    let err = fails(
        &s,
        &k,
        &[
            "create",
            "rolebinding",
            "x",
            "-n",
            "default",
            "--clusterrole=view",
            "--user=u3",
            "--as",
            "u2",
        ],
    );
    assert!(
        err.contains(r#"rolebindings.rbac.authorization.k8s.io is forbidden: User "u2" cannot create resource "rolebindings" in API group "rbac.authorization.k8s.io" in the namespace "default""#),
        "{err}"
    );
}
