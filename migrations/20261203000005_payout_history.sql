-- An account's payout history, newest first (GET /v1/accounts/{id}/interest/payouts):
-- a page is one index range scan, whatever the account's age.
CREATE INDEX interest_payouts_history
    ON interest_payouts (account_id, business_date DESC, period_start DESC, payout_id DESC);
