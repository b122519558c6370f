-- The baseline's own copies of the tables (same columns, CHECKs and indexes),
-- filled with the benchmark's accounts, so it does the same work without
-- touching the service's rows.
DROP SCHEMA IF EXISTS baseline CASCADE;
CREATE SCHEMA baseline;
CREATE TABLE baseline.accounts (LIKE public.accounts INCLUDING ALL);
CREATE TABLE baseline.idempotency_keys (LIKE public.idempotency_keys INCLUDING ALL);
CREATE TABLE baseline.interest_payouts (LIKE public.interest_payouts INCLUDING ALL);
CREATE TABLE baseline.payout_outbox (LIKE public.payout_outbox INCLUDING ALL);
INSERT INTO baseline.accounts SELECT * FROM public.accounts;
ANALYZE baseline.accounts;
