//! Partitions: consumed offsets and the fencing epoch, committed with the effects.

use anyhow::Context;
use sqlx::{PgPool, Row};

use super::Tx;

/// Takes ownership of a partition: bumps its epoch (fencing out any previous
/// owner's uncommitted work) and returns (next offset, epoch).
pub async fn own_partition(pool: &PgPool, topic: &str, partition: i32, owner: &str) -> anyhow::Result<(i64, i64)> {
    let row = sqlx::query(
        "INSERT INTO consumer_offsets (topic, partition, next_offset, owner_epoch, owner) VALUES ($1, $2, 0, 1, $3)
         ON CONFLICT (topic, partition) DO UPDATE
            SET owner_epoch = consumer_offsets.owner_epoch + 1, owner = EXCLUDED.owner, updated_at = now()
         RETURNING next_offset, owner_epoch",
    )
    .bind(topic)
    .bind(partition)
    .bind(owner)
    .fetch_one(pool)
    .await
    .context("owning partition")?;
    Ok((row.get(0), row.get(1)))
}

/// Next offset to store for one partition, with the epoch this worker owns it at.
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
    pub epoch: i64,
}

/// Stores the next offsets where this worker still owns the partition at its
/// epoch; returns the partitions it was fenced from (then: roll back).
pub async fn commit_offsets(tx: &mut Tx<'_>, commits: &[OffsetCommit]) -> anyhow::Result<Vec<(String, i32)>> {
    let rows = sqlx::query(
        "UPDATE consumer_offsets c SET next_offset = t.n, updated_at = now()
         FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int8[]) AS t(topic, p, n, e)
         WHERE c.topic = t.topic AND c.partition = t.p AND c.owner_epoch = t.e AND c.next_offset <= t.n
         RETURNING c.topic, c.partition",
    )
    .bind(commits.iter().map(|c| c.topic.as_str()).collect::<Vec<_>>())
    .bind(commits.iter().map(|c| c.partition).collect::<Vec<_>>())
    .bind(commits.iter().map(|c| c.next).collect::<Vec<_>>())
    .bind(commits.iter().map(|c| c.epoch).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let stored: std::collections::HashSet<(String, i32)> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(commits
        .iter()
        .map(|c| (c.topic.clone(), c.partition))
        .filter(|tp| !stored.contains(tp))
        .collect())
}
