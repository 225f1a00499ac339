//! Store level: the embedded store against etcd, same workload, same run, same disk.
//!
//! Both are driven the way the API server drives its store: writes are compare-and-swap updates
//! on the key's last modification revision (an etcd `Txn` comparing `mod_revision`, the embedded
//! store's `update(.., Some(rev))`), and a write counts as done when the store says it is durable.
//! Reads are linearizable point gets (etcd's default, a `Range` with no revision).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use keel_store::Store;

use crate::load::{paced, Limit, Run};
use crate::stats::Latencies;

/// How hard and how long to push each backend.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub writers: usize,
    pub write_rate: f64,
    pub write_time: Duration,
    pub readers: usize,
    pub read_rate: f64,
    pub read_time: Duration,
    /// Keys the readers pick from.
    pub read_keys: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            writers: 16,
            write_rate: 500.0,
            write_time: Duration::from_secs(8),
            readers: 16,
            read_rate: 2_000.0,
            read_time: Duration::from_secs(4),
            read_keys: 1_000,
        }
    }
}

/// One backend's figures.
#[derive(Default)]
pub struct Figures {
    pub writes: Latencies,
    pub write_rate: f64,
    pub gets: Latencies,
    pub get_rate: f64,
}

/// A backend behind the few verbs the comparison needs.
#[derive(Clone)]
pub enum Kv {
    Embedded(Arc<dyn Store>),
    Etcd(Box<etcd_client::KvClient>),
}

impl Kv {
    /// Writes `key` unconditionally; returns its new modification revision.
    async fn put(&self, key: &str, value: Bytes) -> anyhow::Result<i64> {
        match self {
            Kv::Embedded(s) => {
                let kv = match s.create(key, value.clone()).await {
                    Ok(kv) => kv,
                    Err(keel_store::StoreError::AlreadyExists { .. }) => s.update(key, value, None).await?,
                    Err(e) => return Err(e.into()),
                };
                Ok(kv.mod_revision as i64)
            }
            Kv::Etcd(c) => {
                let resp = c.clone().put(key, value.to_vec(), None).await?;
                Ok(resp.header().context("etcd put without header")?.revision())
            }
        }
    }

    /// Replaces `key` if its modification revision is still `rev`; returns the new one.
    async fn cas(&self, key: &str, value: Bytes, rev: i64) -> anyhow::Result<i64> {
        match self {
            Kv::Embedded(s) => Ok(s.update(key, value, Some(rev as u64)).await?.mod_revision as i64),
            Kv::Etcd(c) => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(key, value.to_vec(), None)]);
                let resp = c.clone().txn(txn).await?;
                if !resp.succeeded() {
                    bail!("etcd compare-and-swap on {key} at {rev} failed");
                }
                Ok(resp.header().context("etcd txn without header")?.revision())
            }
        }
    }

    /// Reads `key`; fails if it does not exist.
    async fn get(&self, key: &str) -> anyhow::Result<usize> {
        let len = match self {
            Kv::Embedded(s) => s.get(key).await?.map(|kv| kv.value.len()),
            Kv::Etcd(c) => c
                .clone()
                .get(key, None)
                .await?
                .kvs()
                .first()
                .map(|kv| kv.value().len()),
        };
        len.with_context(|| format!("{key} not found"))
    }
}

/// A ~3 KB value, the size of a typical Pod as the API server stores it.
pub fn object(i: usize) -> Bytes {
    let mut s = format!(
        "{{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"pod-{i}\",\"namespace\":\"bench\"}},\"spec\":\""
    );
    while s.len() < 3000 {
        s.push_str("abcdefghijklmnopqrstuvwxyz0123456789");
    }
    s.push_str("\"}");
    Bytes::from(s)
}

/// One backend made ready for the workload: its write keys exist (with their revisions) and
/// the keys the readers pick from are filled.
pub struct Prepared {
    kv: Kv,
    revs: Arc<Vec<AtomicI64>>,
}

/// Creates the keys the workload uses in `kv`.
pub async fn prepare(kv: Kv, w: Workload) -> anyhow::Result<Prepared> {
    let revs: Arc<Vec<AtomicI64>> = Arc::new((0..w.writers).map(|_| AtomicI64::new(0)).collect());
    for (i, rev) in revs.iter().enumerate() {
        rev.store(kv.put(&write_key(i), object(i)).await?, Ordering::SeqCst);
    }
    let fill = futures::future::join_all((0..w.read_keys).map(|i| {
        let kv = kv.clone();
        async move { kv.put(&read_key(i), object(i)).await }
    }));
    for r in fill.await {
        r?;
    }
    Ok(Prepared { kv, revs })
}

impl Prepared {
    /// Writers: each updates its own key with compare-and-swap, like controllers updating objects.
    pub async fn writes(&self, w: Workload, limit: Limit) -> anyhow::Result<Run> {
        let kv = self.kv.clone();
        let revs = self.revs.clone();
        let write = move |worker: usize, _i: u64| {
            let kv = kv.clone();
            let revs = revs.clone();
            async move {
                let rev = revs[worker].load(Ordering::SeqCst);
                let new = kv.cas(&write_key(worker), object(worker), rev).await?;
                revs[worker].store(new, Ordering::SeqCst);
                Ok(())
            }
        };
        paced(w.writers, w.write_rate, limit, write).await
    }

    /// Readers: point gets spread over `read_keys` existing keys.
    pub async fn gets(&self, w: Workload, limit: Limit) -> anyhow::Result<Run> {
        let kv = self.kv.clone();
        let (keys, readers) = (w.read_keys, w.readers);
        let read = move |worker: usize, i: u64| {
            let kv = kv.clone();
            async move {
                let k = (worker + readers * i as usize) % keys;
                kv.get(&read_key(k)).await?;
                Ok(())
            }
        };
        paced(w.readers, w.read_rate, limit, read).await
    }
}

/// Runs the workload against both backends, alternating between them in `rounds` slices of the
/// configured durations so that a machine whose load changes during the run (other processes,
/// the page cache, the disk) weighs on both alike. Returns `(a, b)`.
pub async fn compare(
    a: &Prepared,
    b: &Prepared,
    w: Workload,
    rounds: u32,
) -> anyhow::Result<(Figures, Figures)> {
    let rounds = rounds.max(1);
    // A short warm-up (connections, caches, the first log segment) that is not measured.
    for p in [a, b] {
        p.writes(w, Limit::Count(5)).await?;
        p.gets(w, Limit::Count(5)).await?;
    }
    let mut figures = [Figures::default(), Figures::default()];
    for _ in 0..rounds {
        for (p, f) in [a, b].into_iter().zip(figures.iter_mut()) {
            let run = p.writes(w, Limit::For(w.write_time / rounds)).await?;
            f.write_rate += run.rate / rounds as f64;
            f.writes.extend(run.latencies);
        }
    }
    for _ in 0..rounds {
        for (p, f) in [a, b].into_iter().zip(figures.iter_mut()) {
            let run = p.gets(w, Limit::For(w.read_time / rounds)).await?;
            f.get_rate += run.rate / rounds as f64;
            f.gets.extend(run.latencies);
        }
    }
    let [fa, fb] = figures;
    Ok((fa, fb))
}

fn write_key(i: usize) -> String {
    format!("/registry/bench/writes/{i:02}")
}

fn read_key(i: usize) -> String {
    format!("/registry/bench/pods/pod-{i:05}")
}
