//! Poison isolation: no message may stall its partition.
//!
//! A batch whose transaction fails with a deterministic error (one a retry
//! would repeat: a constraint, a data error, a raised exception; see
//! [`classify`]) is split in halves, recursively, and the parts applied in
//! order, each in its own transaction. A single message that still fails is
//! moved aside in a transaction of its own, together with its offset:
//!
//! * a snapshot goes to the dead-letter outbox with code `apply_failed` and
//!   the error as detail (published to `balance-snapshots.dlq` by the
//!   dead-letter relay);
//! * a claim is answered 500 `claim_failed` (its `claims` row, its waiter
//!   woken) and never paid; no idempotency record, so a retry with the same
//!   key is a new attempt;
//! * a settlement is logged and skipped (`settle --date D` again retries it).
//!
//! Each is counted in `poison_messages_total{topic}` and logged as
//! `event="poison_message"` with the reason. A transient failure (the
//! database away, a deadlock, a pool timeout) is not isolated: the worker
//! loop retries the batch, skipping what already committed.

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Message, OwnedMessage};

use super::batch::{claim_message, tp, Owners};
use super::{BatchError, Worker, WorkerContext};
use crate::claims::{self, Claim, ClaimAnswer};
use crate::kafka::{self, ClaimMessage};
use crate::money::types::business_date;
use crate::service::api;
use crate::store::{self, FailedClaim, NewDeadLetter, OffsetCommit, Tx};

/// The dead-letter code of a snapshot that cannot be applied.
pub const APPLY_FAILED: &str = "apply_failed";

/// Whether retrying a failed transaction can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry the batch: the database away, a deadlock, a timeout, anything unknown.
    Transient,
    /// The same input fails the same way: isolate the message.
    Deterministic,
}

/// Classifies by the SQLSTATE of the first database error in the chain.
/// Only the classes that belong to the data are deterministic; everything
/// else is retried, including errors that are not the database's (I/O,
/// pool timeouts) and the classes of the environment: 08 connection, 40
/// serialization and deadlock, 53 resources, 57 operator intervention, 58
/// system, 55 lock not available, 25 read-only (a failover), XX internal,
/// and 42 (a missing grant or table is the deployment's fault: isolating
/// would move every message aside).
pub fn classify(e: &anyhow::Error) -> ErrorClass {
    let code = e.chain().find_map(|cause| match cause.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => Some(db.code().map(|c| c.into_owned())),
        _ => None,
    });
    match code {
        Some(Some(code)) if deterministic_sqlstate(&code) => ErrorClass::Deterministic,
        _ => ErrorClass::Transient,
    }
}

/// 21 cardinality, 22 data exception, 23 integrity constraint, 27 triggered
/// data change, 44 check option, 54 program limit, P0 PL/pgSQL (P0001
/// raise_exception).
fn deterministic_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("21" | "22" | "23" | "27" | "44" | "54" | "P0"))
}

/// What moving a message aside wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aside {
    DeadLetter,
    ClaimAnswered,
    Skipped,
}

impl Aside {
    fn as_str(self) -> &'static str {
        match self {
            Aside::DeadLetter => "dead_letter",
            Aside::ClaimAnswered => "claim_answered",
            Aside::Skipped => "skipped",
        }
    }
}

impl Worker {
    /// Applies `fresh` in one transaction; on a deterministic failure, its
    /// halves apart (first half first), down to single messages set aside.
    pub(super) async fn apply_isolating(
        &self,
        consumer: &StreamConsumer<WorkerContext>,
        owned: &mut Owners,
        fresh: &[&OwnedMessage],
    ) -> Result<(), BatchError> {
        let mut parts = vec![fresh];
        while let Some(part) = parts.pop() {
            let error = match self.apply_part(consumer, owned, part).await {
                Ok(()) => continue,
                Err(BatchError::Other(e)) if classify(&e) == ErrorClass::Deterministic => e,
                Err(e) => return Err(e),
            };
            match part {
                [] => return Err(BatchError::Other(error)),
                [one] => self.set_aside(owned, one, &error).await?,
                _ => {
                    tracing::warn!(
                        event = "batch_split",
                        size = part.len(),
                        error = format!("{error:#}"),
                        "a deterministic failure: applying the halves apart"
                    );
                    let (first, rest) = part.split_at(part.len() / 2);
                    parts.push(rest);
                    parts.push(first);
                }
            }
        }
        Ok(())
    }

