//! A throwaway etcd server: Debian's `/usr/bin/etcd` (3.4) on free loopback ports with a fresh
//! data directory, killed and removed when dropped. It is the reference the embedded store is
//! compared with, so it runs with its defaults (one `fdatasync` per batch of raft entries, like
//! a single-member cluster in production).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    pub endpoint: String,
}

/// Where the etcd binary is: `$ETCD` or `etcd` on the PATH (`/usr/bin/etcd` from etcd-server).
pub fn binary() -> PathBuf {
    std::env::var_os("ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

impl Etcd {
    /// Starts etcd and waits until it answers a read.
    pub async fn start() -> anyhow::Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("keel-bench-etcd-")
            .tempdir()
            .context("temp dir for etcd")?;
        let ports = keel_lab::ports::free_ports(2).context("free ports for etcd")?;
        let client = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let log = std::fs::File::create(dir.path().join("etcd.log")).context("etcd log")?;
        let child = Command::new(binary())
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bench={peer}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        let mut etcd = Etcd {
            child,
            dir,
            endpoint: client,
        };
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().context("etcd status")? {
                bail!("etcd exited ({status}) during start:\n{}", self.log());
            }
            if let Ok(mut c) = self.client().await {
                if c.get("/health-probe", None).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("etcd did not become ready in 30 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client connected to this etcd.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        etcd_client::Client::connect([self.endpoint.as_str()], Some(options))
            .await
            .with_context(|| format!("connecting to etcd at {}", self.endpoint))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
