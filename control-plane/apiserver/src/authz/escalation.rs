//! Privilege escalation prevention, as upstream's RBAC storage enforces it: nobody grants
//! through a Role, ClusterRole or binding more than they hold themselves.
//!
//! * Writing a Role or ClusterRole needs the `escalate` verb on it, or holding every rule it
//!   contains (in its namespace; cluster-wide for a ClusterRole).
//! * Writing a RoleBinding or ClusterRoleBinding needs the `bind` verb on the role it refers to,
//!   or holding every rule of that role.
//!
//! `system:masters` is exempt. A refusal is upstream's 403: `roles.rbac.authorization.k8s.io
//! "x" is forbidden: user "bob" (groups=["devs" "system:authenticated"]) is attempting to grant
//! RBAC permissions not currently held:` followed by the missing rules.

use http::Method;
use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult, Details};
use keel_auth::UserInfo;
use serde_json::Value;

use crate::route::ResourcePath;

use super::rbac::{self, Attributes, PolicyRule};
use super::{Authorizer, GROUP_MASTERS};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Whether a request must be checked: a create, update or patch of one of the four RBAC kinds
/// (not a subresource) by a user who is not a superuser.
pub fn applies(rt: &ResourceType, method: &Method, path: &ResourcePath, user: &UserInfo) -> bool {
    rt.group == RBAC_GROUP
        && matches!(
            rt.kind,
            "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
        )
        && matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && path.subresource.is_none()
        && !user.groups.iter().any(|g| g == GROUP_MASTERS)
}

/// Checks that `user` may write `obj` (the object as it will be stored) of kind `rt` in `ns`.
pub fn check(
    authz: &Authorizer,
    user: &UserInfo,
    rt: &ResourceType,
    ns: Option<&str>,
    obj: &Value,
) -> ApiResult<()> {
    let ns = ns
        .or_else(|| obj.pointer("/metadata/namespace").and_then(Value::as_str))
        .filter(|_| rt.namespaced)
        .unwrap_or("");
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let may = |verb: &str, resource: &str, name: &str| {
        authz
            .authorize(&Attributes {
                user: user.clone(),
                verb: verb.into(),
                resource_request: true,
                api_group: RBAC_GROUP.into(),
                resource: resource.into(),
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            })
            .allowed
    };
    let rules = match rt.kind {
        "Role" | "ClusterRole" => {
            if may("escalate", rt.plural, name) {
                return Ok(());
            }
            if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) && rt.kind == "ClusterRole" {
                // An aggregated role grants what it selects: the author must hold all of it.
                let mut ix = (*authz.index()).clone();
                ix.upsert("ClusterRole", obj);
                ix.cluster_role_rules(name).unwrap_or_default()
            } else {
                rbac::rules_of(obj)
            }
        }
        _ => {
            let role_kind = obj.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or("");
            let role_name = obj.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or("");
            let resource = if role_kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if may("bind", resource, role_name) {
                return Ok(());
            }
            let index = authz.index();
            let found = match role_kind {
                "Role" => index.roles.get(&(ns.to_string(), role_name.to_string())).cloned(),
                _ => index.cluster_role_rules(role_name),
            };
            match found {
                Some(rules) => rules,
                None => {
                    let what = if role_kind == "Role" {
                        "role"
                    } else {
                        "clusterrole"
                    };
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        format!("{what}.{RBAC_GROUP} {role_name:?} not found"),
                    )
                    .with_resource(what, role_name));
                }
            }
        }
    };
    let (held, errors) = authz.rules_for(user, ns);
    let missing = missing_rules(&held, &rules);
    if missing.is_empty() {
        return Ok(());
    }
    let groups = user
        .groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut msg = format!(
        "user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        missing.iter().map(compact_string).collect::<Vec<_>>().join("\n")
    );
    if !errors.is_empty() {
        msg.push_str(&format!("; resolution errors: [{}]", errors.join(", ")));
    }
    Err(ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!("{}.{RBAC_GROUP} {name:?} is forbidden: {msg}", rt.plural),
        details: Some(Box::new(Details {
            name: name.into(),
            group: RBAC_GROUP.into(),
            kind: rt.plural.into(),
            ..Default::default()
        })),
    })
}

trait WithResource {
    fn with_resource(self, kind: &str, name: &str) -> Self;
}

impl WithResource for ApiError {
    fn with_resource(mut self, kind: &str, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            name: name.into(),
            group: RBAC_GROUP.into(),
            kind: kind.into(),
            ..Default::default()
        }));
        self
    }
}

/// Upstream's `Covers`: the simple rules of `wanted` that no rule of `held` covers, compacted
/// (verbs of the same resource merged) and sorted as upstream prints them.
pub fn missing_rules(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing: Vec<PolicyRule> = Vec::new();
    for simple in wanted.iter().flat_map(breakdown) {
        if !held.iter().any(|h| covers(h, &simple)) {
            // Compact: same group/resource/no names/no URLs → one rule with more verbs.
            let mergeable = simple.resource_names.is_empty() && simple.non_resource_urls.is_empty();
            let into = missing.iter_mut().find(|m| {
                mergeable
                    && m.resource_names.is_empty()
                    && m.non_resource_urls.is_empty()
                    && m.api_groups == simple.api_groups
                    && m.resources == simple.resources
            });
            match into {
                Some(m) => {
                    if !m.verbs.contains(&simple.verbs[0]) {
                        m.verbs.extend(simple.verbs);
                    }
                }
                None => missing.push(simple),
            }
        }
    }
    missing.sort_by_key(compact_string);
    missing
}

