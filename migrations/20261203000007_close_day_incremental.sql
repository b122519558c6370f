-- close-day builds day D from D-1's row plus the day's news
-- (src/finance/close_day/incremental.rs). Per account of a page it looks up
-- the points received during D and the payouts accepted during D: these
-- indexes make each lookup proportional to the day's activity, not to the
-- account's history.
CREATE INDEX balance_points_received ON balance_points (account_id, received_at);
CREATE INDEX interest_payouts_accepted ON interest_payouts (account_id, accepted_at);
