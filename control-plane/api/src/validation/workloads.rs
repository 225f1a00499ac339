//! Workloads: Deployments, ReplicaSets, StatefulSets, DaemonSets, ReplicationControllers
//! (`pkg/apis/apps/validation`, core RC), Jobs and CronJobs (`pkg/apis/batch/validation`),
//! HPAs and PodDisruptionBudgets.

use serde_json::Value;

use super::meta::labels;
use super::pod::{template, template_with_volumes};
use super::{arr, cron, go, s, semantic_eq, Errs};
use crate::selector::LabelSelector;

fn int(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

/// `ValidateLabelSelector` (operators, values per operator, keys and values) at `path`.
fn label_selector(e: &mut Errs, sel: &Value, path: &str) {
    for (i, expr) in arr(sel, "/matchExpressions").iter().enumerate() {
        let base = format!("{path}.matchExpressions[{i}]");
        let values = arr(expr, "/values");
        match s(expr, "/operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    e.required(
                        format!("{base}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    e.forbidden(
                        format!("{base}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
            }
            other => e.invalid(
                format!("{base}.operator"),
                &Value::from(other),
                "not a valid selector operator",
            ),
        }
        let key = s(expr, "/key");
        e.invalid_each(
            &format!("{base}.key"),
            &Value::from(key),
            super::names::is_qualified_name(key),
        );
        for (j, v) in values.iter().enumerate() {
            let val = v.as_str().unwrap_or("");
            e.invalid_each(
                &format!("{base}.values[{j}]"),
                v,
                super::names::is_valid_label_value(val),
            );
        }
    }
    labels(e, &format!("{path}.matchLabels"), sel.get("matchLabels"));
}

fn selector_is_empty(sel: &Value) -> bool {
    arr(sel, "/matchExpressions").is_empty()
        && sel
            .get("matchLabels")
            .and_then(Value::as_object)
            .is_none_or(|m| m.is_empty())
}

/// The selector checks shared by Deployments, ReplicaSets, StatefulSets and DaemonSets, then
/// the template: labels must match, restart policy must be Always.
fn selector_and_template(e: &mut Errs, obj: &Value, kind: &str, template_restart_always: bool) {
    let sel = obj.pointer("/spec/selector").filter(|v| !v.is_null());
    match sel {
        None => e.required("spec.selector", ""),
        Some(sel) => {
            label_selector(e, sel, "spec.selector");
            if selector_is_empty(sel) {
                e.invalid_raw(
                    "spec.selector",
                    &go::label_selector(sel),
                    &format!("empty selector is invalid for {kind}"),
                );
            }
        }
    }
    let tpl = obj.pointer("/spec/template");
    if let Ok(selector) = LabelSelector::from_json(sel) {
        if let Some(tpl) = tpl.filter(|t| t.is_object()) {
            let tpl_labels = tpl.pointer("/metadata/labels");
            if !selector.is_everything() && !selector.matches(tpl_labels.and_then(Value::as_object)) {
                e.invalid_raw(
                    "spec.template.metadata.labels",
                    &go::string_map(tpl_labels),
                    "`selector` does not match template `labels`",
                );
            }
        }
    } else if let Some(sel) = sel {
        e.invalid_raw(
            "spec.selector",
            &go::label_selector(sel),
            "invalid label selector",
        );
    }
    let claims: Vec<String> = arr(obj, "/spec/volumeClaimTemplates")
        .iter()
        .map(|c| s(c, "/metadata/name").to_string())
        .collect();
    template_with_volumes(e, tpl, "spec.template", &claims);
    if let Some(tpl) = tpl.filter(|t| t.is_object()) {
        let rp = s(tpl, "/spec/restartPolicy");
        if template_restart_always && rp != "Always" {
            e.not_supported("spec.template.spec.restartPolicy", &Value::from(rp), &["Always"]);
        }
        if tpl
            .pointer("/spec/activeDeadlineSeconds")
            .is_some_and(|v| !v.is_null())
        {
            let owner = match kind {
                "deployment" => "ReplicaSet",
                "statefulset" => "StatefulSet",
                "daemonset" => "DaemonSet",
                _ => "ReplicaSet",
            };
            e.forbidden(
                "spec.template.spec.activeDeadlineSeconds",
                &format!("activeDeadlineSeconds in {owner} is not Supported"),
            );
        }
    }
}

/// `ValidatePositiveIntOrPercent` + `IsNotMoreThan100Percent` where asked.
fn int_or_percent(e: &mut Errs, v: Option<&Value>, field: &str, max_100: bool) -> i64 {
    match v {
        Some(Value::String(p)) => {
            let digits = p
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            match digits.and_then(|d| d.parse::<i64>().ok()) {
                Some(n) => {
                    if max_100 && n > 100 {
                        e.invalid_raw(field, p, "must not be greater than 100%");
                    }
                    n
                }
                None => {
                    e.invalid_raw(field, p, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')");
                    0
                }
            }
        }
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            if n < 0 {
                e.invalid_raw(field, &n.to_string(), "must be greater than or equal to 0");
            }
            n
        }
        _ => 0,
    }
}

pub(super) fn deployment(e: &mut Errs, obj: &Value) {
    e.nonnegative("spec.replicas", obj.pointer("/spec/replicas"));
    selector_and_template(e, obj, "deployment", true);
    let strategy = obj.pointer("/spec/strategy");
    match strategy.map(|st| s(st, "/type")).unwrap_or("") {
        "Recreate" => {
            if strategy
                .and_then(|st| st.get("rollingUpdate"))
                .is_some_and(|r| !r.is_null())
            {
                e.forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                );
            }
        }
        "RollingUpdate" => match strategy
            .and_then(|st| st.get("rollingUpdate"))
            .filter(|r| !r.is_null())
        {
            None => e.required(
                "spec.strategy.rollingUpdate",
                "this should be defaulted and never be nil",
            ),
            Some(ru) => {
                let path = "spec.strategy.rollingUpdate";
                let unavailable = int_or_percent(
                    e,
                    ru.get("maxUnavailable"),
                    &format!("{path}.maxUnavailable"),
                    true,
                );
                let surge = int_or_percent(e, ru.get("maxSurge"), &format!("{path}.maxSurge"), false);
                if unavailable == 0 && surge == 0 {
                    e.invalid_raw(
                        format!("{path}.maxUnavailable"),
                        &ru.get("maxUnavailable")
                            .map(go::int_or_string)
                            .unwrap_or_else(|| "0".into()),
                        "may not be 0 when `maxSurge` is 0",
                    );
                }
            }
        },
        other => e.not_supported(
            "spec.strategy.type",
            &Value::from(other),
            &["Recreate", "RollingUpdate"],
        ),
    }
    e.nonnegative("spec.minReadySeconds", obj.pointer("/spec/minReadySeconds"));
    e.nonnegative(
        "spec.revisionHistoryLimit",
        obj.pointer("/spec/revisionHistoryLimit"),
    );
    if let Some(pd) = int(obj, "/spec/progressDeadlineSeconds") {
        e.nonnegative("spec.progressDeadlineSeconds", Some(&Value::from(pd)));
        if pd <= int(obj, "/spec/minReadySeconds").unwrap_or(0) {
            e.invalid(
                "spec.progressDeadlineSeconds",
                &Value::from(pd),
                "must be greater than minReadySeconds",
            );
        }
    }
}

pub(super) fn replica_set(e: &mut Errs, obj: &Value) {
    e.nonnegative("spec.replicas", obj.pointer("/spec/replicas"));
    e.nonnegative("spec.minReadySeconds", obj.pointer("/spec/minReadySeconds"));
    selector_and_template(e, obj, "deployment", true);
}

pub(super) fn daemon_set(e: &mut Errs, obj: &Value) {
    selector_and_template(e, obj, "daemonset", true);
    e.nonnegative("spec.minReadySeconds", obj.pointer("/spec/minReadySeconds"));
    e.nonnegative(
        "spec.revisionHistoryLimit",
        obj.pointer("/spec/revisionHistoryLimit"),
    );
    let us = obj.pointer("/spec/updateStrategy");
    match us.map(|u| s(u, "/type")).unwrap_or("") {
        "OnDelete" => {}
        "RollingUpdate" => {
            if let Some(ru) = us.and_then(|u| u.get("rollingUpdate")).filter(|r| !r.is_null()) {
                let path = "spec.updateStrategy.rollingUpdate";
                let unavailable = int_or_percent(
                    e,
                    ru.get("maxUnavailable"),
                    &format!("{path}.maxUnavailable"),
                    true,
                );
                let surge = int_or_percent(e, ru.get("maxSurge"), &format!("{path}.maxSurge"), true);
                if unavailable == 0 && surge == 0 {
                    e.invalid_raw(
                        format!("{path}.maxUnavailable"),
                        &ru.get("maxUnavailable")
                            .map(go::int_or_string)
                            .unwrap_or_else(|| "0".into()),
                        "may not be 0 when `maxSurge` is 0",
                    );
                }
            }
        }
        "" => e.required("spec.updateStrategy.type", ""),
        other => e.not_supported(
            "spec.updateStrategy.type",
            &Value::from(other),
            &["OnDelete", "RollingUpdate"],
        ),
    }
}

pub(super) fn stateful_set(e: &mut Errs, obj: &Value) {
    match s(obj, "/spec/podManagementPolicy") {
        "OrderedReady" | "Parallel" => {}
        "" => e.required("spec.podManagementPolicy", ""),
        other => e.invalid(
            "spec.podManagementPolicy",
            &Value::from(other),
            "must be 'OrderedReady' or 'Parallel'",
        ),
    }
    match s(obj, "/spec/updateStrategy/type") {
        "RollingUpdate" => {
            if let Some(p) = obj.pointer("/spec/updateStrategy/rollingUpdate/partition") {
                e.nonnegative("spec.updateStrategy.rollingUpdate.partition", Some(p));
            }
        }
        "OnDelete" => {
            if obj
                .pointer("/spec/updateStrategy/rollingUpdate")
                .is_some_and(|v| !v.is_null())
            {
                e.invalid_raw(
                    "spec.updateStrategy.rollingUpdate",
                    "apps.RollingUpdateStatefulSetStrategy{…}",
                    "only allowed for updateStrategy 'RollingUpdate'",
                );
            }
        }
        "" => e.required("spec.updateStrategy", ""),
        other => e.invalid(
            "spec.updateStrategy",
            &Value::from(other),
            "must be 'RollingUpdate' or 'OnDelete'",
        ),
    }
    e.nonnegative("spec.replicas", obj.pointer("/spec/replicas"));
    e.nonnegative("spec.minReadySeconds", obj.pointer("/spec/minReadySeconds"));
    selector_and_template(e, obj, "statefulset", true);
}

const STS_UPDATE_FORBIDDEN: &str = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

pub(super) fn stateful_set_update(e: &mut Errs, new: &Value, old: &Value) {
    let strip = |v: &Value| {
        let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(m) = spec.as_object_mut() {
            for k in [
                "replicas",
                "template",
                "updateStrategy",
                "minReadySeconds",
                "ordinals",
                "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy",
            ] {
                m.remove(k);
            }
        }
        spec
    };
    if !semantic_eq(Some(&strip(new)), Some(&strip(old))) {
        e.forbidden("spec", STS_UPDATE_FORBIDDEN);
    }
}

/// ReplicationControllers: a plain-map selector that must match the template.
pub(super) fn replication_controller(e: &mut Errs, obj: &Value) {
    e.nonnegative("spec.replicas", obj.pointer("/spec/replicas"));
    e.nonnegative("spec.minReadySeconds", obj.pointer("/spec/minReadySeconds"));
    let sel = obj.pointer("/spec/selector").and_then(Value::as_object);
    match sel {
        Some(m) if !m.is_empty() => labels(e, "spec.selector", obj.pointer("/spec/selector")),
        _ => e.required("spec.selector", ""),
    }
    let Some(tpl) = obj.pointer("/spec/template").filter(|t| t.is_object()) else {
        e.required("spec.template", "");
        return;
    };
    if let Some(m) = sel.filter(|m| !m.is_empty()) {
        let tpl_labels = tpl.pointer("/metadata/labels");
        if !LabelSelector::from_map(m).matches(tpl_labels.and_then(Value::as_object)) {
            e.invalid_raw(
                "spec.template.metadata.labels",
                &go::string_map(tpl_labels),
                "`selector` does not match template `labels`",
            );
        }
    }
    template(e, Some(tpl), "spec.template");
    let rp = s(tpl, "/spec/restartPolicy");
    if rp != "Always" {
        e.not_supported("spec.template.spec.restartPolicy", &Value::from(rp), &["Always"]);
    }
}

/// `ValidateJobSpec` at `path` (`spec`, or `spec.jobTemplate.spec` of a CronJob, where the
/// selector may still be absent).
fn job_spec(e: &mut Errs, spec: &Value, path: &str, selector_required: bool) {
    for key in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
    ] {
        e.nonnegative(&format!("{path}.{key}"), spec.get(key));
    }
    if let Some(ads) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if ads == 0 {
            e.invalid(
                format!("{path}.activeDeadlineSeconds"),
                &Value::from(ads),
                "must be greater than 0",
            );
        }
    }
    let sel = spec.get("selector").filter(|v| !v.is_null());
    match sel {
        None if selector_required => e.required(format!("{path}.selector"), ""),
        None => {}
        Some(sel) => {
            label_selector(e, sel, &format!("{path}.selector"));
            if let Ok(selector) = LabelSelector::from_json(Some(sel)) {
                let tpl_labels = spec.pointer("/template/metadata/labels");
                if !selector.matches(tpl_labels.and_then(Value::as_object)) {
                    e.invalid_raw(
                        format!("{path}.template.metadata.labels"),
                        &go::string_map(tpl_labels),
                        "`selector` does not match template `labels`",
                    );
                }
            }
        }
    }
    match s(spec, "/completionMode") {
        "" | "NonIndexed" => {}
        "Indexed" => {
            if spec.get("completions").is_none_or(Value::is_null) {
                e.required(format!("{path}.completions"), "when completion mode is Indexed");
            }
        }
        other => e.not_supported(
            format!("{path}.completionMode"),
            &Value::from(other),
            &["NonIndexed", "Indexed"],
        ),
    }
    template(e, spec.get("template"), &format!("{path}.template"));
    if let Some(tpl) = spec.get("template").filter(|t| t.is_object()) {
        let rp = s(tpl, "/spec/restartPolicy");
        if rp != "OnFailure" && rp != "Never" {
            e.not_supported(
                format!("{path}.template.spec.restartPolicy"),
                &Value::from(rp),
                &["OnFailure", "Never"],
            );
        } else if rp == "OnFailure" && spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
            e.invalid(
                format!("{path}.template.spec.restartPolicy"),
                &Value::from(rp),
                "only \"Never\" is supported when podFailurePolicy is specified",
            );
        }
    }
}

