//! What every cluster has from its first start: the namespaces `default`, `kube-system`,
//! `kube-public` and `kube-node-lease`, and the `kubernetes` Service in `default` with its
//! Endpoints. Idempotent: run on every start, it creates only what is missing.

use keel_api::registry;
use keel_api::status::{ApiError, ApiResult};
use serde_json::json;

use crate::objects::{Objects, WriteCtx};

pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

pub async fn ensure(objects: &Objects) -> ApiResult<()> {
    let find = |plural: &str| {
        registry::find("", "v1", plural).ok_or_else(|| ApiError::internal(format!("no {plural}")))
    };
    let namespaces = find("namespaces")?;
    for ns in SYSTEM_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}});
        create_if_missing(objects, namespaces, None, obj).await?;
    }
    let port = objects.config.advertise.port();
    let services = find("services")?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": objects.config.service_cidr.nth(1).to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            "sessionAffinity": "None",
        }
    });
    create_if_missing(objects, services, Some("default"), svc).await?;
    let endpoints = find("endpoints")?;
    let ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{
            "addresses": [{"ip": objects.config.advertise.ip().to_string()}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }]
    });
    create_if_missing(objects, endpoints, Some("default"), ep).await?;
    Ok(())
}

async fn create_if_missing(
    objects: &Objects,
    rt: &'static registry::ResourceType,
    ns: Option<&str>,
    obj: serde_json::Value,
) -> ApiResult<()> {
    let name = crate::objects::object_name(&obj).to_string();
    match objects.get(rt, ns, &name).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => {
            let mut ctx = WriteCtx::default();
            match objects.create(rt, ns, obj, &mut ctx).await {
                Ok(_) => Ok(()),
                Err(e) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
