//! `keel-server`: the whole control plane in one process.
//!
//! `keel-server [--data-dir DIR]` serves: on first start it creates the cluster PKI and
//! `DIR/admin.kubeconfig`, opens the embedded store in `DIR/store`, ensures the system
//! namespaces, and serves the Kubernetes API (HTTPS, `--listen`) and the node gate (gRPC over
//! mutual TLS, `--node-listen`). Subcommands help operators: `token create` (a bootstrap token for
//! joining nodes), `ca-hash` (the CA pin nodes check).

mod cli_client;
mod node_iso;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use keel_apiserver::{ApiServer, Cidr, Config, Objects};
use keel_auth::{Pki, PkiOptions, TokenAuthenticator};

#[derive(Parser, Debug)]
#[command(
    name = "keel-server",
    version,
    about = "The Keel control plane: Kubernetes API, store and node gate"
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    /// Where the PKI, the admin kubeconfig and the store live.
    #[arg(long, default_value = "./keel-data", global = true)]
    data_dir: PathBuf,
    /// The Kubernetes API's address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The node gate's address (gRPC; nodes dial in).
    #[arg(long, default_value = "127.0.0.1:9443")]
    node_listen: SocketAddr,
    /// Extra names or IP addresses for the serving certificate (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Bearer tokens: CSV lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// How long a node may miss heartbeats before it is NotReady (e.g. 40s, 2m).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_grace_period: Duration,
    /// The Service IP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// The pod range nodes' pod CIDRs are cut from (kube-controller-manager's flag); 256 nodes
    /// with the default range and mask.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// The NodePort range, `LOW-HIGH` (kube-apiserver's flag).
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: (u16, u16),
    /// Serve the API and the node gate only: no scheduler, no controllers (for API tests and
    /// for running them out of process).
    #[arg(long)]
    no_controllers: bool,
    /// How long HPAs that set no `behavior.scaleDown.stabilizationWindowSeconds` look back
    /// before scaling down (kube-controller-manager's flag; e.g. 5m, 30s).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// Seconds pods tolerate a `node.kubernetes.io/not-ready:NoExecute` taint unless they say
    /// otherwise (kube-apiserver's DefaultTolerationSeconds flag).
    #[arg(long, default_value_t = keel_api::defaults::DEFAULT_TOLERATION_SECONDS)]
    default_not_ready_toleration_seconds: i64,
    /// The same for `node.kubernetes.io/unreachable:NoExecute`: how long the pods of a lost
    /// node wait before they are evicted and replaced elsewhere.
    #[arg(long, default_value_t = keel_api::defaults::DEFAULT_TOLERATION_SECONDS)]
    default_unreachable_toleration_seconds: i64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bootstrap tokens for joining nodes.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Prints the CA pin (`sha256:<hex>`) that nodes check (`keel.ca-hash=`).
    CaHash,
    /// Writes a node ISO with this cluster's join data (server URL, a fresh bootstrap token,
    /// the CA pin) baked in; the base ISO stays untouched.
    NodeIso {
        /// Where to write the ISO.
        #[arg(long)]
        out: PathBuf,
        /// The node-gate URL nodes dial (default: https://<--node-listen>).
        #[arg(long)]
        server: Option<String>,
        /// The base ISO (`make iso` builds it).
        #[arg(long, default_value = "out/keel-node.iso")]
        base: PathBuf,
        /// How long the baked-in token is valid.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// The API server to create the token through.
        #[arg(long, default_value = "127.0.0.1:6443")]
        api: SocketAddr,
        /// More `key=value` node settings (e.g. `registry-mirror=docker.io=http://…`), repeatable.
        #[arg(long = "set")]
        settings: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Creates a bootstrap token (through the running server's API) and prints it.
    Create {
        /// How long the token is valid (e.g. 24h, 30m; 0 = forever).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// The API server to talk to.
        #[arg(long, default_value = "127.0.0.1:6443")]
        server: SocketAddr,
    },
}

/// `30000-32767` → (30000, 32767); the low end must not exceed the high one.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port range {s:?} (want LOW-HIGH, e.g. 30000-32767)");
    let (lo, hi) = s.trim().split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?);
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid duration unit in {s:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        None => runtime.block_on(serve(cli.serve)),
        Some(Command::CaHash) => {
            let pki = load_pki(&cli.serve)?;
            println!("{}", pki.ca_pin());
            Ok(())
        }
        Some(Command::NodeIso {
            out,
            server,
            base,
            ttl,
            api,
            settings,
        }) => {
            let pki = load_pki(&cli.serve)?;
            let token = runtime.block_on(cli_client::create_bootstrap_token(&pki, api, ttl))?;
            let server = server.unwrap_or_else(|| format!("https://{}", cli.serve.node_listen));
            let extra = settings
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => Ok((k.to_string(), v.to_string())),
                    None => bail!("--set {kv:?}: expected key=value"),
                })
                .collect::<Result<Vec<_>>>()?;
            let conf = node_iso::node_conf(&server, &token, &pki.ca_pin(), &extra);
            node_iso::write(&base, &out, &conf)?;
            println!("wrote {} (joins {server})", out.display());
            Ok(())
        }
        Some(Command::Token {
            action: TokenAction::Create { ttl, server },
        }) => {
            let pki = load_pki(&cli.serve)?;
            let token = runtime.block_on(cli_client::create_bootstrap_token(&pki, server, ttl))?;
            println!("{token}");
            Ok(())
        }
    }
}

