//! What every namespace has: the `default` ServiceAccount (upstream's serviceaccounts
//! controller) and the `kube-root-ca.crt` ConfigMap with the cluster CA (upstream's
//! root-ca-cert-publisher), recreated when deleted.
//!
//! The primary kind is Namespace; ServiceAccount and ConfigMap events map to their namespace, so
//! a deleted `default` ServiceAccount comes back at once. Terminating namespaces are left alone.

use std::sync::Arc;

use keel_api::client::{ApiClient, WriteOptions};
use keel_api::registry::{self, ResourceType};
use serde_json::{json, Value};

use crate::runner::{Action, Error, Mapper, ObjectRef};

pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// The context of this controller: the client and the CA to publish.
pub struct NamespaceDefaults {
    pub client: Arc<dyn ApiClient>,
    /// PEM of the cluster CA; without it only the ServiceAccount is made.
    pub ca_pem: Option<String>,
    namespaces: &'static ResourceType,
    service_accounts: &'static ResourceType,
    config_maps: &'static ResourceType,
}

impl NamespaceDefaults {
    pub fn new(client: Arc<dyn ApiClient>, ca_pem: Option<String>) -> Result<Self, Error> {
        let find =
            |plural: &'static str| registry::find("", "v1", plural).ok_or(Error::MissingResource(plural));
        Ok(NamespaceDefaults {
            client,
            ca_pem,
            namespaces: find("namespaces")?,
            service_accounts: find("serviceaccounts")?,
            config_maps: find("configmaps")?,
        })
    }

    pub fn namespaces(&self) -> &'static ResourceType {
        self.namespaces
    }

    pub fn service_accounts(&self) -> &'static ResourceType {
        self.service_accounts
    }

    pub fn config_maps(&self) -> &'static ResourceType {
        self.config_maps
    }
}

/// Maps a namespaced object to its namespace's key.
pub fn namespace_mapper() -> Mapper {
    Arc::new(|obj: &Value| {
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(|ns| vec![ObjectRef::new(None, ns)])
            .unwrap_or_default()
    })
}

pub async fn reconcile(ns: Arc<Value>, ctx: Arc<NamespaceDefaults>) -> Result<Action, Error> {
    if ns
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Ok(Action::Done);
    }
    let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) else {
        return Ok(Action::Done);
    };
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}});
    ensure(&ctx, ctx.service_accounts, name, "default", sa).await?;
    if let Some(ca) = &ctx.ca_pem {
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": ROOT_CA_CONFIG_MAP,
                "namespace": name,
                "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."},
            },
            "data": {"ca.crt": ca},
        });
        ensure(&ctx, ctx.config_maps, name, ROOT_CA_CONFIG_MAP, cm).await?;
    }
    Ok(Action::Done)
}

/// Creates `obj` unless it exists (a concurrent create is fine; a namespace being deleted
/// refuses new content, which is fine too).
async fn ensure(
    ctx: &NamespaceDefaults,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    obj: Value,
) -> Result<(), Error> {
    match ctx.client.get(rt, Some(ns.to_string()), name.to_string()).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let opts = WriteOptions {
        field_manager: Some("keel-namespace-defaults".into()),
        dry_run: false,
    };
    match ctx.client.create(rt, Some(ns.to_string()), obj, opts).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
