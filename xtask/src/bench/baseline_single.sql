-- One claim, one transaction: the design a team builds first.
\set n random(0, :naccounts - 1)
BEGIN;
SELECT paid_through, carry_units FROM baseline.accounts WHERE account_id = 'acct-' || lpad(:n::text, 6, '0') FOR UPDATE;
INSERT INTO baseline.idempotency_keys (idempotency_key, account_id, claim_id, status, body)
  VALUES ('b-' || gen_random_uuid(), 'acct-' || lpad(:n::text, 6, '0'), gen_random_uuid(), 201, '{}');
WITH p AS (
  INSERT INTO baseline.interest_payouts (payout_id, claim_id, account_id, kind, business_date, period_start, period_end,
      plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency, idempotency_key, accepted_at,
      accrued_units, carried_in_units, carried_out_units, dropped_units, tax_profile)
  VALUES (gen_random_uuid(), gen_random_uuid(), 'acct-' || lpad(:n::text, 6, '0'), 'claim', current_date, clock_timestamp(),
      clock_timestamp(), 'basic', '[]', 100, 10, 0, 0, 0, 90, 'KRW', 'b', now(),
      1385061120000000000000, 0, 0, 0, 'standard')
  RETURNING payout_id)
INSERT INTO baseline.payout_outbox (payout_id, partition, message_key, payload) SELECT payout_id, 0, 'k', '{}' FROM p;
UPDATE baseline.accounts SET paid_through = date_trunc('second', now()),
    checkpoint_at = greatest(checkpoint_at, date_trunc('second', now())), claims_on_day = claims_on_day + 1 WHERE account_id = 'acct-' || lpad(:n::text, 6, '0');
END;
