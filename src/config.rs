//! Typed configuration from the environment (SPEC §8), loaded once.
//! Unknown or malformed values stop start-up with a one-line reason.

use std::net::SocketAddr;

use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretString,
    pub kafka_brokers: String,
    pub kafka_group_id: String,
    pub kafka_topic_prefix: String,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The API's clients: each token and the identity its idempotency keys are scoped to.
    pub api_tokens: Vec<ApiClient>,
    pub default_plan: Option<String>,
    pub claims_per_day: u32,
    pub claim_wait_ms: u64,
    pub clock_offset_seconds: i64,
    /// Claims one API process holds open at once; past this it answers 503.
    pub claims_in_flight_max: usize,
    /// Messages one worker transaction applies at most.
    pub worker_batch_size_max: usize,
    /// A request head must arrive within this; also the keep-alive idle timeout.
    pub http_header_read_timeout_ms: u64,
    /// Open API connections at most; one over it is answered 503 and closed.
    pub http_connections_max: usize,
    /// API requests being handled at once at most; over it, 503 at once.
    pub http_requests_in_flight_max: usize,
    /// Seconds between two reloads of the rate plans; below the import lead
    /// (`store::PLAN_LEAD_SECS`, 60 s) so a rate change reaches every process first.
    pub plan_reload_secs: u64,
    /// How long an idempotency key's answer is kept and replayed; a key used
    /// again after this is a new request (SPEC §5).
    pub idempotency_key_ttl: std::time::Duration,
    /// How long published outbox rows (`payout_outbox`, `dead_letters`) are
    /// kept before `maintain` drops their partition.
    pub outbox_retention: std::time::Duration,
    /// The workers' consumer liveness: how fast a silent worker's partitions
    /// move, traded against rebalances a busy but healthy worker might cause.
    pub kafka_liveness: KafkaLiveness,
}

/// `KAFKA_SESSION_TIMEOUT_MS`, `KAFKA_HEARTBEAT_INTERVAL_MS`,
/// `KAFKA_MAX_POLL_INTERVAL_MS`: the consumer group's liveness settings
/// (docs/RELIABILITY.md, "A cut network and a zombie", for how they were chosen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaLiveness {
    /// A worker whose heartbeats stop (frozen, cut off, dead) loses its
    /// partitions after this; the takeover takes about this plus one heartbeat.
    pub session_timeout_ms: u32,
    /// How often librdkafka's own thread heartbeats; also how soon the other
    /// workers hear of a rebalance. At most a third of the session timeout, so
    /// two lost heartbeats never end a session.
    pub heartbeat_interval_ms: u32,
    /// A worker that stops polling this long (a batch stuck on an unreachable
    /// database) leaves the group, so its partitions move.
    pub max_poll_interval_ms: u32,
}

impl KafkaLiveness {
    /// Today's values, kept until drill 2 has measured a shorter session
    /// timeout against rebalances under the spike's CPU load (not yet done:
    /// docs/RELIABILITY.md); a frozen worker's partitions move after ~10 s.
    pub const DEFAULT: KafkaLiveness = KafkaLiveness {
        session_timeout_ms: 10_000,
        heartbeat_interval_ms: 500,
        max_poll_interval_ms: 60_000,
    };

    /// Checks the three together (bounds, heartbeat ≤ session / 3, poll
    /// interval ≥ session); errors are one line naming the setting.
    pub fn new(
        session_timeout_ms: u32,
        heartbeat_interval_ms: u32,
        max_poll_interval_ms: u32,
    ) -> Result<Self, ConfigError> {
        if !(1_000..=300_000).contains(&session_timeout_ms) {
            return Err(ConfigError(format!(
                "KAFKA_SESSION_TIMEOUT_MS={session_timeout_ms} must be within 1000..=300000"
            )));
        }
        if heartbeat_interval_ms < 100 || heartbeat_interval_ms.saturating_mul(3) > session_timeout_ms {
            return Err(ConfigError(format!(
                "KAFKA_HEARTBEAT_INTERVAL_MS={heartbeat_interval_ms} must be at least 100 and at most a third of KAFKA_SESSION_TIMEOUT_MS ({session_timeout_ms})"
            )));
        }
        if max_poll_interval_ms < session_timeout_ms || max_poll_interval_ms > 3_600_000 {
            return Err(ConfigError(format!(
                "KAFKA_MAX_POLL_INTERVAL_MS={max_poll_interval_ms} must be at least KAFKA_SESSION_TIMEOUT_MS ({session_timeout_ms}) and at most 3600000"
            )));
        }
        Ok(KafkaLiveness {
            session_timeout_ms,
            heartbeat_interval_ms,
            max_poll_interval_ms,
        })
    }

