-- Least privilege (issue 15, item 7).
--
-- * `interest_now_app`: a NOLOGIN group role with exactly the DML the service
--   and the finance batch commands need (SELECT, INSERT, UPDATE — UPDATE also
--   for SELECT … FOR UPDATE and ON CONFLICT DO UPDATE; no DELETE, TRUNCATE or
--   DDL). Pods log in as a role granted it:
--     CREATE ROLE interest_now_service LOGIN PASSWORD '…' IN ROLE interest_now_app;
--   Migrations run as the owner of the schema (a separate secret in the chart).
-- * `finance_reader` becomes a NOLOGIN group role: people log in as
--   themselves and are granted it (GRANT finance_reader TO alice).
-- * Nobody but the owner may create objects in the schema.
--
-- Roles are cluster-wide: creating or altering them tolerates another
-- database's migration doing the same at the same moment.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'interest_now_app') THEN
        BEGIN
            CREATE ROLE interest_now_app NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'finance_reader') THEN
        BEGIN
            ALTER ROLE finance_reader NOLOGIN;
        EXCEPTION WHEN internal_error THEN
            -- "tuple concurrently updated": another migration altered it first.
            IF (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'finance_reader') THEN
                RAISE;
            END IF;
        END;
    END IF;
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO interest_now_app', current_schema());
END
$$;

GRANT SELECT, INSERT, UPDATE ON
    rate_plans, accounts, balance_points, claims, idempotency_keys, interest_payouts,
    payout_outbox, consumer_offsets, daily_accruals, day_closes
    TO interest_now_app;
GRANT SELECT ON payout_daily_summary, monthly_withholding TO interest_now_app;
GRANT USAGE ON SEQUENCE payout_outbox_seq_seq TO interest_now_app;
