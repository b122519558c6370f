-- The per-account accrual checkpoint (src/money/account/checkpoint.rs): the
-- engine accrues from checkpoint_at on, so an account's work per message no
-- longer grows with its history.
--   checkpoint_at     C >= paid_through, a whole second
--   checkpoint_units  exact units accrued in [paid_through, C), unpaid
--   checkpoint_plans  the plans in force in [paid_through, C) (for a payout's
--                     `rates`), in the order of their first point:
--                     [{"plan", "seq", "at" (epoch seconds)}]
-- The point in force at C is the stored balance point with the highest seq
-- and as_of < C; retention must keep it.
ALTER TABLE accounts
    ADD COLUMN checkpoint_at timestamptz,
    ADD COLUMN checkpoint_units numeric(40, 0) NOT NULL DEFAULT 0,
    ADD COLUMN checkpoint_plans jsonb NOT NULL DEFAULT '[]';

-- The plan list of a checkpoint standing at paid_through (an empty
-- [paid_through, C)): the point in force at that second when it started
-- earlier, which a payout from paid_through lists. For existing rows here, and
-- for fixtures that set paid_through directly (xtask bench).
CREATE FUNCTION interest_checkpoint_plans_at(account text, t timestamptz) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT jsonb_build_array(jsonb_build_object(
                   'plan', p.plan_id, 'seq', p.seq,
                   'at', extract(epoch FROM date_trunc('second', p.as_of))::bigint))
        FROM (SELECT b.plan_id, b.seq, b.as_of FROM balance_points b
              WHERE b.account_id = account AND b.as_of < t + interval '1 second'
              ORDER BY b.seq DESC LIMIT 1) p
        WHERE p.as_of < t), '[]'::jsonb)
$$;

-- Existing accounts start with C = paid_through: nothing accrued before it.
UPDATE accounts SET
    checkpoint_at = paid_through,
    checkpoint_plans = interest_checkpoint_plans_at(account_id, paid_through);

ALTER TABLE accounts
    ALTER COLUMN checkpoint_at SET NOT NULL,
    ADD CONSTRAINT accounts_checkpoint_after_paid CHECK (checkpoint_at >= paid_through),
    ADD CONSTRAINT accounts_checkpoint_whole_second CHECK (checkpoint_at = date_trunc('second', checkpoint_at)),
    ADD CONSTRAINT accounts_checkpoint_plans_array CHECK (jsonb_typeof(checkpoint_plans) = 'array');
