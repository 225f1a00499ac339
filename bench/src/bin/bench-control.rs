//! `bench-control`: the scheduler and controllers at scale, with hollow nodes.
//!
//! ```text
//! cargo run --release -p keel-bench --bin bench-control -- [--quick] [--nodes N] [--server-arg ARG]...
//! ```
//!
//! Starts a release `keel-server` (with its scheduler and controllers) and `keel-node hollow`
//! with 1,000 simulated nodes on this machine, then measures (see `keel_bench::control`): the
//! scheduler's sustained bind rate, a 10,000-replica Deployment to all bound and all Running,
//! and both processes' resident memory with 30,000 pods on the nodes. Prints each figure with
//! its goal (`MISS` where one was not met) and exits 0 either way; non-zero only when something
//! could not be measured. `--quick`: 100 nodes and 3,000 pods, for a smoke run.

use std::time::Duration;

use anyhow::{bail, Context};
use keel_bench::api::{self, Server};
use keel_bench::control::{self, Scale};
use keel_bench::report::Table;

struct Args {
    scale: Scale,
    server_args: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        scale: Scale::full(),
        server_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, name: &str| -> anyhow::Result<usize> {
        v.with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} needs a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.scale = Scale::quick(),
            "--nodes" => args.scale.nodes = number(it.next(), "--nodes")?,
            "--bare" => args.scale.bare_pods = number(it.next(), "--bare")?,
            "--deployment" => args.scale.deployment = number(it.next(), "--deployment")?,
            "--total" => args.scale.total = number(it.next(), "--total")?,
            "--server-arg" => args
                .server_args
                .push(it.next().context("--server-arg needs a value")?),
            "-h" | "--help" => {
                println!(
                    "bench-control [--quick] [--nodes N] [--bare N] [--deployment N] [--total N] [--server-arg ARG]..."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(args)
}

/// Every hollow node is a connection on each side: lift the soft descriptor limit to the hard
/// one (both children inherit it).
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

fn secs(d: Option<Duration>) -> String {
    d.map_or("not reached".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_fd_limit();
    let s = args.scale;
    let server_bin = api::server_binary()?;
    let node_bin = control::node_binary()?;
    eprintln!(
        "bench-control: {} hollow nodes, {} bare pods, a {}-replica Deployment, {} pods in all ({} and {})",
        s.nodes,
        s.bare_pods,
        s.deployment,
        s.total,
        server_bin.display(),
        node_bin.display()
    );
    let load_start = load_average();
    // 1,000 nodes need more than the default pod range's 256 node CIDRs.
    let mut server_args = vec!["--cluster-cidr".to_string(), "10.128.0.0/12".to_string()];
    server_args.extend(args.server_args.iter().cloned());
    let mut server = Server::start(&server_bin, &server_args)?;
    let f = control::measure(&mut server, &server_bin, &node_bin, s, |line| {
        eprintln!("  {line}")
    })
    .await
    .with_context(|| format!("server log:\n{}", server.log_tail()))?;
    drop(server);

    let mut t = Table::default();
    t.section(&format!(
        "{} hollow nodes (keel-node hollow, one process)",
        s.nodes
    ));
    t.info("nodes joined and Ready", secs(f.nodes_ready));
    t.section(&format!(
        "scheduling: {} bare pods created at full speed",
        s.bare_pods
    ));
    t.info("pods created", format!("{:.0} pods/s", f.bare_created_per_s));
    t.check(
        "pods bound, sustained (p10–p90)",
        format!(
            "{:.0} pods/s ({:.1}–{:.1}× kube-scheduler's 100–300)",
            f.bind_per_s_sustained,
            f.bind_per_s_sustained / 300.0,
            f.bind_per_s_sustained / 100.0
        ),
        "≥ 1000 pods/s",
        f.bind_per_s_sustained >= 1000.0,
    );
    t.info(
        "pods bound, first create to last bind",
        format!("{:.0} pods/s", f.bind_per_s_overall),
    );
    t.section(&format!("a Deployment of {} replicas", s.deployment));
    t.check(
        "created → every pod bound",
        secs(f.deployment_bound),
        "≤ 15 s",
        f.deployment_bound.is_some_and(|d| d <= Duration::from_secs(15)),
    );
    t.info("created → every pod Running", secs(f.deployment_running));
    t.section(&format!("{} pods on {} nodes", s.total, s.nodes));
    t.info(
        "scaled up → every pod Running",
        format!("{} ({} Running)", secs(f.total_running), f.running_at_end),
    );
    let gib = 1u64 << 30;
    t.check(
        "keel-server RSS (control plane)",
        format!(
            "{} (peak {}; k0s: 3.3 GB at 200 nodes / 20k pods, {:.1}× ours)",
            mib(f.server_rss),
            mib(f.server_peak),
            3.3e9 / f.server_rss.max(1) as f64
        ),
        "≤ 1 GiB",
        f.server_rss <= gib && f.running_at_end >= s.total,
    );
    t.info(
        "keel-node hollow RSS (all nodes)",
        format!(
            "{} (peak {}; {:.0} KiB per node)",
            mib(f.hollow_rss),
            mib(f.hollow_peak),
            f.hollow_rss as f64 / 1024.0 / s.nodes.max(1) as f64
        ),
    );
    t.info(
        "the benchmark's pod watch taken up again after a list",
        format!(
            "{} times (pods first seen in a list count as seen then)",
            f.relists
        ),
    );
    println!();
    println!(
        "Keel control plane at scale ({} cores; load average {load_start} at the start, {} at the end)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );
    println!("{}", t.render());
    let misses = t.misses();
    if misses.is_empty() {
        println!("all goals met");
    } else {
        println!("goals missed ({}): {}", misses.len(), misses.join("; "));
    }
    Ok(())
}
