//! A broker of one's own: a fresh nisshi (the one `scripts/infra-up` builds
//! and caches) on a free loopback port, so data left in the shared broker by
//! earlier runs cannot skew a benchmark, and a test may stop and restart it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::service::free_addr;

pub struct PrivateBroker {
    child: Child,
    pub address: String,
}

impl PrivateBroker {
    /// The broker's process id (to account its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An in-memory broker on a free port.
    pub async fn start() -> anyhow::Result<PrivateBroker> {
        Self::start_on(free_addr().port(), "memory://nisshi/").await
    }

    /// The broker `scripts/infra-up` built: with the SQLite engine (which
    /// survives a restart) when available, else the memory-only build.
    pub fn binary() -> anyhow::Result<PathBuf> {
        let cache = std::env::var("INTEREST_NOW_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/interest-now"));
        ["nisshi-0.8.1-sqlite/bin/nisshi", "nisshi-0.8.1/bin/nisshi"]
            .iter()
            .map(|p| cache.join(p))
            .find(|p| p.exists())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no broker under {}: run scripts/infra-up once (it builds it)",
                    cache.display()
                )
            })
    }

    /// Starts a broker on `port` with `storage` (`memory://nisshi/` or `sqlite://FILE`).
    /// Its working directory (and log) is per port: a restart on the same port finds its files.
    pub async fn start_on(port: u16, storage: &str) -> anyhow::Result<PrivateBroker> {
        let bin = Self::binary()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("interest-now-broker-{port}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))?;
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", storage, "--group-initial-rebalance-delay", "0s"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting the private broker")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("the private broker did not listen on {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(PrivateBroker {
            child,
            address: format!("127.0.0.1:{port}"),
        })
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
