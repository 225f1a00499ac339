//! CronJobs: a Job from `jobTemplate` at each time of a cron `schedule` (UTC).
//!
//! Each pass finds the most recent scheduled time after `status.lastScheduleTime` (or the
//! creation time) that is not in the future, and if there is one — and it is within
//! `startingDeadlineSeconds`, and `concurrencyPolicy` allows (`Forbid` skips while a Job runs,
//! `Replace` deletes the running ones) — creates the Job `<cronjob>-<minutes since the epoch>`,
//! as upstream names them, so a retried pass cannot create it twice. The pass re-queues itself for
//! the next scheduled time. Finished Jobs beyond `successfulJobsHistoryLimit` (3) and
//! `failedJobsHistoryLimit` (1) are deleted; `status.active` lists the running ones.
//!
//! The schedule grammar is the standard five fields (minute, hour, day of month, month, day of
//! week) with `*`, lists, ranges, steps and month/day names, plus `@hourly`, `@daily`,
//! `@midnight`, `@weekly`, `@monthly`, `@yearly` and `@annually`. `timeZone` is not supported.

use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use keel_api::client::{ListParams, WriteOptions};
use serde_json::{json, Value};

use crate::events;
use crate::pods;
use crate::runner::{Action, Error};
use crate::Context;

const COMPONENT: &str = "cronjob-controller";
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// A parsed schedule: which minutes, hours, days, months and weekdays match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: either may match (cron's rule).
    day_or: bool,
}

/// One field as a bit set; `names` are the values from `lo` on (`jan` = 1, `sun` = 0).
fn field(text: &str, lo: u32, hi: u32, names: &[&str]) -> Option<u64> {
    let value = |s: &str| -> Option<u32> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Some(i as u32 + lo);
        }
        s.parse().ok()
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (item, 1),
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            (a, if item.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return None;
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Some(bits)
}

