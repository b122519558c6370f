-- Retention by time partitioning (issue 10, items 3 and 4).
--
-- The append-only tables become declaratively partitioned by time, so that
-- retention drops a whole partition (a brief lock, no DELETE, no vacuum)
-- instead of deleting rows. `interest-now maintain` creates the partitions
-- ahead and drops the expired ones (ARCHITECTURE.md, "Retention").
--
--   table             key                     partitions  retention
--   claims            accepted_at             KST day     max(IDEMPOTENCY_KEY_TTL, 2 days); never one with an 'accepted' row
--   payout_outbox     created_at              KST day     OUTBOX_RETENTION; never one with an unpublished row
--   dead_letters      created_at              KST day     OUTBOX_RETENTION; never one with an unpublished row
--   interest_payouts  period_start            KST month   kept (finance record; an operator may detach old months)
--   daily_accruals    business_date           month       kept (finance record; an operator may detach old months)
--
-- Every partitioned table keeps a DEFAULT partition: the safety net that
-- takes a row for which no partition exists yet (maintain did not run), so
-- the service never fails an insert for a missing partition. maintain moves
-- nothing out of it and never creates a partition whose range already has
-- rows in it.
--
-- A unique key of a partitioned table must include the partition key, so:
--   claims            PRIMARY KEY (claim_id, accepted_at)
--   payout_outbox     PRIMARY KEY (payout_id, created_at); no FK to interest_payouts
--   dead_letters      PRIMARY KEY (seq, created_at)
--   interest_payouts  PRIMARY KEY (payout_id, period_start), UNIQUE (claim_id, period_start),
--                     once per interval (account_id, period_start) WHERE period_end > period_start (unchanged),
--                     one auto (account_id, business_date, period_start) WHERE kind = 'auto'
-- ARCHITECTURE.md says what each guard now guarantees and what covers the rest.
--
-- `idempotency_keys` stays a regular table: its global unique key
-- (client_id, idempotency_key) is the cross-process guard of a key, which a
-- partitioned table could not enforce. maintain deletes its expired rows in
-- small batches (the index idempotency_keys_expiry below).
--
-- Existing rows are copied into partitions covering their days (months); the
-- copy holds ACCESS EXCLUSIVE on these tables while it runs (deploy it like any
-- schema change, outside the midnight peak).

-- ---- helpers of this migration (session-local, dropped at the end) ---------

-- 00:00 KST of a date.
CREATE FUNCTION pg_temp.kst(d date) RETURNS timestamptz LANGUAGE sql IMMUTABLE
    AS $$ SELECT d::timestamp AT TIME ZONE 'Asia/Seoul' $$;

-- The KST date of an instant.
CREATE FUNCTION pg_temp.kst_date(t timestamptz) RETURNS date LANGUAGE sql IMMUTABLE
    AS $$ SELECT (t AT TIME ZONE 'Asia/Seoul')::date $$;

