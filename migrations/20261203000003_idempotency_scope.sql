-- Idempotency keys are scoped per client (the identity behind an API token),
-- reserved by the API before it produces a claim, and expire.
--
-- A row's state:
--   pending   — an API request holds the key and is queuing the claim `claim_id`;
--   queued    — the broker acknowledged it and the API answered 202: the worker
--               must apply it (a retry answers 202 with the same Location);
--   answered  — `status` and `body` are the key's answer, replayed to every retry;
--   released  — the key holds no answer: the API withdrew `claim_id` after an
--               ambiguous delivery (the worker never pays it), or the answer
--               depended on data not arrived yet (404 unknown_account). A new
--               request with the key takes the row over.
-- Rows from before this migration were answered keys of the one client ''.
ALTER TABLE idempotency_keys
    ADD COLUMN client_id   text NOT NULL DEFAULT '',
    ADD COLUMN state       text NOT NULL DEFAULT 'answered'
        CHECK (state IN ('pending', 'queued', 'answered', 'released')),
    ADD COLUMN accepted_at timestamptz,
    ALTER COLUMN status DROP NOT NULL,
    ALTER COLUMN body DROP NOT NULL,
    ADD CONSTRAINT idempotency_keys_answer CHECK ((state = 'answered') = (status IS NOT NULL AND body IS NOT NULL));
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (client_id, idempotency_key);
-- GET /v1/claims/{id} finds a claim the worker has not answered yet by its reservation.
CREATE INDEX idempotency_keys_claim ON idempotency_keys (claim_id);
-- Claims carry the client whose key they were made with.
ALTER TABLE claims ADD COLUMN client_id text NOT NULL DEFAULT '';