    fn from_env() -> Result<Self, ConfigError> {
        let d = Self::DEFAULT;
        Self::new(
            parsed("KAFKA_SESSION_TIMEOUT_MS", d.session_timeout_ms)?,
            parsed("KAFKA_HEARTBEAT_INTERVAL_MS", d.heartbeat_interval_ms)?,
            parsed("KAFKA_MAX_POLL_INTERVAL_MS", d.max_poll_interval_ms)?,
        )
    }
}

/// One API client: its token and the identity behind it.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// Stable, not secret: the scope of the client's idempotency keys. A named
    /// entry's name; for a plain token `token-` and the first 16 hex digits of
    /// its SHA-256 (so reordering the list changes no client's scope).
    pub client_id: String,
    pub token: SecretString,
}

/// `API_TOKENS`: comma-separated entries, each a plain token (its own client)
/// or `name:token` (the client `name`, 1–64 of `[A-Za-z0-9._-]`). One name
/// may have several tokens (rotation: `backend:old,backend:new`, then drop
/// the old one); they share the client's keys. A token holding `:` must be
/// given in the named form.
pub fn parse_api_tokens(raw: &str) -> Result<Vec<ApiClient>, ConfigError> {
    let mut clients: Vec<ApiClient> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let client = match entry.split_once(':') {
            Some((name, token)) => {
                let name_ok = (1..=64).contains(&name.len())
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !name_ok || token.is_empty() {
                    return Err(ConfigError(
                        "API_TOKENS: a named entry is name:token with a name of 1-64 [A-Za-z0-9._-]".into(),
                    ));
                }
                ApiClient {
                    client_id: name.to_owned(),
                    token: SecretString::from(token.to_owned()),
                }
            }
            None => ApiClient {
                client_id: plain_client_id(entry),
                token: SecretString::from(entry.to_owned()),
            },
        };
        clients.push(client);
    }
    Ok(clients)
}

fn plain_client_id(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("token-{hex}")
}

/// A duration setting: a whole number and a unit, `s`, `m`, `h` or `d`
/// (`7d`, `36h`, `90s`); at least one second.
pub fn parse_duration(name: &str, raw: &str) -> Result<std::time::Duration, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "{name}={raw:?} is malformed: a whole number and s, m, h or d, like 7d"
        ))
    };
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = raw.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let per: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n
        .checked_mul(per)
        .filter(|s| (1..=3_650 * 86_400).contains(s))
        .ok_or_else(|| ConfigError(format!("{name}={raw:?} must be between 1s and 3650d")))?;
    Ok(std::time::Duration::from_secs(secs))
}

fn duration_setting(name: &str, default: std::time::Duration) -> Result<std::time::Duration, ConfigError> {
    match var(name)? {
        None => Ok(default),
        Some(v) => parse_duration(name, &v),
    }
}

pub const IDEMPOTENCY_KEY_TTL_DEFAULT: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
pub const OUTBOX_RETENTION_DEFAULT: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// A configuration problem, as one line.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn var(name: &str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v.trim().to_owned())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError(format!("{name} is not valid UTF-8"))),
    }
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> Result<T, ConfigError> {
    match var(name)? {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError(format!("{name}={v:?} is malformed"))),
    }
}

fn required(name: &str) -> Result<String, ConfigError> {
    var(name)?.ok_or_else(|| ConfigError(format!("{name} is required")))
}

