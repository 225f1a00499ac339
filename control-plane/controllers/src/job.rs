//! Jobs: run pods from the template until `completions` of them succeed, at most `parallelism`
//! at a time, giving up after `backoffLimit` failures or `activeDeadlineSeconds`.
//!
//! Counting is from the pods that exist (upstream's legacy tracking, without the
//! `job-tracking` finalizer): `succeeded` and `failed` never go down, so deleting finished pods
//! does not undo progress. A Job without `completions` is a work queue: it is complete once any
//! pod succeeded and none is active. Finished Jobs get upstream's conditions (`Complete`, or
//! `FailureTarget` then `Failed` with `BackoffLimitExceeded` / `DeadlineExceeded`) and their
//! remaining pods deleted; `suspend` deletes active pods and sets `Suspended`.
//!
//! Replacements of failed pods wait upstream's backoff (10s doubling, at most 6 minutes, from
//! the last failure's time when the pods tell it). Not done: indexed completion mode, pod failure
//! policies, success policies.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use keel_api::client::{ListParams, WriteOptions};
use serde_json::{json, Value};

use crate::events;
use crate::pods;
use crate::replicaset::pod_from_template;
use crate::runner::{Action, Error};
use crate::Context;

const COMPONENT: &str = "job-controller";

fn has_true(job: &Value, kind: &str) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

fn condition(kind: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": reason, "message": message})
}

/// When the last of `failed` failures happened, from the failed pods' container finish times
/// (or their Ready condition's transition), if known.
fn last_failure(pods: &[Value]) -> Option<jiff::Timestamp> {
    pods.iter()
        .filter(|p| pods::phase(p) == "Failed")
        .filter_map(|p| {
            let finished = p
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.pointer("/state/terminated/finishedAt").and_then(Value::as_str))
                .filter_map(keel_api::time::parse)
                .max();
            finished.or_else(|| {
                p.pointer("/status/conditions")?
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")?
                    .get("lastTransitionTime")?
                    .as_str()
                    .and_then(keel_api::time::parse)
            })
        })
        .max()
}

/// How long to wait before creating replacements, if at all (upstream's pod failure backoff:
/// 10s doubling per failure, at most 6 minutes, counted from the last failure).
fn replacement_delay(pods: &[Value], failed: i64) -> Option<Duration> {
    if failed <= 0 {
        return None;
    }
    let last = last_failure(pods)?;
    let backoff = (10i64 << (failed - 1).min(6)).min(360);
    let since = jiff::Timestamp::now().as_second() - last.as_second();
    (since < backoff).then(|| Duration::from_secs((backoff - since) as u64))
}

