-- Dead letters (issue 15, item 4): the transactional outbox of the
-- `balance-snapshots.dlq` topic.
--
-- The worker writes a refused snapshot (bad JSON, unknown plan, a correction
-- too old, ...) or a message it cannot apply (`apply_failed`) here, in the
-- same transaction that consumes its offset: a dead letter is never lost and
-- never written twice, and nothing waits for the broker while the batch holds
-- its account locks. The dead-letter relay publishes pending rows after
-- commit, at least once, with the headers `error` and `detail`, and sets
-- `published_at`. Published rows are kept (retention prunes them later).
CREATE TABLE dead_letters (
    seq               bigserial PRIMARY KEY,      -- publication order
    message_key       bytea,                      -- the original key, as consumed
    payload           bytea NOT NULL,             -- the original bytes
    error             text NOT NULL,              -- the stable reason code (header `error`)
    detail            text NOT NULL,              -- header `detail`
    source_partition  integer,                    -- where it was consumed, when known
    source_offset     bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    published_at      timestamptz
);
CREATE INDEX dead_letters_pending ON dead_letters (seq) WHERE published_at IS NULL;

GRANT SELECT, INSERT, UPDATE ON dead_letters TO interest_now_app;
GRANT USAGE ON SEQUENCE dead_letters_seq_seq TO interest_now_app;