    /// Moves one message aside with its reason and consumes its offset, in
    /// one transaction (fenced like a batch).
    async fn set_aside(&self, owned: &mut Owners, m: &OwnedMessage, error: &anyhow::Error) -> Result<(), BatchError> {
        let reason = format!("{error:#}");
        let at = tp(m);
        let commit = OffsetCommit {
            topic: at.0.clone(),
            partition: at.1,
            next: m.offset() + 1,
            epoch: owned[&at].epoch,
        };
        let mut tx = store::begin_batch(&self.pool, self.idle_in_batch_limit()).await?;
        let aside = self.move_aside(&mut tx, m, &reason).await?;
        let fenced = store::commit_offsets(&mut tx, &[commit]).await?;
        if !fenced.is_empty() {
            tx.rollback().await.map_err(anyhow::Error::from)?;
            return Err(BatchError::Fenced(fenced));
        }
        tx.commit().await.map_err(anyhow::Error::from)?;
        if let Some(o) = owned.get_mut(&at) {
            o.next = m.offset() + 1;
        }
        self.metrics
            .dead_letters
            .poison_messages_total
            .with_label_values(&[m.topic()])
            .inc();
        tracing::error!(
            event = "poison_message",
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            outcome = aside.as_str(),
            reason,
            "a message that cannot be applied was moved aside"
        );
        if aside == Aside::DeadLetter {
            self.dead_letters.notify_one();
        }
        Ok(())
    }

    /// Writes what stands in for the message's effects.
    async fn move_aside(&self, tx: &mut Tx<'_>, m: &OwnedMessage, reason: &str) -> anyhow::Result<Aside> {
        if m.topic() == self.settings.topic(kafka::SNAPSHOTS) {
            let letter = NewDeadLetter {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                error: APPLY_FAILED.to_owned(),
                detail: reason.to_owned(),
                source: Some((m.partition(), m.offset())),
            };
            store::insert_dead_letters(tx, &[letter]).await?;
            return Ok(Aside::DeadLetter);
        }
        let message = serde_json::from_slice::<ClaimMessage>(m.payload().unwrap_or_default())
            .ok()
            .and_then(claim_message);
        match message {
            Some(claims::Message::Claim(c)) => {
                store::answer_failed_claim(tx, &failed_claim(&c)).await?;
                Ok(Aside::ClaimAnswered)
            }
            // A settlement: skipped (a new `settle` run for the date retries it).
            _ => Ok(Aside::Skipped),
        }
    }
}

/// The answer of a claim that cannot be applied. The client sees no
/// internals (the reason is in the log); nothing was paid.
fn failed_claim(c: &Claim) -> FailedClaim {
    let answer = ClaimAnswer::Failed;
    FailedClaim {
        claim_id: c.claim_id,
        client_id: c.client.clone(),
        idempotency_key: c.key.as_str().to_owned(),
        account_id: c.account_id.to_string(),
        accepted_at: c.accepted_at,
        business_date: business_date(c.accepted_at),
        status: api::claim_status(&answer) as i16,
        body: api::claim_body(&answer, c.account_id.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, deterministic_sqlstate, ErrorClass};

    #[test]
    fn data_errors_are_deterministic_and_the_environment_is_transient() {
        for code in ["23505", "23514", "22003", "22P02", "P0001", "21000", "54000"] {
            assert!(deterministic_sqlstate(code), "{code}");
        }
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "57014", "55P03", "25006", "XX000", "42501",
        ] {
            assert!(!deterministic_sqlstate(code), "{code}");
        }
        assert!(!deterministic_sqlstate(""));
    }

    /// A database error with a given SQLSTATE, as sqlx reports one.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error with SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "test"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn db(code: &'static str) -> anyhow::Error {
        anyhow::Error::from(sqlx::Error::Database(Box::new(Sqlstate(code))))
            .context("inserting balance points")
            .context("applying the batch")
    }

    #[test]
    fn the_sqlstate_is_found_under_the_context() {
        assert_eq!(classify(&db("P0001")), ErrorClass::Deterministic);
        assert_eq!(classify(&db("23505")), ErrorClass::Deterministic);
        assert_eq!(classify(&db("40001")), ErrorClass::Transient);
        assert_eq!(classify(&db("08006")), ErrorClass::Transient);
        assert_eq!(classify(&db("42501")), ErrorClass::Transient);
    }

    #[test]
    fn errors_that_are_not_the_databases_are_transient() {
        let pool = anyhow::Error::from(sqlx::Error::PoolTimedOut).context("loading accounts");
        assert_eq!(classify(&pool), ErrorClass::Transient);
        let io = anyhow::Error::from(sqlx::Error::Io(std::io::Error::other("reset")));
        assert_eq!(classify(&io), ErrorClass::Transient);
        assert_eq!(
            classify(&anyhow::anyhow!("stored answer unreadable")),
            ErrorClass::Transient
        );
    }
}