impl Settings {
    /// What every command needs: the database.
    pub fn from_env() -> Result<Settings, ConfigError> {
        let database_url = required("DATABASE_URL")?;
        // The one parser of the URL (pure; `store::connect` uses it too):
        // libpq's multi-host form included, other session attributes refused.
        crate::store::dburl::DbUrl::parse(&database_url).map_err(ConfigError)?;
        let api_tokens = match var("API_TOKENS")? {
            Some(v) => parse_api_tokens(&v)?,
            None => Vec::new(),
        };
        let claims_per_day: u32 = parsed("CLAIMS_PER_DAY", 1)?;
        if claims_per_day == 0 {
            return Err(ConfigError("CLAIMS_PER_DAY must be at least 1".into()));
        }
        let claim_wait_ms: u64 = parsed("CLAIM_WAIT_MS", 2000)?;
        if claim_wait_ms > 60_000 {
            return Err(ConfigError("CLAIM_WAIT_MS must be at most 60000".into()));
        }
        let http_header_read_timeout_ms: u64 = parsed("HTTP_HEADER_READ_TIMEOUT_MS", 5_000)?;
        if !(100..=60_000).contains(&http_header_read_timeout_ms) {
            return Err(ConfigError(
                "HTTP_HEADER_READ_TIMEOUT_MS must be within 100..=60000".into(),
            ));
        }
        let http_connections_max: usize = parsed("HTTP_CONNECTIONS_MAX", 25_000)?;
        if http_connections_max == 0 {
            return Err(ConfigError("HTTP_CONNECTIONS_MAX must be at least 1".into()));
        }
        let http_requests_in_flight_max: usize = parsed("HTTP_REQUESTS_IN_FLIGHT_MAX", 25_000)?;
        if http_requests_in_flight_max == 0 {
            return Err(ConfigError("HTTP_REQUESTS_IN_FLIGHT_MAX must be at least 1".into()));
        }
        let plan_reload_secs: u64 = parsed("PLAN_RELOAD_SECS", 5)?;
        if !(1..60).contains(&plan_reload_secs) {
            return Err(ConfigError(
                "PLAN_RELOAD_SECS must be 1 to 59 (below the 60 s import lead)".into(),
            ));
        }
        let prefix = var("KAFKA_TOPIC_PREFIX")?.unwrap_or_default();
        if !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(ConfigError("KAFKA_TOPIC_PREFIX may only hold [A-Za-z0-9._-]".into()));
        }
        if let Some(level) = var("RUST_LOG")? {
            tracing_subscriber::EnvFilter::try_new(&level)
                .map_err(|e| ConfigError(format!("RUST_LOG={level:?}: {e}")))?;
        }
        Ok(Settings {
            database_url: SecretString::from(database_url),
            kafka_brokers: var("KAFKA_BROKERS")?.unwrap_or_else(|| "127.0.0.1:9092".into()),
            kafka_group_id: var("KAFKA_GROUP_ID")?.unwrap_or_else(|| "interest-now".into()),
            kafka_topic_prefix: prefix,
            http_addr: parsed("HTTP_ADDR", "0.0.0.0:8080".parse().expect("literal"))?,
            admin_addr: parsed("ADMIN_ADDR", "0.0.0.0:9090".parse().expect("literal"))?,
            api_tokens,
            default_plan: var("DEFAULT_PLAN")?,
            claims_per_day,
            claim_wait_ms,
            clock_offset_seconds: parsed("CLOCK_OFFSET_SECONDS", 0)?,
            claims_in_flight_max: parsed("CLAIMS_IN_FLIGHT_MAX", 20_000)?,
            worker_batch_size_max: parsed("WORKER_BATCH_SIZE_MAX", 2_000)?,
            http_header_read_timeout_ms,
            http_connections_max,
            http_requests_in_flight_max,
            plan_reload_secs,
            idempotency_key_ttl: duration_setting("IDEMPOTENCY_KEY_TTL", IDEMPOTENCY_KEY_TTL_DEFAULT)?,
            outbox_retention: duration_setting("OUTBOX_RETENTION", OUTBOX_RETENTION_DEFAULT)?,
            kafka_liveness: KafkaLiveness::from_env()?,
        })
    }

    /// The service additionally needs tokens for the API.
    pub fn require_api_tokens(&self) -> Result<(), ConfigError> {
        if self.api_tokens.is_empty() {
            return Err(ConfigError("API_TOKENS is required for the API role".into()));
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{}", self.kafka_topic_prefix, name)
    }
}

