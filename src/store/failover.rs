//! Following a PostgreSQL failover without a restart (SPEC §8,
//! `target_session_attrs=read-write` and libpq's multi-host URL).
//!
//! * At start the hosts are tried in the URL's order; the first that answers
//!   and is read-write (`pg_is_in_recovery()` false and
//!   `transaction_read_only` off) is the pool's target.
//! * Every new pool connection is checked the same way (`after_connect`): a
//!   connection to a standby or a demoted primary is refused, and sqlx's
//!   connect loop retries — with the pool's current target, re-read on every
//!   attempt — until `acquire_timeout`.
//! * A watcher per pool holds one probe session to the target and asks it
//!   every [`PROBE_INTERVAL`]. When the probe fails or finds the host
//!   read-only, it tries the hosts again in order (every [`SEARCH_INTERVAL`]
//!   until one is read-write) and, when it is another host, points the pool
//!   at it (`Pool::set_connect_options`).
//! * Connections opened before a switch (or before the target was found
//!   read-only) are closed instead of reused: `before_acquire` refuses an idle
//!   one, `after_release` closes one coming back from use; on a host that
//!   turned read-only the watcher also ends the service's sessions there
//!   (`pg_terminate_backend`: the LISTEN session is never released). So no
//!   statement runs on a demoted primary (SQLSTATE 25006) for long after the
//!   watcher saw it.
//!
//! What this does not do: decide that a primary is dead (an operator or a
//! failover manager promotes the standby) or fence an old primary that still
//! accepts writes — a primary that was cut off but not stopped keeps its own
//! sessions until the watcher sees another read-write host.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// How often the watcher asks its host whether it is still the read-write one.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// While no host is read-write, how often the hosts are tried again (a
/// promotion is seen within this).
pub const SEARCH_INTERVAL: Duration = Duration::from_millis(100);
/// A probe, or a connection attempt to one host, that takes longer failed.
const HOST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long start-up looks for a read-write host (the pool's acquire timeout).
const START_TIMEOUT: Duration = Duration::from_secs(3);

/// One host of the URL: its label for logs (no credentials) and options.
#[derive(Clone)]
pub struct Host {
    pub label: String,
    pub options: PgConnectOptions,
}

/// When the last switch (or read-only finding) happened: connections opened
/// before it are not reused.
#[derive(Default)]
struct Cutoff(Mutex<Option<Instant>>);

impl Cutoff {
    fn now(&self) {
        *self.0.lock().expect("cutoff lock") = Some(Instant::now());
    }

    /// Whether a connection of this age was opened after the cutoff.
    fn keeps(&self, meta: &PoolConnectionMetadata) -> bool {
        match *self.0.lock().expect("cutoff lock") {
            None => true,
            Some(cut) => Instant::now().checked_sub(meta.age).is_some_and(|opened| opened >= cut),
        }
    }
}

/// A pool on the first read-write host, which follows a failover.
pub async fn connect(hosts: Vec<Host>, pool_options: PgPoolOptions) -> anyhow::Result<PgPool> {
    let deadline = Instant::now() + START_TIMEOUT;
    let (index, probe) = loop {
        match find_read_write(&hosts).await {
            Ok(found) => break found,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let cutoff = Arc::new(Cutoff::default());
    let (on_acquire, on_release) = (cutoff.clone(), cutoff.clone());
    let pool = pool_options
        .after_connect(|conn, _| Box::pin(async move { refuse_read_only(conn).await }))
        .before_acquire(move |_, meta| {
            let keep = on_acquire.keeps(&meta);
            Box::pin(async move { Ok(keep) })
        })
        .after_release(move |_, meta| {
            let keep = on_release.keeps(&meta);
            Box::pin(async move { Ok(keep) })
        })
        .connect_with(hosts[index].options.clone())
        .await?;
    tracing::info!(event = "database_host", host = %hosts[index].label, "connected to the read-write host");
    tokio::spawn(watch(
        Watch {
            pool: pool.clone(),
            hosts,
            current: index,
            cutoff,
        },
        probe,
    ));
    Ok(pool)
}

/// Whether the session may write: not a standby, not read-only by default.
async fn is_read_write(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'")
        .fetch_one(conn)
        .await
}

async fn refuse_read_only(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    match is_read_write(conn).await? {
        true => Ok(()),
        false => Err(sqlx::Error::Protocol(
            "the host is read-only (a standby or a demoted primary); waiting for the read-write host".into(),
        )),
    }
}

/// The first host, in the URL's order, that answers and is read-write, with
/// a session to it (the watcher's probe).
async fn find_read_write(hosts: &[Host]) -> anyhow::Result<(usize, PgConnection)> {
    let mut why = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let options = host.options.clone().disable_statement_logging();
        let attempt = async {
            let mut conn = PgConnection::connect_with(&options).await?;
            match is_read_write(&mut conn).await? {
                true => Ok(conn),
                false => {
                    let _ = conn.close().await;
                    Err(sqlx::Error::Protocol("read-only (a standby?)".into()))
                }
            }
        };
        match tokio::time::timeout(HOST_TIMEOUT, attempt).await {
            Ok(Ok(conn)) => return Ok((i, conn)),
            Ok(Err(e)) => why.push(format!("{}: {e}", host.label)),
            Err(_) => why.push(format!("{}: no answer within {HOST_TIMEOUT:?}", host.label)),
        }
    }
    bail!("no read-write PostgreSQL host ({})", why.join("; ").replace('\n', " "))
}

/// Ends this service's other sessions on a host that turned read-only (same
/// user and `application_name`): idle pool connections, and sessions held
/// outside the pool's release path — the API's LISTEN session — which would
/// otherwise stay on a demoted primary that still answers. They reconnect
/// through `after_connect`, which waits for the read-write host.
async fn end_sessions(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE usename = current_user AND application_name = current_setting('application_name')
           AND pid <> pg_backend_pid()",
    )
    .fetch_one(conn)
    .await
}

/// What the watcher of one pool knows.
struct Watch {
    pool: PgPool,
    hosts: Vec<Host>,
    current: usize,
    cutoff: Arc<Cutoff>,
}

/// Asks the target every [`PROBE_INTERVAL`]; on a failed probe or a
/// read-only answer, looks for the read-write host (every
/// [`SEARCH_INTERVAL`] until one answers) and switches the pool to it. Ends
/// when the pool is closed.
async fn watch(mut w: Watch, probe: PgConnection) {
    let mut probe = Some(probe);
    let mut lost_at: Option<Instant> = None;
    loop {
        let pause = if lost_at.is_some() {
            SEARCH_INTERVAL
        } else {
            PROBE_INTERVAL
        };
        tokio::time::sleep(pause).await;
        if w.pool.is_closed() {
            return;
        }
        if let Some(conn) = probe.as_mut() {
            match tokio::time::timeout(HOST_TIMEOUT, is_read_write(conn)).await {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => {
                    w.cutoff.now();
                    let ended = end_sessions(conn).await.unwrap_or(0);
                    tracing::warn!(event = "database_read_only", host = %w.hosts[w.current].label, sessions_ended = ended);
                }
                _ => tracing::warn!(event = "database_probe_failed", host = %w.hosts[w.current].label),
            }
            probe = None;
        }
        let first_search = lost_at.is_none();
        let lost = *lost_at.get_or_insert_with(Instant::now);
        match find_read_write(&w.hosts).await {
            Ok((index, conn)) => {
                probe = Some(conn);
                lost_at = None;
                w.switch_to(index, lost.elapsed());
            }
            // Once per outage; the search goes on every SEARCH_INTERVAL.
            Err(e) if first_search => tracing::warn!(event = "no_read_write_host", error = %e),
            Err(_) => {}
        }
    }
}

impl Watch {
    /// Points the pool at `index` (if it is another host) and retires every
    /// connection opened before.
    fn switch_to(&mut self, index: usize, searched: Duration) {
        let searched_ms = searched.as_millis() as u64;
        if index == self.current {
            tracing::info!(event = "database_host_back", host = %self.hosts[index].label, searched_ms);
            return;
        }
        self.pool.set_connect_options(self.hosts[index].options.clone());
        self.cutoff.now();
        tracing::warn!(
            event = "database_failover",
            from = %self.hosts[self.current].label,
            to = %self.hosts[index].label,
            searched_ms,
            "the pool follows the new read-write host"
        );
        self.current = index;
    }
}

#[cfg(test)]
mod tests {
    use crate::store::dburl::DbUrl;
    use sqlx::postgres::PgConnectOptions;

    #[test]
    fn each_host_of_the_multi_host_form_reads_as_sqlx_options() {
        let url = "postgres://app:s%40cret@h1:5432,h2:5433/bank?target_session_attrs=read-write&application_name=x";
        let hosts = DbUrl::parse(url).unwrap().hosts;
        let got: Vec<(String, u16)> = hosts
            .iter()
            .map(|h| {
                let o: PgConnectOptions = h.url.parse().unwrap();
                assert_eq!((o.get_username(), o.get_database()), ("app", Some("bank")));
                assert_eq!(o.get_application_name(), Some("x"));
                (o.get_host().to_owned(), o.get_port())
            })
            .collect();
        assert_eq!(got, [("h1".to_owned(), 5432), ("h2".to_owned(), 5433)]);
    }
}
