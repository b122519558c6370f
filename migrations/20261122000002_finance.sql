-- interest-now finance schema: the daily accrual journal, close-day runs, the
-- views finance reads, and the read-only `finance_reader` role (docs/FINANCE.md).
--
-- Units: `*_units` columns are exact integer numerators over 13850611200000000000
-- of the account currency's MINOR unit (KRW has no minor unit: one unit of the
-- denominator is 1/13850611200000000000 won), as in interest_payouts.

-- Per account and business date D, written once by `interest-now close-day --date D`.
-- The cut is T = 00:00 KST of D+1 (T0 = 00:00 KST of D): balance points count when
-- received before the cut, payouts when accepted before it.
CREATE TABLE daily_accruals (
    account_id             text NOT NULL,
    business_date          date NOT NULL,
    currency               text NOT NULL,
    -- Interest earned during D (seconds, or the daily close, in [T0, T)) on the balances known at T.
    accrued_units          numeric(40, 0) NOT NULL CHECK (accrued_units >= 0),
    -- Change to earlier days' accrual learned during D (late or corrected snapshots received in [T0, T)).
    corrections_units      numeric(40, 0) NOT NULL,
    -- Σ (gross in units + dropped_units) of the payouts accepted in [T0, T).
    paid_units             numeric(40, 0) NOT NULL CHECK (paid_units >= 0),
    -- Accrued-unpaid liability at T0 and at T (may be negative after a downward correction).
    liability_start_units  numeric(40, 0) NOT NULL,
    liability_end_units    numeric(40, 0) NOT NULL,
    -- For people: major units truncated toward zero to 10 places beyond the minor unit.
    accrued                numeric NOT NULL,
    liability_end          numeric NOT NULL,
    computed_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, business_date),
    CHECK (liability_end_units = liability_start_units + accrued_units + corrections_units - paid_units)
);
CREATE INDEX daily_accruals_date ON daily_accruals (business_date);

-- One row per business date close-day has started; completed_at is set when every
-- account of the date has its daily_accruals row (a partial run leaves it NULL).
CREATE TABLE day_closes (
    business_date  date PRIMARY KEY,
    cut_at         timestamptz NOT NULL,            -- T = 00:00 KST of the next day
    started_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    accounts       bigint CHECK (accounts >= 0),    -- daily_accruals rows of the date at completion
    CHECK ((completed_at IS NULL) = (accounts IS NULL))
);

-- Per business date, kind and currency: what was paid (sums never mix currencies).
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

-- Withholding per month of business date and currency: what is remitted by the
-- 10th of the following month.
CREATE VIEW monthly_withholding AS
SELECT to_char(business_date, 'YYYY-MM')           AS month,
       currency,
       sum(income_tax)                              AS income_tax,
       sum(local_tax)                               AS local_tax,
       sum(rural_tax)                               AS rural_tax,
       sum(income_tax + local_tax + rural_tax)      AS total
FROM interest_payouts
GROUP BY 1, currency;

-- The finance role: SELECT on the payout tables and views only. Roles are
-- cluster-wide, so creating it must tolerate it existing already, and two
-- databases migrating at once (the loser of the race sees unique_violation).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'finance_reader') THEN
        BEGIN
            CREATE ROLE finance_reader LOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO finance_reader', current_schema());
END
$$;

REVOKE ALL ON accounts, balance_points, claims, idempotency_keys, payout_outbox, consumer_offsets, rate_plans
    FROM PUBLIC, finance_reader;
REVOKE ALL ON interest_payouts, daily_accruals, day_closes, payout_daily_summary, monthly_withholding
    FROM PUBLIC, finance_reader;
GRANT SELECT ON interest_payouts, daily_accruals, day_closes, payout_daily_summary, monthly_withholding
    TO finance_reader;
