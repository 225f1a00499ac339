//! `bench-api`: the control plane's figures, measured on this machine.
//!
//! ```text
//! cargo run --release -p keel-bench --bin bench-api -- [--quick] [--skip-store] [--skip-api]
//! ```
//!
//! First the store level (the embedded store against Debian's etcd 3.4, started here on loopback
//! ports with a temporary data directory), then the API level (a release `keel-server` on
//! loopback, driven through kube-rs). Prints a table of every figure with its goal and `MISS`
//! where a goal was not met; exits 0 either way (it is a measurement), non-zero only when
//! something could not be measured. `--quick` shrinks every workload for a smoke run;
//! `--server-arg ARG` (repeatable) passes ARG to keel-server, e.g. `--server-arg --no-controllers`
//! to tell the API's own share from the controllers'.

use std::time::Duration;

use anyhow::{bail, Context};
use keel_bench::report::Table;
use keel_bench::stats::{ms, Latencies};
use keel_bench::{api, etcd, store};

/// Slices the store comparison alternates in (see `store::compare`): more, shorter slices spread
/// the machine's changing load (other processes, builds) more evenly over both stores.
const STORE_ROUNDS: u32 = 8;

struct Args {
    quick: bool,
    store: bool,
    api: bool,
    /// Extra arguments for keel-server (e.g. `--no-controllers` to measure the API alone).
    server_args: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        quick: false,
        store: true,
        api: true,
        server_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--skip-store" => args.store = false,
            "--skip-api" => args.api = false,
            "--server-arg" => args
                .server_args
                .push(it.next().context("--server-arg needs a value")?),
            "-h" | "--help" => {
                println!("bench-api [--quick] [--skip-store] [--skip-api] [--server-arg ARG]...");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(args)
}

/// 1,000 watchers are 1,000 connections on each side: lift the soft descriptor limit to the hard
/// one (the server inherits it).
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.3} ms", ms(d))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::INFINITY
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_fd_limit();
    let mut table = Table::default();
    let mut detail = Vec::new();
    // Other processes on this machine skew every figure; the load average tells how much.
    let load_start = load_average();
    // A part that cannot run (no etcd, no server) does not keep the other from being measured.
    let mut failed: Vec<String> = Vec::new();

    if args.store {
        let mut w = store::Workload::default();
        if args.quick {
            w.write_time = Duration::from_secs(1);
            w.read_time = Duration::from_secs(1);
        }
        if let Err(e) = store_level(w, &mut table, &mut detail).await {
            failed.push(format!("store level: {e:#}"));
        }
    }
    if args.api {
        let mut w = api::Workload::default();
        if args.quick {
            w.write_time = Duration::from_secs(1);
            w.read_time = Duration::from_secs(1);
            w.pods = 1_000;
            w.list_runs = 2;
            w.watchers = 100;
            w.watch_rounds = 2;
        }
        if let Err(e) = api_level(w, &args.server_args, &mut table, &mut detail).await {
            failed.push(format!("API level: {e:#}"));
        }
    }

    detail.push(format!(
        "load average at the start: {load_start}; at the end: {}",
        load_average()
    ));
    println!();
    println!("Keel control plane figures ({} cores, loopback)", cores());
    println!("{}", table.render());
    println!("details:");
    for d in &detail {
        println!("  {d}");
    }
    let misses = table.misses();
    if misses.is_empty() && failed.is_empty() {
        println!("all goals met");
    } else if !misses.is_empty() {
        println!("goals missed ({}): {}", misses.len(), misses.join("; "));
    }
    if !failed.is_empty() {
        bail!("not measured:\n{}", failed.join("\n"));
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

async fn store_level(w: store::Workload, table: &mut Table, detail: &mut Vec<String>) -> anyhow::Result<()> {
    eprintln!(
        "store level: {} writers at {}/s for {:?}, {} readers at {}/s for {:?}",
        w.writers, w.write_rate, w.write_time, w.readers, w.read_rate, w.read_time
    );
    let dir = tempfile::Builder::new()
        .prefix("keel-bench-store-")
        .tempdir()
        .context("temp dir for the embedded store")?;
    let embedded = keel_store::embedded::EmbeddedStore::open(dir.path(), Default::default())
        .with_context(|| format!("opening the embedded store in {}", dir.path().display()))?;
    let embedded = store::prepare(store::Kv::Embedded(std::sync::Arc::new(embedded)), w).await?;
    eprintln!("  etcd {} ...", etcd::binary().display());
    let server = etcd::Etcd::start().await?;
    let client = server.client().await?;
    let reference = store::prepare(store::Kv::Etcd(Box::new(client.kv_client())), w)
        .await
        .with_context(|| format!("filling etcd; its log:\n{}", server.log()))?;
    eprintln!("  alternating between them, {STORE_ROUNDS} rounds ...");
    let (embedded, reference) = store::compare(&embedded, &reference, w, STORE_ROUNDS)
        .await
        .with_context(|| format!("etcd's log:\n{}", server.log()))?;
    drop(server);

    let mut e = embedded;
    let mut r = reference;
    table.section(&format!(
        "store: embedded vs etcd 3.4 ({} writers, {}/s CAS writes; {} readers, {}/s gets)",
        w.writers, w.write_rate, w.readers, w.read_rate
    ));
    for (name, a, b) in [
        ("durable write p50", e.writes.p50(), r.writes.p50()),
        ("durable write p99", e.writes.p99(), r.writes.p99()),
        ("get p50", e.gets.p50(), r.gets.p50()),
        ("get p99", e.gets.p99(), r.gets.p99()),
    ] {
        table.info(&format!("{name}, embedded"), fmt_ms(a));
        table.info(&format!("{name}, etcd"), fmt_ms(b));
        let q = ratio(a, b);
        table.check(
            &format!("{name}, ratio embedded/etcd"),
            format!("{q:.3}"),
            "<= 0.5",
            q <= 0.5,
        );
    }
    detail.push(format!(
        "embedded writes: {} at {:.0}/s",
        e.writes.summary(),
        e.write_rate
    ));
    detail.push(format!(
        "etcd writes:     {} at {:.0}/s",
        r.writes.summary(),
        r.write_rate
    ));
    detail.push(format!(
        "embedded gets:   {} at {:.0}/s",
        e.gets.summary(),
        e.get_rate
    ));
    detail.push(format!(
        "etcd gets:       {} at {:.0}/s",
        r.gets.summary(),
        r.get_rate
    ));
    Ok(())
}

async fn api_level(
    w: api::Workload,
    server_args: &[String],
    table: &mut Table,
    detail: &mut Vec<String>,
) -> anyhow::Result<()> {
    let binary = api::server_binary()?;
    eprintln!(
        "API level: {} {} (through kube-rs)",
        binary.display(),
        server_args.join(" ")
    );
    let mut server = api::Server::start(&binary, server_args)?;
    let mut f = match api::measure(&mut server, w).await {
        Ok(f) => f,
        Err(e) => return Err(e.context(format!("server log (tail):\n{}", server.log_tail()))),
    };
    drop(server);

    let p99 = |l: &mut Latencies| l.p99();
    table.section(&format!(
        "API: keel-server{} via kube-rs ({} clients, {}/s writes, {}/s gets)",
        server_args.iter().map(|a| format!(" {a}")).collect::<String>(),
        w.clients,
        w.write_rate,
        w.read_rate
    ));
    let c99 = p99(&mut f.creates);
    table.check(
        "create p99",
        fmt_ms(c99),
        "<= 10 ms",
        c99 <= Duration::from_millis(10),
    );
    let u99 = p99(&mut f.updates);
    table.check(
        "update p99",
        fmt_ms(u99),
        "<= 10 ms",
        u99 <= Duration::from_millis(10),
    );
    let worst = c99.max(u99);
    table.check(
        "write p99 vs Kubernetes SLO",
        fmt_ms(worst),
        "<= 1 s (upstream SLO)",
        worst <= Duration::from_secs(1),
    );
    let g99 = p99(&mut f.gets);
    table.check("get p99", fmt_ms(g99), "<= 2 ms", g99 <= Duration::from_millis(2));
    let list = f.list_typed.p50();
    table.check(
        &format!("list {} pods (kube typed, median)", f.pods_created),
        fmt_ms(list),
        "<= 300 ms",
        list <= Duration::from_millis(300),
    );
    table.info(
        &format!("list {} pods (raw bytes, median)", f.pods_created),
        fmt_ms(f.list_raw.p50()),
    );
    table.info(
        &format!("list {} pods as a Table, 500 a page (median)", f.pods_created),
        fmt_ms(f.list_table.p50()),
    );
    table.info(
        &format!("kubectl get pods, {} pods (median)", f.pods_created),
        fmt_ms(f.list_kubectl.p50()),
    );
    let wd = f.watch_deliveries.p99();
    table.check(
        &format!("event to {} watchers, p99 delivery", w.watchers),
        fmt_ms(wd),
        "<= 100 ms",
        wd <= Duration::from_millis(100),
    );
    table.info(
        &format!("event to {} watchers, until all saw it (worst)", w.watchers),
        fmt_ms(f.watch_all.max()),
    );
    table.check(
        "keel-server RSS idle",
        format!("{:.1} MB", mb(f.rss_idle)),
        "<= 50 MB",
        mb(f.rss_idle) <= 50.0,
    );
    table.check(
        &format!("keel-server RSS, {} pods stored", f.pods_created),
        format!("{:.1} MB", mb(f.rss_pods)),
        "<= 300 MB",
        mb(f.rss_pods) <= 300.0,
    );
    table.check(
        &format!("keel-server RSS, {} pods stored, after the lists", f.pods_created),
        format!("{:.1} MB", mb(f.rss_after_lists)),
        "<= 300 MB",
        mb(f.rss_after_lists) <= 300.0,
    );
    table.info(
        &format!("keel-server RSS, {} watches open (end)", w.watchers),
        format!("{:.1} MB", mb(f.rss_end)),
    );
    table.info(
        "keel-server RSS peak (VmHWM, whole run)",
        format!("{:.1} MB", mb(f.rss_peak)),
    );
    table.check(
        &format!("keel-server RSS, {} pods stored, restarted", f.pods_created),
        format!("{:.1} MB", mb(f.rss_restarted)),
        "<= 300 MB",
        mb(f.rss_restarted) <= 300.0,
    );
    table.info(
        "keel-server RSS peak while restarting (VmHWM)",
        format!("{:.1} MB", mb(f.rss_restart_peak)),
    );
    // The same pods in a server without the scheduler and controllers: the API's own share.
    if !server_args.iter().any(|a| a == "--no-controllers") {
        eprintln!("  the same pods without the controllers ...");
        let mut args = server_args.to_vec();
        args.push("--no-controllers".into());
        let (idle, with_pods) = api::memory_with_pods(&binary, &args, f.pods_created, w.clients)
            .await
            .context("memory without the controllers")?;
        table.info(
            "keel-server --no-controllers RSS idle",
            format!("{:.1} MB", mb(idle)),
        );
        table.info(
            &format!("keel-server --no-controllers RSS, {} pods stored", f.pods_created),
            format!("{:.1} MB", mb(with_pods)),
        );
    }

    detail.push(format!(
        "API creates: {} at {:.0}/s",
        f.creates.summary(),
        f.create_rate
    ));
    detail.push(format!(
        "API updates: {} at {:.0}/s",
        f.updates.summary(),
        f.update_rate
    ));
    detail.push(format!(
        "API gets:    {} at {:.0}/s",
        f.gets.summary(),
        f.get_rate
    ));
    detail.push(format!(
        "{} pods created in {:.1} s ({:.0}/s, {} in flight)",
        f.pods_created,
        f.pod_create_time.as_secs_f64(),
        f.pods_created as f64 / f.pod_create_time.as_secs_f64(),
        w.clients * 2
    ));
    detail.push(format!(
        "list typed: {}; raw: {}; {:.1} MB of JSON",
        f.list_typed.summary(),
        f.list_raw.summary(),
        f.list_bytes as f64 / 1e6
    ));
    detail.push(format!(
        "watch: {} watches opened in {:.2} s; deliveries {}; all-seen per round {}",
        w.watchers,
        f.watch_setup.as_secs_f64(),
        f.watch_deliveries.summary(),
        f.watch_all.summary()
    ));
    Ok(())
}
