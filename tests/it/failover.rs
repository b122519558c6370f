//! Drill 3 of issue 14, database failover: a primary and a synchronous
//! streaming standby (two PostgreSQL clusters of the test's own, on free
//! loopback ports), the service on the multi-host `DATABASE_URL`
//! (`…h1:p1,h2:p2/db?target_session_attrs=read-write`), and during a stream
//! of claims the primary is killed (`pg_ctl stop -m immediate`) and the
//! standby promoted. The same API and worker processes follow; the audit is
//! the usual one (every claim answered 201/202 paid exactly once by its
//! idempotency key, nothing else paid, the outbox drained) and the figures
//! are one JSON line (`drill: {...}`), never asserted as timings.
//!
//! `#[ignore]`d (heavy: two clusters, ~30 s): run alone with
//! `cargo test --workspace --test it -- --ignored --nocapture failover::`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Duration as Dur;
use interest_now::money::types::format_instant;
use interest_now_harness as harness;
use sqlx::{PgPool, Row};

use crate::harness::{free_addr, now, suite_offset, Api, TOKEN};

/// The whole drill, set-up to clean-up, must end within this.
const DRILL_LIMIT: Duration = Duration::from_secs(115);
const ACCOUNTS: usize = 300;
const CLAIMS_PER_S: u64 = 30;
/// When, after the first claim, the primary is killed.
const KILL_AFTER: Duration = Duration::from_secs(3);

/// How long after the kill the standby is promoted: `FAILOVER_PROMOTE_AFTER_MS`
/// (default 2000, what a failover manager's detection might take; 0 is the
/// service's own part alone).
fn promote_after() -> Duration {
    let ms = std::env::var("FAILOVER_PROMOTE_AFTER_MS").map_or(2000, |v| v.parse().expect("a number of ms"));
    Duration::from_millis(ms)
}

