//! `store-bench`: the embedded store's figures, measured through the `Store` trait.
//!
//! ```text
//! cargo run --release -p keel-store --bin store-bench -- [--dir DIR] [--seconds N] [--keys N] [--watchers N]
//! ```
//!
//! Prints durable write latency from 16 concurrent writers (paced at 500 writes/s, then as fast as
//! they go), get latency, the time to list 10,000 objects of ~3 KB, the latency of one event
//! reaching 1,000 watchers, the reopen (recovery) time and the process RSS. The data directory is
//! a fresh one under the system temporary directory unless `--dir` is given; it is removed at the
//! end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use keel_store::embedded::{EmbeddedStore, Options};
use keel_store::{ListOptions, Store};

const WRITERS: usize = 16;
const PACED_RATE: f64 = 500.0;

struct Args {
    dir: Option<PathBuf>,
    seconds: u64,
    keys: usize,
    watchers: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        dir: None,
        seconds: 5,
        keys: 10_000,
        watchers: 1_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = Some(value()?.into()),
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--keys" => args.keys = value()?.parse().context("--keys")?,
            "--watchers" => args.watchers = value()?.parse().context("--watchers")?,
            "-h" | "--help" => {
                println!("store-bench [--dir DIR] [--seconds N] [--keys N] [--watchers N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(args)
}

/// A ~3 KB JSON-ish object, like a Pod.
fn object(i: usize) -> Bytes {
    let mut s = format!(
        "{{\"kind\":\"Pod\",\"metadata\":{{\"name\":\"pod-{i}\",\"namespace\":\"bench\"}},\"spec\":\""
    );
    while s.len() < 3000 {
        s.push_str("abcdefghijklmnopqrstuvwxyz0123456789");
    }
    s.push_str("\"}");
    Bytes::from(s)
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn pct(&mut self, p: f64) -> Duration {
        self.0.sort_unstable();
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i]
    }
    fn summary(&mut self) -> String {
        format!(
            "n={} p50={:.3}ms p99={:.3}ms max={:.3}ms",
            self.0.len(),
            ms(self.pct(0.50)),
            ms(self.pct(0.99)),
            ms(self.pct(1.0))
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// 16 writers updating their own keys; `rate` is the aggregate writes/s (None: unpaced).
async fn writes(store: Arc<dyn Store>, seconds: u64, rate: Option<f64>) -> anyhow::Result<(Latencies, f64)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("/registry/bench/writes/{w}");
            let mut lat = Vec::new();
            let mut kv = match store.get(&key).await? {
                Some(kv) => kv,
                None => store.create(&key, object(w)).await?,
            };
            let interval = rate.map(|r| Duration::from_secs_f64(WRITERS as f64 / r));
            // Spread the paced writers over one interval so they do not all fire together.
            let mut next =
                Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / WRITERS as f64));
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let t = Instant::now();
                kv = store.update(&key, object(w), Some(kv.mod_revision)).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    Ok((Latencies(all), rate))
}

async fn fill(store: &dyn Store, keys: usize) -> anyhow::Result<()> {
    let chunk = 64;
    for base in (0..keys).step_by(chunk) {
        let creates = (base..(base + chunk).min(keys)).map(|i| async move {
            store
                .create(&format!("/registry/bench/pods/pod-{i:06}"), object(i))
                .await
        });
        for r in futures::future::join_all(creates).await {
            r?;
        }
    }
    Ok(())
}

async fn gets(store: &dyn Store, keys: usize, n: usize) -> anyhow::Result<Latencies> {
    let mut lat = Vec::with_capacity(n);
    let mut x: usize = 12345;
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = format!("/registry/bench/pods/pod-{:06}", (x >> 33) % keys);
        let t = Instant::now();
        let kv = store.get(&key).await?;
        lat.push(t.elapsed());
        if kv.is_none() {
            bail!("{key} missing");
        }
    }
    Ok(Latencies(lat))
}

async fn lists(store: &dyn Store, keys: usize, n: usize) -> anyhow::Result<Latencies> {
    let mut lat = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let page = store
            .list("/registry/bench/pods/", ListOptions::default())
            .await?;
        lat.push(t.elapsed());
        if page.items.len() != keys {
            bail!("listed {} of {keys}", page.items.len());
        }
    }
    Ok(Latencies(lat))
}

/// `watchers` tasks watch one prefix; each of `events` writes is timed from the moment it is
/// issued to the moment each watcher receives it.
async fn fan_out(
    store: Arc<dyn Store>,
    watchers: usize,
    events: usize,
) -> anyhow::Result<(Latencies, Latencies)> {
    let prefix = "/registry/bench/fanout/";
    let from = store.current_revision().await?;
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut stream = store.watch(prefix, from).await?;
        tasks.push(tokio::spawn(async move {
            let mut received = Vec::with_capacity(events);
            while received.len() < events {
                match stream.next().await {
                    Some(Ok(event)) => received.push((event.revision(), origin.elapsed())),
                    Some(Err(e)) => return Err(anyhow::Error::new(e)),
                    None => bail!("watch ended"),
                }
            }
            Ok(received)
        }));
    }
    let mut issued = std::collections::HashMap::new();
    let mut write_latency = Vec::with_capacity(events);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 0..events {
        tick.tick().await;
        let t = origin.elapsed();
        let kv = store.create(&format!("{prefix}{i:06}"), object(i)).await?;
        write_latency.push(origin.elapsed() - t);
        issued.insert(kv.mod_revision, t);
    }
    let mut lat = Vec::with_capacity(watchers * events);
    for t in tasks {
        for (revision, at) in t.await?? {
            let sent = issued.get(&revision).context("event for a write not issued")?;
            lat.push(at.saturating_sub(*sent));
        }
    }
    Ok((Latencies(lat), Latencies(write_latency)))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("keel-store-bench-{}", std::process::id())),
            true,
        ),
    };
    let result = runtime.block_on(run(&args, &dir));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    println!("store-bench: data directory {}", dir.display());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir, Options::default())?);

    let (mut paced, rate) = writes(store.clone(), args.seconds, Some(PACED_RATE)).await?;
    println!(
        "durable update, {WRITERS} writers paced at {PACED_RATE} writes/s: {} ({rate:.0} writes/s)",
        paced.summary()
    );
    let (mut unpaced, rate) = writes(store.clone(), args.seconds, None).await?;
    println!(
        "durable update, {WRITERS} writers unpaced: {} ({rate:.0} writes/s)",
        unpaced.summary()
    );

    let t = Instant::now();
    fill(&*store, args.keys).await?;
    println!(
        "created {} objects of ~3 KB in {:.0} ms (64 concurrent creates)",
        args.keys,
        ms(t.elapsed())
    );
    println!(
        "get (one client): {}",
        gets(&*store, args.keys, 100_000).await?.summary()
    );
    println!(
        "list {} objects: {}",
        args.keys,
        lists(&*store, args.keys, 20).await?.summary()
    );
    if let Some(rss) = rss_mib() {
        println!("RSS with {} objects stored: {rss:.1} MiB", args.keys);
    }
    let (mut fan, mut writes_meanwhile) = fan_out(store.clone(), args.watchers, 100).await?;
    println!(
        "event to {} watchers (from write issued to received): {}",
        args.watchers,
        fan.summary()
    );
    println!("  the durable creates meanwhile: {}", writes_meanwhile.summary());

    drop(store);
    let t = Instant::now();
    let store = EmbeddedStore::open(dir, Options::default())?;
    println!(
        "reopen (recovery) with revision {}: {:.0} ms",
        store.current_revision().await?,
        ms(t.elapsed())
    );
    Ok(())
}