/// One verb × group × resource × name (or verb × URL) per rule, as upstream's `BreakdownRule`.
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| vec![s.clone()];
    let mut out = Vec::new();
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                if rule.resource_names.is_empty() {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        ..Default::default()
                    });
                }
                for name in &rule.resource_names {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        resource_names: one(name),
                        ..Default::default()
                    });
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..Default::default()
            });
        }
    }
    out
}

fn has(set: &[String], item: &str) -> bool {
    set.iter().any(|s| s == item)
}

fn has_all(set: &[String], items: &[String]) -> bool {
    items.iter().all(|i| has(set, i))
}

/// Upstream's `ruleCovers`.
fn covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, "*") || has_all(&owner.verbs, &sub.verbs);
    let groups = has(&owner.api_groups, "*") || has_all(&owner.api_groups, &sub.api_groups);
    let resources = has(&owner.resources, "*")
        || sub.resources.iter().all(|r| {
            has(&owner.resources, r)
                || r.split_once('/')
                    .is_some_and(|(_, subres)| has(&owner.resources, &format!("*/{subres}")))
        });
    let urls = sub.non_resource_urls.iter().all(|u| {
        owner
            .non_resource_urls
            .iter()
            .any(|o| o == u || (o.ends_with('*') && u.starts_with(o.trim_end_matches('*'))))
    });
    let names = if sub.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || has_all(&owner.resource_names, &sub.resource_names)
    };
    verbs && groups && resources && names && urls
}

/// Upstream's `PolicyRule.CompactString`: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
fn compact_string(r: &PolicyRule) -> String {
    let q = |v: &[String]| {
        format!(
            "[{}]",
            v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ")
        )
    };
    let mut parts = Vec::new();
    for (label, v) in [
        ("APIGroups", &r.api_groups),
        ("Resources", &r.resources),
        ("NonResourceURLs", &r.non_resource_urls),
        ("ResourceNames", &r.resource_names),
        ("Verbs", &r.verbs),
    ] {
        if !v.is_empty() {
            parts.push(format!("{label}:{}", q(v)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rbac::Index;
    use keel_api::registry;
    use serde_json::json;

    fn rule(v: Value) -> PolicyRule {
        PolicyRule::from_json(&v)
    }

    #[test]
    fn covering_follows_upstream() {
        let held = vec![
            rule(json!({"apiGroups": [""], "resources": ["pods", "*/log"], "verbs": ["get", "list"]})),
            rule(
                json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["*"]}),
            ),
        ];
        let ok = rule(json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]}));
        assert!(missing_rules(&held, &[ok]).is_empty());
        let named = rule(
            json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["update"]}),
        );
        assert!(missing_rules(&held, &[named]).is_empty());
        let more =
            rule(json!({"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "delete"]}));
        let missing = missing_rules(&held, &[more]);
        let texts: Vec<String> = missing.iter().map(compact_string).collect();
        assert_eq!(
            texts,
            vec![
                r#"{APIGroups:[""], Resources:["configmaps"], Verbs:["get" "delete"]}"#,
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
            ]
        );
    }

    #[test]
    fn bindings_need_bind_or_the_rules() {
        let mut ix = Index::default();
        for r in crate::authz::policy::cluster_roles() {
            ix.upsert("ClusterRole", &r);
        }
        ix.upsert(
            "RoleBinding",
            &json!({"metadata": {"namespace": "team", "name": "a"}, "subjects": [{"kind": "User", "name": "bob"}], "roleRef": {"kind": "ClusterRole", "name": "admin"}}),
        );
        let authz = Authorizer::with_index(ix);
        let bob = UserInfo::authenticated("bob", "", vec!["devs".into()]);
        let rb = registry::find("rbac.authorization.k8s.io", "v1", "rolebindings").expect("rolebindings");
        let binding = |role: &str| json!({"metadata": {"namespace": "team", "name": "x"}, "subjects": [{"kind": "User", "name": "carol"}], "roleRef": {"kind": "ClusterRole", "name": role}});
        // bob holds everything edit grants in team, not cluster-admin.
        assert!(check(&authz, &bob, rb, Some("team"), &binding("edit")).is_ok());
        let err = check(&authz, &bob, rb, Some("team"), &binding("cluster-admin")).expect_err("escalation");
        assert_eq!(err.code, 403);
        assert!(
            err.message.starts_with(
                r#"rolebindings.rbac.authorization.k8s.io "x" is forbidden: user "bob" (groups=["devs" "system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#
            ),
            "{}",
            err.message
        );
        let roles = registry::find("rbac.authorization.k8s.io", "v1", "roles").expect("roles");
        let role = json!({"metadata": {"namespace": "team", "name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]});
        assert!(check(&authz, &bob, roles, Some("team"), &role).is_ok());
        assert!(check(&authz, &bob, roles, Some("other"), &role).is_err());
        let path = ResourcePath {
            rt: roles,
            namespace: Some("team".into()),
            name: None,
            subresource: None,
        };
        assert!(applies(roles, &Method::POST, &path, &bob));
        assert!(!applies(roles, &Method::GET, &path, &bob));
        let admin = UserInfo::authenticated("admin", "", vec![GROUP_MASTERS.into()]);
        assert!(!applies(roles, &Method::POST, &path, &admin));
    }
}
