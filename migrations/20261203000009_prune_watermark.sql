-- `maintain` prunes balance points incrementally (src/store/retention.rs,
-- prune_balance_points_since): after one pass over every account, a run visits
-- only the accounts whose points crossed the cut since the previous run (this
-- index: the points with as_of in [previous keep_from, keep_from), walked in
-- (as_of, account_id) order) or that were paid since (interest_payouts_date),
-- so its cost follows what changed, not the number of accounts.
CREATE INDEX balance_points_crossing ON balance_points (as_of, account_id);

-- The watermark of the prune: the keep_from of the last completed run and the
-- database's clock when it started. One row; absent = the next run visits every account.
CREATE TABLE retention_marks (
    name      text PRIMARY KEY,
    keep_from timestamptz NOT NULL,
    ran_at    timestamptz NOT NULL
);
