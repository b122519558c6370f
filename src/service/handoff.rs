//! What the worker shares with the outbox relay and the readiness probe: the
//! relay's work items and the worker's status. Its own module so that neither
//! the worker nor the relay imports the other.

use uuid::Uuid;

/// One outbox row to publish.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub payout_id: Uuid,
    pub key: String,
    pub payload: String,
}

pub enum RelayWork {
    /// Publish the leftovers of these partitions (newly owned) first.
    Sweep(Vec<i32>),
    /// A committed batch's payouts, in commit order.
    Publish(Vec<OutboxItem>),
}

/// Shared with the relay and readiness probe.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// Partitions of `interest-claims` this worker owns: the relay publishes their payouts.
    pub claim_partitions: Vec<i32>,
    /// Per stream: in the group yet.
    pub joined: [bool; 2],
    /// Per stream: messages behind.
    pub lag: [i64; 2],
}

impl WorkerStatus {
    pub fn joined(&self) -> bool {
        self.joined.iter().all(|j| *j)
    }

    pub fn lag(&self) -> i64 {
        self.lag.iter().sum()
    }
}