pub(super) fn job(e: &mut Errs, obj: &Value) {
    match obj.get("spec") {
        Some(spec) if spec.is_object() => job_spec(e, spec, "spec", true),
        _ => e.required("spec", ""),
    }
}

pub(super) fn job_update(e: &mut Errs, new: &Value, old: &Value) {
    super::immutable_selector(e, new, old);
    e.immutable(
        "spec.completionMode",
        new.pointer("/spec/completionMode"),
        old.pointer("/spec/completionMode"),
    );
    let indexed = s(new, "/spec/completionMode") == "Indexed";
    if !indexed {
        e.immutable(
            "spec.completions",
            new.pointer("/spec/completions"),
            old.pointer("/spec/completions"),
        );
    }
    let suspended = old.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
    if !suspended && !semantic_eq(new.pointer("/spec/template"), old.pointer("/spec/template")) {
        e.invalid_raw("spec.template", "core.PodTemplateSpec{…}", "field is immutable");
    }
}

pub(super) fn cron_job(e: &mut Errs, obj: &Value) {
    let name = s(obj, "/metadata/name");
    if name.len() > 52 {
        e.invalid(
            "metadata.name",
            &Value::from(name),
            "must be no more than 52 characters",
        );
    }
    let schedule = s(obj, "/spec/schedule");
    if schedule.is_empty() {
        e.required("spec.schedule", "");
    } else {
        if let Err(msg) = cron::parse_standard(schedule) {
            e.invalid("spec.schedule", &Value::from(schedule), &msg);
        }
        if schedule.contains("TZ") {
            e.invalid(
                "spec.schedule",
                &Value::from(schedule),
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            );
        }
    }
    if let Some(tz) = obj.pointer("/spec/timeZone").and_then(Value::as_str) {
        let ok = !tz.is_empty()
            && !tz.starts_with('/')
            && !tz.contains("..")
            && tz
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
        if !ok {
            e.invalid("spec.timeZone", &Value::from(tz), "unknown time zone");
        }
    }
    match s(obj, "/spec/concurrencyPolicy") {
        "Allow" | "Forbid" | "Replace" => {}
        "" => e.required("spec.concurrencyPolicy", ""),
        other => e.not_supported(
            "spec.concurrencyPolicy",
            &Value::from(other),
            &["Allow", "Forbid", "Replace"],
        ),
    }
    for key in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        e.nonnegative(&format!("spec.{key}"), obj.pointer(&format!("/spec/{key}")));
    }
    match obj.pointer("/spec/jobTemplate/spec") {
        Some(spec) if spec.is_object() => job_spec(e, spec, "spec.jobTemplate.spec", false),
        _ => e.required("spec.jobTemplate.spec.template", ""),
    }
}

