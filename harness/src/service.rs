//! One service process (`serve --role …`) and an HTTP client for its API.
//!
//! The lifecycle ([`Service::stop`], [`wait_ready`]) returns errors; the
//! client helpers of [`Api`] and [`Service::wait_exit`] are test helpers and
//! panic on a transport failure or a timeout.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

/// A free loopback address (port 0 bound and released).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("loopback")
        .local_addr()
        .expect("addr")
}

/// Waits until `GET /readyz` on `admin` answers 2xx (bounded).
pub async fn wait_ready(client: &reqwest::Client, admin: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = client.get(format!("http://{admin}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("service on {admin} not ready within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running `serve --role ROLE`; killed when dropped.
pub struct Service {
    pub role: String,
    pub child: Child,
    pub admin: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
    pub api: Api,
}

impl std::ops::Deref for Service {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Service {
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_ready(&self.client, self.admin, Duration::from_secs(60)).await
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process, SIGKILL (`hard`) or SIGTERM, and waits for it;
    /// returns how long it took to exit.
    pub fn stop(&mut self, hard: bool) -> anyhow::Result<Duration> {
        let started = Instant::now();
        if hard {
            self.child.kill()?;
        } else {
            self.sigterm();
        }
        self.child.wait()?;
        Ok(started.elapsed())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for exit after SIGTERM; returns how long it took. Panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Duration {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("service did not exit within {limit:?}");
    }

    /// Peak resident memory (VmHWM) in MB, while the process runs (Linux).
    pub fn peak_rss_mb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client for one API process; cheap to clone into tasks.
#[derive(Clone)]
pub struct Api {
    pub http: SocketAddr,
    pub client: reqwest::Client,
    /// The bearer token it sends.
    pub token: String,
}

/// An HTTP answer: status, headers of interest, JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub replayed: bool,
    pub location: Option<String>,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Api {
    async fn answer(r: reqwest::Response) -> Answer {
        let h = r.headers().clone();
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Answer {
            status: r.status().as_u16(),
            replayed: get("idempotent-replayed").as_deref() == Some("true"),
            location: get("location"),
            content_type: get("content-type").unwrap_or_default(),
            retry_after: get("retry-after"),
            body: r.json().await.unwrap_or(Value::Null),
        }
    }

    pub async fn claim(&self, account: &str, key: &str) -> Answer {
        let url = format!("http://{}/v1/accounts/{account}/interest/claims", self.http);
        let r = self
            .client
            .post(url)
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let r = self
            .client
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    /// A claim's final answer: follows a 202 until the claim is done.
    pub async fn claim_to_end(&self, account: &str, key: &str) -> Answer {
        let first = self.claim(account, key).await;
        if first.status != 202 {
            return first;
        }
        let location = first.location.clone().expect("202 has Location");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.get(&location).await;
            if s.body["state"] == "done" {
                let status = s.body["status"].as_u64().unwrap() as u16;
                let body = if status == 201 {
                    s.body["payout"].clone()
                } else {
                    s.body["problem"].clone()
                };
                return Answer { status, body, ..first };
            }
            assert!(Instant::now() < deadline, "claim {location} never finished");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
