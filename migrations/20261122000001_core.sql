-- interest-now core schema. Money is NUMERIC, never floating point.
-- Exact accrual amounts are stored as integer numerators ("units") over the
-- fixed denominator 13850611200000000000 (see src/money/accrual.rs).

CREATE TABLE rate_plans (
    plan_id     text PRIMARY KEY,
    definition  jsonb NOT NULL,          -- the plan as `plans import` reads it
    imported_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    account_id                text PRIMARY KEY,
    currency                  text NOT NULL,
    tax_profile               text NOT NULL CHECK (tax_profile IN ('standard', 'preferential', 'exempt')),
    last_seq                  bigint NOT NULL CHECK (last_seq > 0),
    paid_through              timestamptz NOT NULL,
    paid_any                  boolean NOT NULL DEFAULT false,
    carry_units               numeric(40, 0) NOT NULL DEFAULT 0 CHECK (carry_units >= 0),
    pending_adjustment_units  numeric(40, 0) NOT NULL DEFAULT 0,
    claim_day                 date,
    claims_on_day             integer NOT NULL DEFAULT 0 CHECK (claims_on_day >= 0),
    last_claim_at             timestamptz,
    settled_through           date,
    updated_at                timestamptz NOT NULL DEFAULT now()
);

-- Each account's balance timeline (the correction window and what is unpaid).
CREATE TABLE balance_points (
    account_id  text NOT NULL,
    seq         bigint NOT NULL CHECK (seq > 0),
    as_of       timestamptz NOT NULL,
    balance     numeric NOT NULL CHECK (balance >= 0),   -- major units of the account currency
    plan_id     text NOT NULL,
    received_at timestamptz NOT NULL,   -- service clock when the worker applied it (close-day's knowledge cut)
    PRIMARY KEY (account_id, seq)
);
CREATE INDEX balance_points_as_of ON balance_points (account_id, as_of);

-- Every claim message the workers processed (and claims the API answered 202).
CREATE TABLE claims (
    claim_id         uuid PRIMARY KEY,
    idempotency_key  text NOT NULL,
    account_id       text NOT NULL,
    accepted_at      timestamptz NOT NULL,
    business_date    date NOT NULL,
    state            text NOT NULL CHECK (state IN ('accepted', 'done')),
    status           smallint,
    body             jsonb,
    payout_id        uuid,
    replay_of        uuid,
    completed_at     timestamptz,
    CHECK ((state = 'done') = (status IS NOT NULL AND body IS NOT NULL))
);

-- The first answer per idempotency key; later requests replay it.
CREATE TABLE idempotency_keys (
    idempotency_key  text PRIMARY KEY,
    account_id       text NOT NULL,              -- the request fingerprint
    claim_id         uuid NOT NULL,
    status           smallint NOT NULL,
    body             jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- One row per payout. Rows are never updated: corrections are adjustments on later payouts.
CREATE TABLE interest_payouts (
    payout_id        uuid PRIMARY KEY,
    claim_id         uuid UNIQUE,                -- a claim pays at most once
    account_id       text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('claim', 'auto')),
    business_date    date NOT NULL,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    plan_id          text NOT NULL,
    rates            jsonb NOT NULL,             -- per-tier rates applied during the period
    gross            numeric NOT NULL CHECK (gross > 0),
    income_tax       numeric NOT NULL CHECK (income_tax >= 0),
    local_tax        numeric NOT NULL CHECK (local_tax >= 0),
    rural_tax        numeric NOT NULL CHECK (rural_tax >= 0),
    adjustment       numeric NOT NULL,
    net              numeric NOT NULL CHECK (net >= 0),
    currency         text NOT NULL,
    -- The exact decomposition, in accrual units (1/13850611200000000000 of a minor unit):
    -- gross * minor_per_major * D + carried_out + dropped = accrued + carried_in.
    accrued_units      numeric(40, 0) NOT NULL,     -- interest of [period_start, period_end)
    carried_in_units   numeric(40, 0) NOT NULL,     -- carry and corrections brought into this payout
    carried_out_units  numeric(40, 0) NOT NULL CHECK (carried_out_units >= 0),  -- remainder kept (carry rule)
    dropped_units      numeric(40, 0) NOT NULL CHECK (dropped_units >= 0),      -- remainder dropped (drop rule)
    idempotency_key  text,
    accepted_at      timestamptz NOT NULL,
    paid_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (period_end >= period_start),
    CHECK (net = gross - income_tax - local_tax - rural_tax),
    CHECK (currency <> 'KRW' OR (income_tax % 10 = 0 AND local_tax % 10 = 0 AND rural_tax % 10 = 0)),
    CHECK ((kind = 'claim') = (claim_id IS NOT NULL AND idempotency_key IS NOT NULL)),
    CHECK (currency <> 'KRW'
           OR gross * 13850611200000000000 + carried_out_units + dropped_units = accrued_units + carried_in_units)
);
CREATE INDEX interest_payouts_date ON interest_payouts (business_date, kind);
CREATE INDEX interest_payouts_account ON interest_payouts (account_id, period_start);
-- An interval of interest is paid once: no two payouts of an account start at the same second of a non-empty period.
CREATE UNIQUE INDEX interest_payouts_once_per_interval ON interest_payouts (account_id, period_start) WHERE period_end > period_start;
-- Settlement is idempotent per (account, date).
CREATE UNIQUE INDEX interest_payouts_one_auto ON interest_payouts (account_id, business_date) WHERE kind = 'auto';

-- Transactional outbox: written in the payout's transaction, published by the relay.
CREATE TABLE payout_outbox (
    seq           bigserial UNIQUE,              -- publication order
    payout_id     uuid PRIMARY KEY REFERENCES interest_payouts (payout_id),
    partition     integer NOT NULL,
    message_key   text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX payout_outbox_pending ON payout_outbox (partition, created_at) WHERE published_at IS NULL;

-- Consumed offsets live here, committed with the state they produced.
-- owner_epoch fences a worker that lost the partition: its commit matches no row.
CREATE TABLE consumer_offsets (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    owner_epoch  bigint NOT NULL DEFAULT 0,
    owner        text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