impl Schedule {
    pub fn parse(text: &str) -> Option<Schedule> {
        let text = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() != 5 {
            return None;
        }
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        Some(Schedule {
            minutes: field(f[0], 0, 59, &[])?,
            hours: field(f[1], 0, 23, &[])?,
            days: field(f[2], 1, 31, &[])?,
            months: field(f[3], 1, 12, MONTHS)?,
            // 7 is Sunday too.
            weekdays: field(f[4], 0, 7, DAYS).map(|b| (b | (b >> 7)) & 0x7f)?,
            day_or: ![f[2], f[4]].iter().any(|d| *d == "*" || *d == "?"),
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.days & (1u64 << dt.day() as u32) != 0;
        let dow = self.weekdays & (1u64 << dt.weekday().to_sunday_zero_offset() as u32) != 0;
        if self.day_or {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first scheduled time strictly after `t`.
    pub fn next(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(TimeZone::UTC).datetime();
        // The next whole minute.
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        // Five years of searching covers every valid schedule (Feb 29 on a given weekday).
        let limit = start.checked_add(5.years()).ok()?;
        while dt <= limit {
            if self.months & (1u64 << dt.month() as u32) == 0 {
                dt = dt
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt
                    .checked_add(1.day())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if self.hours & (1u64 << dt.hour() as u32) == 0 {
                dt = dt.checked_add(1.hour()).ok()?.with().minute(0).build().ok()?;
                continue;
            }
            if self.minutes & (1u64 << dt.minute() as u32) == 0 {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            return dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
        }
        None
    }
}

fn finished(job: &Value) -> Option<bool> {
    let conds = job.pointer("/status/conditions")?.as_array()?;
    conds.iter().find_map(|c| {
        (c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed"))
            .then(|| c["type"] == "Complete")
    })
}

/// One reconcile pass of a CronJob.
pub async fn reconcile(cj: Arc<Value>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pods::namespace(&cj);
    let Some(schedule) = cj
        .pointer("/spec/schedule")
        .and_then(Value::as_str)
        .and_then(Schedule::parse)
    else {
        tracing::warn!(cronjob = pods::name(&cj), "unparseable schedule; not scheduling");
        return Ok(Action::Done);
    };
    let uid = pods::uid(&cj);
    let list = ctx
        .client
        .list(ctx.kinds.jobs, ns.clone(), ListParams::default())
        .await?;
    let jobs: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|j| pods::controller_uid(j) == Some(uid))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut active: Vec<&Value> = jobs
        .iter()
        .filter(|j| finished(j).is_none() && !pods::is_terminating(j))
        .collect();

    // History limits.
    let created = |j: &&Value| {
        j.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut succeeded: Vec<&Value> = jobs.iter().filter(|j| finished(j) == Some(true)).collect();
    succeeded.sort_by_key(created);
    let mut failed: Vec<&Value> = jobs.iter().filter(|j| finished(j) == Some(false)).collect();
    failed.sort_by_key(created);
    let limit = |f: &str, d: i64| {
        cj.pointer(&format!("/spec/{f}"))
            .and_then(Value::as_i64)
            .unwrap_or(d)
            .max(0) as usize
    };
    let mut doomed: Vec<&Value> = Vec::new();
    for (list, keep) in [
        (&succeeded, limit("successfulJobsHistoryLimit", 3)),
        (&failed, limit("failedJobsHistoryLimit", 1)),
    ] {
        if list.len() > keep {
            doomed.extend(list.iter().take(list.len() - keep));
        }
    }
    for j in doomed {
        let r = ctx
            .client
            .delete(
                ctx.kinds.jobs,
                ns.clone(),
                pods::name(j).to_string(),
                json!({"propagationPolicy": "Background"}),
            )
            .await;
        if r.is_ok() {
            ctx.record(
                COMPONENT,
                &cj,
                events::NORMAL,
                "SuccessfulDelete",
                &format!("Deleted job {}", pods::name(j)),
            );
        }
    }

    let now = Timestamp::now();
    let mut status = cj
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    let suspended = cj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
    if !suspended {
        let earliest = status
            .get("lastScheduleTime")
            .or_else(|| cj.pointer("/metadata/creationTimestamp"))
            .and_then(Value::as_str)
            .and_then(keel_api::time::parse)
            .unwrap_or(now);
        // The most recent missed time (upstream also starts only the latest of several).
        let mut due = None;
        let mut t = earliest;
        for _ in 0..100_000 {
            match schedule.next(t) {
                Some(n) if n <= now => {
                    due = Some(n);
                    t = n;
                }
                _ => break,
            }
        }
        let deadline = cj
            .pointer("/spec/startingDeadlineSeconds")
            .and_then(Value::as_i64);
        if let Some(at) = due.filter(|at| deadline.is_none_or(|d| now.as_second() - at.as_second() <= d)) {
            let policy = cj
                .pointer("/spec/concurrencyPolicy")
                .and_then(Value::as_str)
                .unwrap_or("Allow");
            let blocked = policy == "Forbid" && !active.is_empty();
            if blocked {
                tracing::debug!(
                    cronjob = pods::name(&cj),
                    "a job is still running; skipping this time"
                );
            } else {
                if policy == "Replace" {
                    for j in active.drain(..) {
                        let _ = ctx
                            .client
                            .delete(
                                ctx.kinds.jobs,
                                ns.clone(),
                                pods::name(j).to_string(),
                                json!({"propagationPolicy": "Background"}),
                            )
                            .await;
                        ctx.record(
                            COMPONENT,
                            &cj,
                            events::NORMAL,
                            "SuccessfulDelete",
                            &format!("Deleted job {}", pods::name(j)),
                        );
                    }
                }
                let name = format!("{}-{}", pods::name(&cj), at.as_second() / 60);
                let template = cj.pointer("/spec/jobTemplate").cloned().unwrap_or(json!({}));
                let mut meta = template
                    .get("metadata")
                    .cloned()
                    .filter(Value::is_object)
                    .unwrap_or(json!({}));
                meta["name"] = json!(name);
                if !meta.get("annotations").is_some_and(Value::is_object) {
                    meta["annotations"] = json!({});
                }
                meta["annotations"][SCHEDULED_AT] = json!(keel_api::time::format_rfc3339(at));
                meta["ownerReferences"] = json!([pods::owner_reference(ctx.kinds.cron_jobs, &cj)]);
                let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                                 "spec": template.get("spec").cloned().unwrap_or(json!({}))});
                match ctx
                    .client
                    .create(ctx.kinds.jobs, ns.clone(), job, WriteOptions::default())
                    .await
                {
                    Ok(_) => ctx.record(
                        COMPONENT,
                        &cj,
                        events::NORMAL,
                        "SuccessfulCreate",
                        &format!("Created job {name}"),
                    ),
                    Err(e) if e.code == 409 => {}
                    Err(e) => {
                        ctx.record(
                            COMPONENT,
                            &cj,
                            events::WARNING,
                            "FailedCreate",
                            &format!("Error creating job: {}", e.message),
                        );
                        return Err(e.into());
                    }
                }
                status["lastScheduleTime"] = json!(keel_api::time::format_rfc3339(at));
            }
        }
    }
    // Jobs read before this pass's create show up in the next pass (the create's event).
    let refs: Vec<Value> = active
        .iter()
        .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": pods::name(j), "namespace": j.pointer("/metadata/namespace"),
                        "uid": pods::uid(j), "resourceVersion": j.pointer("/metadata/resourceVersion")}))
        .collect();
    if let Some(s) = status.as_object_mut() {
        if refs.is_empty() {
            s.remove("active");
        } else {
            s.insert("active".into(), json!(refs));
        }
    }
    let last_success = succeeded
        .iter()
        .filter_map(|j| j.pointer("/status/completionTime").and_then(Value::as_str))
        .max();
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(t);
    }
    if cj.get("status") != Some(&status) {
        let mut updated = (*cj).clone();
        updated["status"] = status;
        ctx.client
            .update(
                ctx.kinds.cron_jobs,
                ns,
                updated,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await?;
    }
    Ok(match schedule.next(now) {
        Some(n) => Action::RequeueAfter(Duration::from_secs(
            (n.as_second() - now.as_second()).max(1) as u64
        )),
        None => Action::Done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        keel_api::time::parse(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn next(schedule: &str, after: &str) -> Option<String> {
        Schedule::parse(schedule)?
            .next(at(after))
            .map(keel_api::time::format_rfc3339)
    }

    #[test]
    fn next_times_follow_cron() {
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:07:30Z").as_deref(),
            Some("2026-01-01T10:15:00Z")
        );
        assert_eq!(
            next("0 3 * * *", "2026-01-01T10:00:00Z").as_deref(),
            Some("2026-01-02T03:00:00Z")
        );
        assert_eq!(
            next("30 9 * * mon-fri", "2026-01-02T10:00:00Z").as_deref(),
            Some("2026-01-05T09:30:00Z")
        );
        assert_eq!(
            next("0 0 1 jan,jul *", "2026-02-01T00:00:00Z").as_deref(),
            Some("2026-07-01T00:00:00Z")
        );
        assert_eq!(
            next("@hourly", "2026-01-01T10:59:59Z").as_deref(),
            Some("2026-01-01T11:00:00Z")
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z").as_deref(),
            Some("2028-02-29T00:00:00Z")
        );
        // Day of month OR day of week when both are given; 7 is Sunday.
        assert_eq!(
            next("0 0 13 * 7", "2026-01-01T00:00:00Z").as_deref(),
            Some("2026-01-04T00:00:00Z")
        );
        assert_eq!(Schedule::parse("61 * * * *"), None);
        assert_eq!(Schedule::parse("* * *"), None);
    }
}