/// The service's clock: the system clock plus `CLOCK_OFFSET_SECONDS`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset: chrono::Duration,
}

impl Clock {
    pub fn new(offset_seconds: i64) -> Self {
        Self {
            offset: chrono::Duration::seconds(offset_seconds),
        }
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_api_tokens, parse_duration, KafkaLiveness};
    use secrecy::ExposeSecret;

    #[test]
    fn kafka_liveness_is_checked_as_a_whole_in_one_line() {
        let d = KafkaLiveness::DEFAULT;
        let again = KafkaLiveness::new(d.session_timeout_ms, d.heartbeat_interval_ms, d.max_poll_interval_ms);
        assert_eq!(again.unwrap(), d);
        assert!(KafkaLiveness::new(3_000, 1_000, 3_000).is_ok());
        let cases = [
            (999, 300, 60_000, "KAFKA_SESSION_TIMEOUT_MS=999"),
            (300_001, 500, 600_000, "KAFKA_SESSION_TIMEOUT_MS=300001"),
            (2_000, 700, 60_000, "KAFKA_HEARTBEAT_INTERVAL_MS=700"),
            (2_000, 99, 60_000, "KAFKA_HEARTBEAT_INTERVAL_MS=99"),
            (10_000, 500, 9_999, "KAFKA_MAX_POLL_INTERVAL_MS=9999"),
            (2_000, 500, 3_600_001, "KAFKA_MAX_POLL_INTERVAL_MS=3600001"),
        ];
        for (s, h, p, names) in cases {
            let e = KafkaLiveness::new(s, h, p).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("configuration: {names} ")) && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(parse_duration("T", "7d").unwrap().as_secs(), 7 * 86_400);
        assert_eq!(parse_duration("T", "36h").unwrap().as_secs(), 36 * 3_600);
        assert_eq!(parse_duration("T", "90s").unwrap().as_secs(), 90);
        for bad in [
            "",
            "7",
            "d",
            "0s",
            "-1d",
            "1.5h",
            "7 d",
            "7D",
            "1w",
            "99999999999999999999d",
            "3651d",
        ] {
            let e = parse_duration("T", bad).unwrap_err().to_string();
            assert!(e.starts_with("configuration: T=") && !e.contains('\n'), "{bad:?}: {e}");
        }
    }

    #[test]
    fn outbox_retention_refuses_bad_values_in_one_line() {
        assert_eq!(
            parse_duration("OUTBOX_RETENTION", "7d").unwrap(),
            super::OUTBOX_RETENTION_DEFAULT
        );
        for bad in ["7", "seven days", "0d", "-7d", "7w", "3651d"] {
            let e = parse_duration("OUTBOX_RETENTION", bad).unwrap_err().to_string();
            assert!(
                e.starts_with("configuration: OUTBOX_RETENTION=") && !e.contains('\n'),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn api_tokens_are_plain_or_named_and_each_its_own_client() {
        let c = parse_api_tokens("tok-a, backend:tok-b ,tok-c").unwrap();
        let ids: Vec<&str> = c.iter().map(|c| c.client_id.as_str()).collect();
        assert_eq!(ids[1], "backend");
        assert!(ids[0].starts_with("token-") && ids[2].starts_with("token-") && ids[0] != ids[2]);
        assert_eq!(c[1].token.expose_secret(), "tok-b");
        // The plain form's identity does not depend on the order of the list.
        assert_eq!(parse_api_tokens("tok-c,tok-a").unwrap()[1].client_id, ids[0]);
        for bad in ["a:", ":tok", "bad name:tok", "na/me:tok"] {
            assert!(parse_api_tokens(bad).is_err(), "{bad:?}");
        }
        // Rotation: two tokens of one client share its scope.
        let r = parse_api_tokens("backend:old,backend:new").unwrap();
        assert_eq!(
            (r[0].client_id.as_str(), r[1].client_id.as_str()),
            ("backend", "backend")
        );
    }
}