fn pki_options(args: &ServeArgs) -> PkiOptions {
    PkiOptions {
        extra_sans: args.sans.clone(),
        kubeconfig_server: format!("https://{}", args.listen),
    }
}

/// The PKI of an existing cluster, for the subcommands: read only, so that running one never
/// re-issues the serving certificate or rewrites the admin kubeconfig of a running server.
fn load_pki(args: &ServeArgs) -> Result<Pki> {
    if !args.data_dir.join("pki").exists() {
        bail!(
            "no cluster in {} (start keel-server with --data-dir {} first)",
            args.data_dir.display(),
            args.data_dir.display()
        );
    }
    Pki::load(&args.data_dir).with_context(|| format!("loading the PKI in {}", args.data_dir.display()))
}

async fn serve(args: ServeArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let pki = Pki::load_or_create(&args.data_dir, &pki_options(&args))
        .with_context(|| format!("setting up the PKI in {}", args.data_dir.display()))?;
    let store = keel_store::embedded::EmbeddedStore::open(store_dir(&args.data_dir), Default::default())
        .with_context(|| format!("opening the store in {}", store_dir(&args.data_dir).display()))?;
    let service_cidr =
        Cidr::parse(&args.service_cidr).with_context(|| format!("--service-cidr {:?}", args.service_cidr))?;
    // Nodes' usage reports, kept by the node gate, served as metrics.k8s.io.
    let usage = Arc::new(keel_nodegate::UsageStore::new());
    let config = Config {
        metrics: Some(usage.clone()),
        advertise: args.listen,
        service_cidr,
        node_port_range: args.service_node_port_range,
        default_not_ready_toleration_seconds: args.default_not_ready_toleration_seconds,
        default_unreachable_toleration_seconds: args.default_unreachable_toleration_seconds,
        ..Config::default()
    };
    let objects = Arc::new(Objects::new(Arc::new(store), Arc::new(config)));
    keel_apiserver::gc::spawn(objects.clone());
    keel_apiserver::bootstrap::ensure(&objects)
        .await
        .map_err(|e| anyhow::anyhow!("bootstrapping the cluster: {e}"))?;

    let tokens = match &args.token_auth_file {
        Some(p) => {
            Some(TokenAuthenticator::from_file(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    // Logs, exec, attach and port-forward reach nodes through the node gate's streams.
    let streams = keel_nodegate::Streams::new();
    let server = Arc::new(ApiServer {
        objects: objects.clone(),
        authn: keel_apiserver::authn::Authenticator::new(tokens, objects.clone()),
        streams: Some(streams.clone()),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let node_listener = tokio::net::TcpListener::bind(args.node_listen)
        .await
        .with_context(|| format!("listening on {} for nodes", args.node_listen))?;
    let tls = pki.server_tls_config(&[b"h2", b"http/1.1"]);
    tracing::info!(
        listen = %args.listen,
        kubeconfig = %pki.admin_kubeconfig_path().display(),
        "serving the Kubernetes API"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let pki = Arc::new(pki);
    let client: Arc<dyn keel_api::client::ApiClient> =
        Arc::new(keel_apiserver::client::InProcessClient::new(objects.clone()));
    let mut gate = keel_nodegate::NodeGateConfig::new(pki.server_tls_config(&[b"h2"]), pki.clone(), client);
    gate.grace_period = args.node_grace_period;
    gate.pod_cidrs = Some(
        keel_nodegate::PodCidrs::parse(&args.cluster_cidr, args.node_cidr_mask_size)
            .with_context(|| format!("--cluster-cidr {:?}", args.cluster_cidr))?,
    );
    gate.streams = streams;
    gate.usage = usage.clone();
    let gate_task = tokio::spawn(keel_nodegate::serve(node_listener, gate, stopped()));
    tracing::info!(listen = %args.node_listen, "serving the node gate");

    let mut background = tokio::task::JoinSet::new();
    if !args.no_controllers {
        let client: Arc<dyn keel_api::client::ApiClient> =
            Arc::new(keel_apiserver::client::InProcessClient::new(objects.clone()));
        let c = client.clone();
        let stop = stopped();
        background.spawn(async move {
            if let Err(e) = keel_scheduler::run(c, stop).await {
                tracing::error!(error = %e, "the scheduler stopped");
            }
        });
        let stop = stopped();
        let options = keel_controllers::Options {
            ca_pem: Some(pki.ca_pem().to_string()),
            metrics: Some(usage.clone()),
            hpa_downscale_stabilization: Some(args.horizontal_pod_autoscaler_downscale_stabilization),
        };
        background.spawn(async move {
            if let Err(e) = keel_controllers::run_all_with(client, options, stop).await {
                tracing::error!(error = %e, "the controllers stopped");
            }
        });
        tracing::info!("running the scheduler and the controllers");
    }

    let api_task = tokio::spawn(keel_apiserver::http::serve(server, listener, tls, stopped()));
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = api_task.await;
    while background.join_next().await.is_some() {}
    match gate_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "node gate ended with an error"),
        Err(e) => tracing::warn!(error = %e, "node gate task failed"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {},
    }
}

fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}