-- Creates parent's partition for the day (step 'day') or month ('month')
-- holding d, named parent_pYYYYMMDD / parent_pYYYYMM (the names maintain reads
-- the range from). Bounds are KST midnights for a timestamptz key, dates for
-- a date key.
CREATE FUNCTION pg_temp.add_partition(parent text, step text, d date, date_key boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lo   date := CASE step WHEN 'day' THEN d ELSE date_trunc('month', d)::date END;
    hi   date := CASE step WHEN 'day' THEN lo + 1 ELSE (lo + interval '1 month')::date END;
    name text := parent || '_p' || to_char(lo, CASE step WHEN 'day' THEN 'YYYYMMDD' ELSE 'YYYYMM' END);
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    IF date_key THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', name, parent, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       name, parent, pg_temp.kst(lo), pg_temp.kst(hi));
    END IF;
END
$$;

-- Partitions for the given dates, for today (KST) and the days (months) ahead, then DEFAULT.
CREATE FUNCTION pg_temp.add_partitions(parent text, step text, dates date[], date_key boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d     date;
    today date := pg_temp.kst_date(now());
BEGIN
    FOREACH d IN ARRAY dates LOOP
        PERFORM pg_temp.add_partition(parent, step, d, date_key);
    END LOOP;
    IF step = 'day' THEN
        FOR i IN 0..7 LOOP
            PERFORM pg_temp.add_partition(parent, step, today + i, date_key);
        END LOOP;
    ELSE
        FOR i IN 0..3 LOOP
            PERFORM pg_temp.add_partition(parent, step, (today + make_interval(months => i))::date, date_key);
        END LOOP;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', parent || '_default', parent);
END
$$;

-- ---- take the old tables aside ----------------------------------------------

-- The finance views read interest_payouts; they are recreated on the new table.
DROP VIEW payout_daily_summary;
DROP VIEW monthly_withholding;

ALTER TABLE claims RENAME TO claims_unpartitioned;
ALTER TABLE payout_outbox RENAME TO payout_outbox_unpartitioned;
ALTER TABLE dead_letters RENAME TO dead_letters_unpartitioned;
ALTER TABLE interest_payouts RENAME TO interest_payouts_unpartitioned;
ALTER TABLE daily_accruals RENAME TO daily_accruals_unpartitioned;
-- The sequences (publication order) carry on in the new tables, grants included.
ALTER SEQUENCE payout_outbox_seq_seq OWNED BY NONE;
ALTER SEQUENCE dead_letters_seq_seq OWNED BY NONE;

-- ---- the partitioned tables: same columns, defaults and CHECKs --------------

CREATE TABLE claims (LIKE claims_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (accepted_at);
SELECT pg_temp.add_partitions('claims', 'day',
    ARRAY(SELECT DISTINCT pg_temp.kst_date(accepted_at) FROM claims_unpartitioned), false);
INSERT INTO claims SELECT * FROM claims_unpartitioned;

CREATE TABLE payout_outbox (LIKE payout_outbox_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
SELECT pg_temp.add_partitions('payout_outbox', 'day',
    ARRAY(SELECT DISTINCT pg_temp.kst_date(created_at) FROM payout_outbox_unpartitioned), false);
INSERT INTO payout_outbox SELECT * FROM payout_outbox_unpartitioned;

CREATE TABLE dead_letters (LIKE dead_letters_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
SELECT pg_temp.add_partitions('dead_letters', 'day',
    ARRAY(SELECT DISTINCT pg_temp.kst_date(created_at) FROM dead_letters_unpartitioned), false);
INSERT INTO dead_letters SELECT * FROM dead_letters_unpartitioned;

CREATE TABLE interest_payouts (LIKE interest_payouts_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (period_start);
SELECT pg_temp.add_partitions('interest_payouts', 'month',
    ARRAY(SELECT DISTINCT pg_temp.kst_date(period_start) FROM interest_payouts_unpartitioned), false);
INSERT INTO interest_payouts SELECT * FROM interest_payouts_unpartitioned;

CREATE TABLE daily_accruals (LIKE daily_accruals_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (business_date);
SELECT pg_temp.add_partitions('daily_accruals', 'month',
    ARRAY(SELECT DISTINCT business_date FROM daily_accruals_unpartitioned), true);
INSERT INTO daily_accruals SELECT * FROM daily_accruals_unpartitioned;

DROP TABLE payout_outbox_unpartitioned;   -- first: it held the FK to interest_payouts
DROP TABLE claims_unpartitioned, dead_letters_unpartitioned, interest_payouts_unpartitioned,
    daily_accruals_unpartitioned;
ALTER SEQUENCE payout_outbox_seq_seq OWNED BY payout_outbox.seq;
ALTER SEQUENCE dead_letters_seq_seq OWNED BY dead_letters.seq;

-- ---- keys and indexes (created on the parent: every partition gets them) ----

-- claims: the API (queue_claim) and the worker (store_claim_results,
-- answer_failed_claim) upsert ON CONFLICT (claim_id, accepted_at): both know
-- the claim's accepted_at (the one clock reading, carried in the message).
ALTER TABLE claims ADD PRIMARY KEY (claim_id, accepted_at);
-- close-day polls `count(*) … WHERE state = 'accepted' AND accepted_at < $1`
-- every 250 ms, and maintain asks whether a partition still has one: only the
-- few claims answered 202 and not yet applied are in it.
CREATE INDEX claims_accepted ON claims (accepted_at) WHERE state = 'accepted';

-- payout_outbox: `seq` stays the publication order (the sequence's values are
-- unique: nothing else writes the column), no longer a unique key. The FK to
-- interest_payouts is dropped: it would need the payout's partition key, and
-- the outbox row is written by the same statement pair as its payout
-- (store::insert_payouts) in the same transaction; reconcile (c) checks it.
ALTER TABLE payout_outbox ADD PRIMARY KEY (payout_id, created_at);
-- The relay's sweeps (`published_at IS NULL AND partition = ANY … ORDER BY seq`),
-- outbox_pending's count, and maintain's "anything unpublished here?".
CREATE INDEX payout_outbox_pending ON payout_outbox (partition, seq) WHERE published_at IS NULL;

ALTER TABLE dead_letters ADD PRIMARY KEY (seq, created_at);
CREATE INDEX dead_letters_pending ON dead_letters (seq) WHERE published_at IS NULL;

-- interest_payouts: the guards against double payment, each with the partition key.
ALTER TABLE interest_payouts ADD PRIMARY KEY (payout_id, period_start);
ALTER TABLE interest_payouts ADD CONSTRAINT interest_payouts_claim_once UNIQUE (claim_id, period_start);
CREATE UNIQUE INDEX interest_payouts_once_per_interval ON interest_payouts (account_id, period_start)
    WHERE period_end > period_start;
CREATE UNIQUE INDEX interest_payouts_one_auto ON interest_payouts (account_id, business_date, period_start)
    WHERE kind = 'auto';
CREATE INDEX interest_payouts_date ON interest_payouts (business_date, kind);
CREATE INDEX interest_payouts_account ON interest_payouts (account_id, period_start);

ALTER TABLE daily_accruals ADD PRIMARY KEY (account_id, business_date);
CREATE INDEX daily_accruals_date ON daily_accruals (business_date);

-- idempotency_keys: maintain deletes `state IN ('answered', 'released') AND
-- created_at < now() − IDEMPOTENCY_KEY_TTL` in batches, oldest first.
DROP INDEX idempotency_keys_created;
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (created_at) WHERE state IN ('answered', 'released');

-- ---- the finance views, as in 20261122000002_finance.sql --------------------

CREATE VIEW payout_daily_summary AS
SELECT business_date, kind, currency,
       count(*)        AS count,
       sum(gross)      AS gross,
       sum(income_tax) AS income_tax,
       sum(local_tax)  AS local_tax,
       sum(rural_tax)  AS rural_tax,
       sum(net)        AS net
FROM interest_payouts
GROUP BY business_date, kind, currency;

CREATE VIEW monthly_withholding AS
SELECT to_char(business_date, 'YYYY-MM')           AS month,
       currency,
       sum(income_tax)                              AS income_tax,
       sum(local_tax)                               AS local_tax,
       sum(rural_tax)                               AS rural_tax,
       sum(income_tax + local_tax + rural_tax)      AS total
FROM interest_payouts
GROUP BY 1, currency;

-- ---- grants, as in 20261122000002 and 20261201000001 ------------------------
-- (on the parents: every read and write goes through them; partitions are
-- never named by the service).

REVOKE ALL ON claims, payout_outbox, dead_letters FROM PUBLIC;
REVOKE ALL ON interest_payouts, daily_accruals, payout_daily_summary, monthly_withholding FROM PUBLIC;
GRANT SELECT ON interest_payouts, daily_accruals, payout_daily_summary, monthly_withholding TO finance_reader;
GRANT SELECT, INSERT, UPDATE ON claims, payout_outbox, dead_letters, interest_payouts, daily_accruals
    TO interest_now_app;
GRANT SELECT ON payout_daily_summary, monthly_withholding TO interest_now_app;

DROP FUNCTION pg_temp.add_partitions(text, text, date[], boolean);
DROP FUNCTION pg_temp.add_partition(text, text, date, boolean);
DROP FUNCTION pg_temp.kst_date(timestamptz);
DROP FUNCTION pg_temp.kst(date);