/// One reconcile pass of a Job.
pub async fn reconcile(job: Arc<Value>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pods::namespace(&job);
    let uid = pods::uid(&job).to_string();
    let finished = has_true(&job, "Complete") || has_true(&job, "Failed");
    let list = ctx
        .client
        .list(ctx.kinds.pods, ns.clone(), ListParams::default())
        .await?;
    let owned: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter(|p| pods::controller_uid(p) == Some(uid.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let active: Vec<&Value> = owned.iter().filter(|p| pods::is_active(p)).collect();
    let terminating = owned
        .iter()
        .filter(|p| pods::is_terminating(p) && !pods::is_terminal(p))
        .count();
    let count = |phase: &str| owned.iter().filter(|p| pods::phase(p) == phase).count() as i64;
    let prev = |f: &str| {
        job.pointer(&format!("/status/{f}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let succeeded = count("Succeeded").max(prev("succeeded"));
    let failed = count("Failed").max(prev("failed"));

    let spec = |f: &str| job.pointer(&format!("/spec/{f}")).and_then(Value::as_i64);
    let completions = spec("completions");
    let parallelism = spec("parallelism").unwrap_or(1).max(0);
    let backoff_limit = spec("backoffLimit").unwrap_or(6);
    let suspended = job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
    let now = keel_api::time::now_rfc3339();
    let mut status = job
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if status.get("startTime").is_none() && !suspended {
        status["startTime"] = json!(now);
    }

    // Has the job just finished, one way or the other?
    let mut failure: Option<(&str, &str)> = None;
    let mut complete = false;
    if !finished {
        let deadline = spec("activeDeadlineSeconds");
        let started = status
            .get("startTime")
            .and_then(Value::as_str)
            .map(keel_api::time::seconds_since);
        if failed > backoff_limit {
            failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        } else if let (Some(d), Some(s)) = (deadline, started) {
            if s >= d && !suspended {
                failure = Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ));
            }
        }
        complete = failure.is_none()
            && match completions {
                Some(c) => succeeded >= c,
                None => succeeded > 0 && active.is_empty(),
            };
    }

    let want_active = if finished || failure.is_some() || complete || suspended {
        0
    } else {
        match completions {
            Some(c) => parallelism.min((c - succeeded).max(0)),
            None if succeeded > 0 => 0,
            None => parallelism,
        }
    };
    let have = active.len() as i64;
    let mut active_now = have;
    // After failures, replacements wait 10s, 20s, 40s… (at most 6 minutes) from the last one.
    let wait = replacement_delay(&owned, failed);
    if have < want_active && wait.is_none() {
        let results = join_all((0..want_active - have).map(|_| {
            let pod = pod_from_template(ctx.kinds.jobs, &job);
            ctx.client
                .create(ctx.kinds.pods, ns.clone(), pod, WriteOptions::default())
        }))
        .await;
        for r in results {
            match r {
                Ok(p) => {
                    active_now += 1;
                    ctx.record(
                        COMPONENT,
                        &job,
                        events::NORMAL,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", pods::name(&p)),
                    );
                }
                Err(e) => {
                    ctx.record(
                        COMPONENT,
                        &job,
                        events::WARNING,
                        "FailedCreate",
                        &format!("Error creating: {}", e.message),
                    );
                }
            }
        }
    } else if have > want_active {
        let mut doomed: Vec<Value> = active.iter().map(|p| (*p).clone()).collect();
        pods::sort_for_deletion(&mut doomed);
        doomed.truncate((have - want_active) as usize);
        let results = join_all(doomed.iter().map(|p| {
            ctx.client.delete(
                ctx.kinds.pods,
                ns.clone(),
                pods::name(p).to_string(),
                json!({"propagationPolicy": "Background"}),
            )
        }))
        .await;
        for (p, r) in doomed.iter().zip(results) {
            if r.is_ok() || matches!(&r, Err(e) if e.code == 404) {
                active_now -= 1;
                ctx.record(
                    COMPONENT,
                    &job,
                    events::NORMAL,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", pods::name(p)),
                );
            }
        }
    }

    status["active"] = json!(active_now);
    status["succeeded"] = json!(succeeded);
    status["failed"] = json!(failed);
    status["ready"] = json!(active.iter().filter(|p| pods::is_ready(p)).count());
    status["terminating"] = json!(terminating);
    status["uncountedTerminatedPods"] = json!({});
    if let Some((reason, message)) = failure {
        conditions.push(condition("FailureTarget", reason, message, &now));
        conditions.push(condition("Failed", reason, message, &now));
        ctx.record(COMPONENT, &job, events::WARNING, reason, message);
    } else if complete {
        conditions.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &now,
        ));
        conditions.push(condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &now,
        ));
        status["completionTime"] = json!(now);
        ctx.record(COMPONENT, &job, events::NORMAL, "Completed", "Job completed");
    }
    let was_suspended = has_true(&job, "Suspended");
    if suspended && !was_suspended {
        conditions.retain(|c| c["type"] != "Suspended");
        conditions.push(condition("Suspended", "JobSuspended", "Job suspended", &now));
    } else if !suspended && was_suspended {
        for c in conditions.iter_mut().filter(|c| c["type"] == "Suspended") {
            *c = json!({"type": "Suspended", "status": "False", "lastProbeTime": now, "lastTransitionTime": now,
                        "reason": "JobResumed", "message": "Job resumed"});
        }
    }
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
    }
    if job.get("status") != Some(&status) {
        let mut updated = (*job).clone();
        updated["status"] = status;
        ctx.client
            .update(
                ctx.kinds.jobs,
                ns,
                updated,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await?;
    }
    if let Some(w) = wait.filter(|_| have < want_active) {
        return Ok(Action::RequeueAfter(w));
    }
    // A deadline is a timer, not an event.
    match (
        spec("activeDeadlineSeconds"),
        finished || failure.is_some() || complete,
    ) {
        (Some(d), false) => {
            let elapsed = job
                .pointer("/status/startTime")
                .and_then(Value::as_str)
                .map(keel_api::time::seconds_since)
                .unwrap_or(0);
            Ok(Action::RequeueAfter(Duration::from_secs(
                (d - elapsed).max(1) as u64
            )))
        }
        _ => Ok(Action::Done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_back_off_from_the_last_failure() {
        let now = jiff::Timestamp::now();
        let failed_at = |secs_ago: i64| {
            let t = jiff::Timestamp::from_second(now.as_second() - secs_ago).unwrap_or(now);
            json!({"status": {"phase": "Failed", "containerStatuses": [
                {"state": {"terminated": {"finishedAt": keel_api::time::format_rfc3339(t)}}}]}})
        };
        // One failure 3s ago: wait about 7s more.
        let wait = replacement_delay(&[failed_at(3)], 1).map(|d| d.as_secs());
        assert!(matches!(wait, Some(6..=7)), "{wait:?}");
        // Two failures, the last 15s ago: 20s backoff, about 5s left.
        let wait = replacement_delay(&[failed_at(40), failed_at(15)], 2).map(|d| d.as_secs());
        assert!(matches!(wait, Some(4..=5)), "{wait:?}");
        // Long ago, or no time known: no wait.
        assert_eq!(replacement_delay(&[failed_at(1000)], 3), None);
        assert_eq!(
            replacement_delay(&[json!({"status": {"phase": "Failed"}})], 1),
            None
        );
    }
}