/// The PostgreSQL binaries (`PG_BIN`, else the newest under /usr/lib/postgresql).
fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var("PG_BIN").map(PathBuf::from).unwrap_or_else(|_| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("/usr/lib/postgresql (or set PG_BIN)")
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .collect();
        versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
        versions.pop().expect("a PostgreSQL under /usr/lib/postgresql")
    });
    dir.join(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A primary and its synchronous standby under a temporary directory;
/// stopped and removed when dropped (also on a panic).
struct Clusters {
    dir: PathBuf,
    primary_port: u16,
    standby_port: u16,
    /// PostgreSQL refuses to run as root: then every command runs as `postgres`.
    as_postgres: bool,
}

impl Clusters {
    fn command(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin(bin));
            c
        } else {
            Command::new(pg_bin(bin))
        };
        c.args(args).current_dir(&self.dir).stdin(Stdio::null());
        c
    }

    fn pg(&self, bin: &str, args: &[&str]) {
        let out = self.command(bin, args).output().unwrap();
        assert!(
            out.status.success(),
            "{bin} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data(&self, which: &str) -> String {
        self.dir.join(which).to_string_lossy().into_owned()
    }

    fn append(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join(file))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn ctl(&self, which: &str, args: &[&str]) {
        let (data, log) = (self.data(which), self.data(&format!("{which}.log")));
        let mut all = vec!["-D", &data, "-l", &log, "-w", "-t", "30"];
        all.extend_from_slice(args);
        self.pg("pg_ctl", &all);
    }

    /// initdb, configure, start the primary; base backup, configure, start the standby.
    fn start() -> Clusters {
        let dir = std::env::temp_dir().join(format!("in-failover-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = Clusters {
            dir,
            primary_port: free_addr().port(),
            standby_port: free_addr().port(),
            as_postgres: is_root(),
        };
        if me.as_postgres {
            let status = Command::new("chown").args(["postgres:"]).arg(&me.dir).status().unwrap();
            assert!(status.success(), "chown postgres {}", me.dir.display());
        }
        let primary = me.data("primary");
        me.pg(
            "initdb",
            &[
                "-D",
                &primary,
                "-U",
                "postgres",
                "--auth=trust",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        me.append("primary/postgresql.conf", &me.primary_conf());
        me.ctl("primary", &["start"]);
        let standby = me.data("standby");
        let port = me.primary_port.to_string();
        me.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &standby,
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        std::fs::write(me.dir.join("standby/standby.signal"), "").unwrap();
        // postgresql.auto.conf is read last: these override the primary's copied settings.
        me.append(
            "standby/postgresql.auto.conf",
            &format!(
                "port = {}\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby'\n\
                 # Once promoted it runs alone: no synchronous standby to wait for.\nsynchronous_standby_names = ''\n",
                me.standby_port, me.primary_port
            ),
        );
        me.ctl("standby", &["start"]);
        me
    }

    /// The primary's settings: streaming replication, one synchronous standby.
    fn primary_conf(&self) -> String {
        format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 200\nshared_buffers = 32MB\nwal_level = replica\nmax_wal_senders = 4\n\
             # A commit returns once the standby has flushed it too.\n\
             synchronous_standby_names = 'standby'\nsynchronous_commit = on\n\
             # The drill kills processes, not the machine: the page cache survives.\nfsync = off\n",
            self.primary_port,
            self.dir.display()
        )
    }

    fn url(port: u16, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{db}")
    }

    /// The product's URL: both hosts, the standby first, so that start-up
    /// (and `migrate`) must skip a host in recovery, and after the failover
    /// the first host is the new primary.
    fn multi_host_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.standby_port, self.primary_port
        )
    }

    /// Waits until the primary reports its standby synchronous.
    async fn wait_sync(&self) {
        let pool = PgPool::connect(&Self::url(self.primary_port, "postgres"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state: Option<String> =
                sqlx::query_scalar("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'")
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            if state.as_deref() == Some("sync") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never became synchronous: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pool.close().await;
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for which in ["primary", "standby"] {
            if Path::new(&self.data(which)).join("postmaster.pid").exists() {
                let data = self.data(which);
                let stop = self.command("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
                let _ = { stop }.stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request of the stream: when it was sent and answered, and whether
/// the service served it (any final answer; not 503, a refused connection
/// or 409 `claim_in_progress`).
#[derive(Debug, Clone, Copy)]
struct Attempt {
    sent: Instant,
    answered: Instant,
    served: bool,
}

#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    attempts: usize,
    waited: Duration,
}

/// A bank backend's client: the same key on 503, connection errors and 409
/// `claim_in_progress`, after `Retry-After` (200 ms without one); every
/// request is logged.
async fn claim(api: &Api, account: &str, key: &str, log: &Mutex<Vec<Attempt>>) -> Outcome {
    let started = Instant::now();
    let url = format!("http://{}/v1/accounts/{account}/interest/claims", api.http);
    for attempts in 1.. {
        let sent = Instant::now();
        let answer = api
            .client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", key)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let mut pause = Duration::from_millis(200);
        let mut status = None;
        if let Ok(r) = answer {
            let code = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(code < 500 || code == 503, "{account}: {code} {body}");
            assert!(
                code != 503 || retry_after.is_some(),
                "{account}: 503 without Retry-After"
            );
            pause = retry_after.map_or(pause, Duration::from_secs);
            let in_progress = code == 409 && body["code"] == "claim_in_progress";
            status = (code != 503 && !in_progress).then_some(code);
        }
        let served = status.is_some();
        log.lock().unwrap().push(Attempt {
            sent,
            answered: Instant::now(),
            served,
        });
        if let Some(status) = status {
            return Outcome {
                status,
                attempts,
                waited: started.elapsed(),
            };
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{account}: no final answer in 60 s"
        );
        tokio::time::sleep(pause).await;
    }
    unreachable!()
}

/// The environment on the clusters: the database created on the primary,
/// migrated and loaded with plans by the binary through the multi-host URL.
async fn environment(clusters: &Clusters) -> harness::Env {
    let name = format!("fo_{}", uuid::Uuid::new_v4().simple());
    let spec = harness::Spec {
        product: harness::Product {
            bin: env!("CARGO_BIN_EXE_interest-now").into(),
            dir: env!("CARGO_MANIFEST_DIR").into(),
        },
        admin_db_url: Clusters::url(clusters.primary_port, "postgres"),
        brokers: crate::harness::brokers(),
        name,
        partitions: 4,
        plans_json: include_str!("../../examples/plans.json").to_owned(),
        tokens: vec![TOKEN.to_owned()],
        clock_offset_secs: suite_offset(),
        env: vec![
            ("CLAIM_WAIT_MS".to_owned(), "1000".to_owned()),
            ("RUST_LOG".to_owned(), "info,rdkafka=warn,sqlx=warn".to_owned()),
        ],
        log_dir: std::env::temp_dir(),
    };
    let url_of = |db: &str| clusters.multi_host_url(db);
    harness::Env::create_with_product_url(spec, Some(&url_of))
        .await
        .expect("an environment on the drill's clusters (run scripts/infra-up for the broker)")
}

async fn load(env: &harness::Env) -> Vec<String> {
    let as_of = format_instant(now() - Dur::days(2));
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("fo-{i:04}")).collect();
    for a in &accounts {
        let json =
            format!(r#"{{"account_id":"{a}","seq":1,"balance":"100000000","currency":"KRW","as_of":"{as_of}"}}"#);
        env.produce("balance-snapshots", a, &json).await.unwrap();
    }
    env.wait_count(
        "SELECT count(*) FROM accounts",
        ACCOUNTS as i64,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    accounts
}

/// Claims at a steady rate, one task per account.
fn stream(
    api: &Api,
    accounts: Vec<String>,
    log: Arc<Mutex<Vec<Attempt>>>,
) -> tokio::task::JoinHandle<HashMap<String, Outcome>> {
    let api = api.clone();
    tokio::spawn(async move {
        let clients = accounts.into_iter().enumerate().map(|(i, a)| {
            let (api, log) = (api.clone(), log.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i as u64 * 1000 / CLAIMS_PER_S)).await;
                let outcome = claim(&api, &a, &format!("failover-{a}"), &log).await;
                (a, outcome)
            })
        });
        futures::future::join_all(clients)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect()
    })
}

/// What happens to the primary.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// `pg_ctl stop -m immediate`: a crash.
    Kill,
    /// A switchover: made read-only in place (`default_transaction_read_only`,
    /// reloaded), still answering; its sessions then get SQLSTATE 25006.
    Demote,
}

/// The fault on the primary and, after `delay`, the standby promoted:
/// (fault, promoted) instants.
fn fail_over(clusters: &Clusters, fault: Fault, delay: Duration) -> (Instant, Instant) {
    match fault {
        Fault::Kill => {
            let primary = clusters.data("primary");
            clusters.pg("pg_ctl", &["-D", &primary, "-m", "immediate", "stop"]);
        }
        Fault::Demote => {
            let port = clusters.primary_port.to_string();
            let psql = [
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
            ];
            let sql = [
                "-c",
                "ALTER SYSTEM SET default_transaction_read_only = on",
                "-c",
                "SELECT pg_reload_conf()",
            ];
            clusters.pg("psql", &[&psql[..], &sql[..]].concat());
        }
    }
    let at = Instant::now();
    std::thread::sleep(delay);
    clusters.ctl("standby", &["promote"]);
    (at, Instant::now())
}

/// Every claim answered 201/202 is paid exactly once, by its idempotency
/// key; nothing else is paid; every payout is published. (lost, doubled).
async fn audit(pool: &PgPool, outcomes: &HashMap<String, Outcome>) -> (usize, usize) {
    let accepted: HashMap<String, &String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o.status, 201 | 202))
        .map(|(a, _)| (format!("failover-{a}"), a))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let paid: HashMap<String, i64> = loop {
        let rows =
            sqlx::query("SELECT idempotency_key, count(*) AS n FROM interest_payouts WHERE kind = 'claim' GROUP BY 1")
                .fetch_all(pool)
                .await
                .unwrap();
        let paid: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if accepted.keys().all(|k| paid.contains_key(k)) || Instant::now() > deadline {
            break paid;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lost = accepted.keys().filter(|k| !paid.contains_key(*k)).count();
    let doubled = paid.values().filter(|n| **n > 1).count();
    let strangers: Vec<&String> = paid.keys().filter(|k| !accepted.contains_key(*k)).collect();
    assert_eq!((lost, doubled), (0, 0), "claims answered 201/202 lost, paid twice");
    assert!(strangers.is_empty(), "paid without a 201/202 answer: {strangers:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM payout_outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} payouts never published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (lost, doubled)
}

/// On the demoted primary (still up): no session of the service is left.
async fn left_behind(clusters: &Clusters, db: &str) {
    let old = PgPool::connect(&Clusters::url(clusters.primary_port, "postgres"))
        .await
        .unwrap();
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'interest-now%'",
    )
    .bind(db)
    .fetch_one(&old)
    .await
    .unwrap();
    assert_eq!(sessions, 0, "sessions of the service left on the demoted primary");
    old.close().await;
}

/// Log lines of the service that name SQLSTATE 25006 (a statement sent to
/// a read-only host).
fn read_only_errors(logs: &[&PathBuf]) -> usize {
    logs.iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .map(|text| text.lines().filter(|l| l.contains("read-only transaction")).count())
        .sum()
}

/// The first served answer to a request sent at or after `from`.
fn first_served_after(log: &[Attempt], from: Instant) -> Instant {
    log.iter()
        .filter(|a| a.served && a.sent >= from)
        .map(|a| a.answered)
        .min()
        .expect("service resumed")
}

/// Seconds without service: from the first request not served after the
/// kill to the first served answer of a request sent after that (0 when
/// every request was served); and the stall: from the kill to the first
/// served answer of a request sent after the kill (requests that waited
/// through the failover instead of failing count here).
fn gap(log: &[Attempt], killed: Instant) -> (f64, f64, usize) {
    let stall = (first_served_after(log, killed) - killed).as_secs_f64();
    let failed: Vec<&Attempt> = log.iter().filter(|a| !a.served && a.answered >= killed).collect();
    let Some(first_failed) = failed.iter().map(|a| a.answered).min() else {
        return (0.0, stall, 0);
    };
    let resumed = first_served_after(log, first_failed);
    ((resumed - first_failed).as_secs_f64(), stall, failed.len())
}

fn two_decimals(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "heavy (two PostgreSQL clusters): run alone, cargo test --test it -- --ignored failover::"]
async fn failover_to_the_synchronous_standby_loses_nothing_and_needs_no_restart() {
    let clusters = tokio::task::block_in_place(Clusters::start);
    tokio::time::timeout(DRILL_LIMIT, drill(&clusters, Fault::Kill))
        .await
        .expect("the drill ends within its limit");
}

/// A switchover: the primary turns read-only but keeps answering (its open
/// sessions, the API's LISTEN session among them, must not stay there).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "heavy (two PostgreSQL clusters): run alone, cargo test --test it -- --ignored failover::"]
async fn failover_from_a_primary_demoted_in_place_leaves_no_session_behind() {
    let clusters = tokio::task::block_in_place(Clusters::start);
    tokio::time::timeout(DRILL_LIMIT, drill(&clusters, Fault::Demote))
        .await
        .expect("the drill ends within its limit");
}

async fn drill(clusters: &Clusters, fault: Fault) {
    clusters.wait_sync().await;
    let env = environment(clusters).await;
    let mut api = env.serve("api", &[]).await.unwrap();
    let mut worker = env.serve("worker", &[]).await.unwrap();
    let pids = (api.child.id(), worker.child.id());
    let accounts = load(&env).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let run = stream(&api.api, accounts, log.clone());
    tokio::time::sleep(KILL_AFTER).await;
    let (killed, promoted) = tokio::task::block_in_place(|| fail_over(clusters, fault, promote_after()));
    let outcomes = run.await.unwrap();
    let streamed = started.elapsed();
    assert!(api.running() && worker.running(), "the processes survived the failover");
    assert_eq!((api.child.id(), worker.child.id()), pids, "no restart");
    let pool = PgPool::connect(&Clusters::url(clusters.standby_port, &env.name))
        .await
        .unwrap();
    let (lost, doubled) = audit(&pool, &outcomes).await;
    if fault == Fault::Demote {
        left_behind(clusters, &env.name).await;
    }
    let log = log.lock().unwrap().clone();
    let (without_service, stall, failed) = gap(&log, killed);
    let count = |s: u16| outcomes.values().filter(|o| o.status == s).count();
    let mut waits: Vec<u128> = outcomes.values().map(|o| o.waited.as_millis()).collect();
    waits.sort_unstable();
    println!(
        "drill: {}",
        serde_json::json!({
            "drill": "failover",
            "fault": format!("{fault:?}").to_lowercase(),
            "read_only_errors": read_only_errors(&[&api.log, &worker.log]),
            "seconds_without_service": two_decimals(without_service),
            "stall_s": two_decimals(stall),
            "kill_to_promoted_ms": (promoted - killed).as_millis(),
            "claims": outcomes.len(),
            "retried": outcomes.values().filter(|o| o.attempts > 1).count(),
            "requests_not_served": failed,
            "answered_201": count(201),
            "answered_202": count(202),
            "answered_other": outcomes.len() - count(201) - count(202),
            "wait_ms_max": waits.last(),
            "stream_s": streamed.as_secs(),
            "lost": lost,
            "doubled": doubled,
            "same_pids": true,
        })
    );
    pool.close().await;
    env.pool.close().await;
}

/// The test database's URL with a host that refuses connections put first.
fn behind_a_dead_host(db_url: &str, query: &str) -> String {
    let (scheme, rest) = db_url.split_once("://").unwrap();
    let (user, rest) = rest.split_once('@').map_or(("", rest), |(u, r)| (u, r));
    let at = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    let dead = free_addr();
    format!("{scheme}://{at}{dead},{rest}?{query}")
}

/// Light (the shared server): the multi-host URL of SPEC §8 with a first
/// host that refuses connections; `migrate`, `serve` and a claim go to the
/// second. A session attribute other than read-write stops start-up in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_host_url_skips_a_host_that_does_not_answer() {
    let env = crate::harness::Env::new(2).await;
    let url = behind_a_dead_host(&env.db_url, "target_session_attrs=read-write");
    let out = env.command(&["migrate"]).env("DATABASE_URL", &url).output().unwrap();
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = env.serve("all", &[("DATABASE_URL", &url)]).await;
    let as_of = format_instant(now() - Dur::days(2));
    env.snapshot("mh-1", 1, "100000000", &as_of).await;
    env.wait_accounts(1).await;
    assert_eq!(svc.api.claim("mh-1", "mh-key-1").await.status, 201);
    let any = behind_a_dead_host(&env.db_url, "target_session_attrs=any");
    let out = env.command(&["migrate"]).env("DATABASE_URL", &any).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("target_session_attrs=any is not supported"), "{stderr}");
    drop(svc);
    env.drop_db().await;
}