pub(super) fn hpa(e: &mut Errs, obj: &Value) {
    let min = int(obj, "/spec/minReplicas");
    if let Some(m) = min {
        if m < 1 {
            e.invalid(
                "spec.minReplicas",
                &Value::from(m),
                "must be greater than or equal to 1",
            );
        }
    }
    let max = int(obj, "/spec/maxReplicas").unwrap_or(0);
    if max < 1 {
        e.invalid("spec.maxReplicas", &Value::from(max), "must be greater than 0");
    } else if min.is_some_and(|m| max < m) {
        e.invalid(
            "spec.maxReplicas",
            &Value::from(max),
            "must be greater than or equal to `minReplicas`",
        );
    }
    for key in ["kind", "name"] {
        if s(obj, &format!("/spec/scaleTargetRef/{key}")).is_empty() {
            e.required(format!("spec.scaleTargetRef.{key}"), "");
        }
    }
    if let Some(t) = int(obj, "/spec/targetCPUUtilizationPercentage") {
        if t < 1 {
            e.invalid(
                "spec.targetCPUUtilizationPercentage",
                &Value::from(t),
                "must be greater than 0",
            );
        }
    }
}

pub(super) fn pdb(e: &mut Errs, obj: &Value) {
    let min = obj.pointer("/spec/minAvailable").filter(|v| !v.is_null());
    let max = obj.pointer("/spec/maxUnavailable").filter(|v| !v.is_null());
    if let (Some(m), Some(_)) = (min, max) {
        e.invalid_raw(
            "spec.minAvailable",
            &go::int_or_string(m),
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    if min.is_some() {
        int_or_percent(e, min, "spec.minAvailable", true);
    }
    if max.is_some() {
        int_or_percent(e, max, "spec.maxUnavailable", true);
    }
    if let Some(sel) = obj.pointer("/spec/selector").filter(|v| !v.is_null()) {
        label_selector(e, sel, "spec.selector");
    }
}
