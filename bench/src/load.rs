//! Paced load: N concurrent workers issuing operations at a fixed aggregate rate.
//!
//! Every worker runs its operations one after another (a client waits for its answer before it
//! sends the next request) on its own schedule of one operation every `workers / rate` seconds,
//! offset from the others so that they do not all fire at once. Latency is measured from the
//! moment a request is sent to its answer; the achieved rate is reported next to it so that a
//! backend too slow to keep the pace is visible rather than hidden.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::stats::Latencies;

/// What a paced run measured.
pub struct Run {
    pub latencies: Latencies,
    /// Operations per second actually completed.
    pub rate: f64,
}

/// Runs `op(worker, iteration)` from `workers` concurrent workers at `rate` operations per second
/// in total, for `duration` (or `None`: until each worker ran `per_worker` operations).
pub async fn paced<F, Fut>(workers: usize, rate: f64, limit: Limit, op: F) -> anyhow::Result<Run>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let interval = Duration::from_secs_f64(workers as f64 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::new();
            let mut next = start + interval.mul_f64(w as f64 / workers as f64);
            let mut i = 0u64;
            loop {
                match limit {
                    Limit::For(d) if next >= start + d => break,
                    Limit::Count(n) if i >= n => break,
                    _ => {}
                }
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                let t = Instant::now();
                op(w, i)
                    .await
                    .with_context(|| format!("worker {w}, operation {i}"))?;
                lat.push(t.elapsed());
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Latencies::new();
    for t in tasks {
        latencies.extend(t.await.context("worker panicked")??);
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    Ok(Run { latencies, rate })
}

/// How long a paced run lasts.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// Until this much time has passed since the start.
    For(Duration),
    /// Until every worker ran this many operations.
    Count(u64),
}
