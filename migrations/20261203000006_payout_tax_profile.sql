-- The withholding profile each payout's taxes were computed under: what a
-- customer's interest statement groups by. Payouts written before this
-- column existed take their account's profile (profiles are set at the
-- account's first snapshot and, in this version, never changed).
ALTER TABLE interest_payouts ADD COLUMN tax_profile text
    CHECK (tax_profile IN ('standard', 'preferential', 'exempt'));
UPDATE interest_payouts p SET tax_profile = a.tax_profile FROM accounts a WHERE a.account_id = p.account_id;
ALTER TABLE interest_payouts ALTER COLUMN tax_profile SET NOT NULL;
