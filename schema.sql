-- The orchestrator's whole database contract.
--
-- Applied by `orchestrator migrate` (and by the daemon at start) under an
-- advisory lock; every statement is idempotent, so applying it twice is a
-- no-op. Sections, in order: schema, reference tables, tables, constraints
-- and indices, functions, triggers, privileges, version stamp.
--
-- The invariants that keep money right are database facts, not conventions:
--   * a balance is never negative (CHECK);
--   * a balance moves only with a ledger row in the same statement (the
--     ledger operations below are single statements);
--   * a job is debited at most once and refunded at most once (partial
--     unique indices), and a refund never exceeds its debit (trigger);
--   * the ledger is append-only (triggers refuse UPDATE, DELETE, TRUNCATE);
--   * a job never holds more outputs than it asked for (composite foreign
--     key plus CHECK on the output index);
--   * a user never has more jobs in flight than the plan's seats (partial
--     unique index over seat numbers);
--   * a terminal job stays terminal (trigger).

-- Roles are cluster-wide and created before anything refers to them:
--   orchestrator_owner     NOLOGIN, not a superuser; owns the schema, its tables
--                          and functions, so SECURITY DEFINER runs with no more
--                          than the schema's own rights;
--   orchestrator_daemon    what the daemon needs and no more (see Privileges);
--   orchestrator_operator  grant, adjust, refund by hand, audit;
--   submitter              submit, cancel and read jobs.
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['orchestrator_owner', 'orchestrator_daemon',
                                  'orchestrator_operator', 'submitter'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database of the cluster created it concurrently
            END;
        END IF;
    END LOOP;
END
$$;

CREATE SCHEMA IF NOT EXISTS orchestrator;

-- A user's partition slot, out of a fixed 1024: every job of a user lands in one
-- slot, and each slot has one owning daemon (see partition_leases). Defined
-- before the tables because `jobs.slot` is generated from it. Never change it:
-- the slots stored with existing jobs would no longer match.
CREATE OR REPLACE FUNCTION orchestrator.slot_of(p_user_id text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN ((pg_catalog.hashtextextended(p_user_id, 0) % 1024 + 1024) % 1024)::integer;

-- ---------------------------------------------------------------------------
-- Reference tables
-- ---------------------------------------------------------------------------

-- Job statuses. `in_flight` marks the statuses that hold a seat and a debit.
CREATE TABLE IF NOT EXISTS orchestrator.job_statuses (
    status    text PRIMARY KEY,
    terminal  boolean NOT NULL,
    in_flight boolean NOT NULL
);
INSERT INTO orchestrator.job_statuses (status, terminal, in_flight) VALUES
    ('queued', false, false),
    ('starting', false, true),
    ('processing', false, true),
    ('succeeded', true, false),
    ('failed', true, false),
    ('timed_out', true, false),
    ('canceled', true, false),
    ('rejected', true, false)
ON CONFLICT (status) DO NOTHING;

-- Error codes; `orchestrator.lifecycle.ErrorCode` is kept equal to this by a test.
CREATE TABLE IF NOT EXISTS orchestrator.error_codes (
    code        text PRIMARY KEY,
    description text NOT NULL
);
INSERT INTO orchestrator.error_codes (code, description) VALUES
    ('INSUFFICIENT_CREDITS', 'the balance does not cover the job''s cost'),
    ('DUPLICATE', 'an identical job of the same user is queued or in flight'),
    ('TOO_MANY_INFLIGHT', 'the plan''s limit of jobs in flight is reached'),
    ('RATE_LIMITED', 'sooner than the plan allows after the previous job'),
    ('LIMIT_EXCEEDED', 'the plan''s monthly generations are used up'),
    ('VALIDATION_ERROR', 'the submission is malformed'),
    ('UPSTREAM_ERROR', 'the provider failed the generation'),
    ('TIMEOUT', 'the provider did not finish before the job''s deadline'),
    ('CANCELED', 'cancelled on request'),
    ('STUCK', 'non-terminal for longer than the stuck limit'),
    ('INTERNAL_ERROR', 'the orchestrator failed; credits were refunded')
ON CONFLICT (code) DO NOTHING;

-- Plans. Operators may change these rows; migrate never overwrites them.
-- `priority` is the plan's weight when a daemon's capacity is short: waiting
-- users are admitted in weighted fair order, each a share of priority over the
-- sum of the waiting users' priorities, none starved. It changes nothing while
-- there is room, and never what a job costs or may do.
CREATE TABLE IF NOT EXISTS orchestrator.plans (
    name                text PRIMARY KEY,
    monthly_generations integer NOT NULL CHECK (monthly_generations >= 0),
    max_inflight        integer NOT NULL CHECK (max_inflight BETWEEN 1 AND 1000),
    min_seconds_between double precision NOT NULL DEFAULT 0
                        CHECK (min_seconds_between >= 0),
    cost_per_output     bigint NOT NULL CHECK (cost_per_output > 0),
    priority            smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 10)
);
-- Columns added after the first release, for databases created before them.
ALTER TABLE orchestrator.plans
    ADD COLUMN IF NOT EXISTS priority smallint NOT NULL DEFAULT 1
        CHECK (priority BETWEEN 1 AND 10);
INSERT INTO orchestrator.plans
    (name, monthly_generations, max_inflight, min_seconds_between, cost_per_output)
VALUES
    ('free', 100, 2, 0, 1),
    ('pro', 10000, 10, 0, 1)
ON CONFLICT (name) DO NOTHING;

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS orchestrator.accounts (
    user_id          text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 200),
    balance          bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    plan             text NOT NULL DEFAULT 'free' REFERENCES orchestrator.plans (name),
    last_admitted_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Submissions are accepted as they come (a plain INSERT is a supported way to
-- submit) within the outer limits that `check_submission_v1` enforces at INSERT;
-- the daemon validates the rest and rejects bad ones with VALIDATION_ERROR. The
-- limits are a trigger, not CHECK constraints: a CHECK is re-tested on every
-- UPDATE, so a row that predates it could never be rejected or finished.
CREATE TABLE IF NOT EXISTS orchestrator.jobs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             text NOT NULL,
    prompt              text NOT NULL,
    params              jsonb NOT NULL DEFAULT '{}',
    num_outputs         integer NOT NULL DEFAULT 1,
    -- Same prompt, params and output count give the same fingerprint; jsonb's
    -- text form is canonical, so key order does not matter. It only narrows
    -- the duplicate search: the check compares the columns themselves.
    fingerprint         uuid GENERATED ALWAYS AS (
                            md5(prompt || chr(31) || params::text || chr(31)
                                || num_outputs::text)::uuid
                        ) STORED,
    cost                bigint CHECK (cost >= 0),
    idempotency_key     text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    status              text NOT NULL DEFAULT 'queued'
                        REFERENCES orchestrator.job_statuses (status),
    error_code          text REFERENCES orchestrator.error_codes (code),
    error_message       text,
    inflight_seat       integer CHECK (inflight_seat >= 1),
    provider            text,
    prediction_id       text,
    deadline_at         timestamptz,
    cancel_requested_at timestamptz,
    partial             boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    admitted_at         timestamptz,
    finished_at         timestamptz,
    slot                integer GENERATED ALWAYS AS (orchestrator.slot_of(user_id)) STORED,
    -- The lease epochs of the slot under which the job was admitted and ended.
    admit_epoch         bigint,
    finish_epoch        bigint,
    -- The failed or timed-out job this one retries (see retry_job_v1).
    retry_of            uuid REFERENCES orchestrator.jobs (id),
    -- The job's W3C trace context (`traceparent`): the submitter's, or the one the
    -- daemon's root span took at admission, so a resumed job continues its trace.
    traceparent         text CONSTRAINT jobs_traceparent_format CHECK (
                            traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                            AND traceparent !~ '^00-0{32}-' AND traceparent !~ '-0{16}-'),
    -- Where the app hears this job's ending when it cannot LISTEN: a signed POST from
    -- the slot's owner (see callback_deliveries). Checked at INSERT for its shape
    -- (check_callback_url_v1); the daemon rejects a host off its allow-list.
    callback_url        text,
    CONSTRAINT jobs_user_idempotency_key_key UNIQUE (user_id, idempotency_key),
    CONSTRAINT jobs_id_num_outputs_key UNIQUE (id, num_outputs),
    -- A seat is held exactly while the job is in flight.
    CONSTRAINT jobs_seat_iff_in_flight CHECK (
        (status IN ('starting', 'processing')) = (inflight_seat IS NOT NULL)),
    -- A rejected job was never charged, so it has no cost; an admitted one has
    -- (a job cancelled before admission ends `canceled` at cost 0).
    CONSTRAINT jobs_cost_iff_admitted CHECK (
        (status IN ('queued', 'rejected')) = (cost IS NULL)),
    CONSTRAINT jobs_terminal_has_code CHECK (
        status NOT IN ('failed', 'timed_out', 'canceled', 'rejected')
        OR error_code IS NOT NULL)
);

-- Columns added after the first release, for databases created before them.
ALTER TABLE orchestrator.jobs
    ADD COLUMN IF NOT EXISTS slot integer
        GENERATED ALWAYS AS (orchestrator.slot_of(user_id)) STORED,
    ADD COLUMN IF NOT EXISTS admit_epoch bigint,
    ADD COLUMN IF NOT EXISTS finish_epoch bigint,
    ADD COLUMN IF NOT EXISTS retry_of uuid REFERENCES orchestrator.jobs (id),
    ADD COLUMN IF NOT EXISTS traceparent text CONSTRAINT jobs_traceparent_format CHECK (
        traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
        AND traceparent !~ '^00-0{32}-' AND traceparent !~ '-0{16}-'),
    ADD COLUMN IF NOT EXISTS callback_url text;

CREATE TABLE IF NOT EXISTS orchestrator.ledger (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text NOT NULL REFERENCES orchestrator.accounts (user_id),
    job_id     uuid REFERENCES orchestrator.jobs (id),
    kind       text NOT NULL CHECK (kind IN ('grant', 'debit', 'refund', 'adjust')),
    amount     bigint NOT NULL,
    ref        text NOT NULL UNIQUE,
    note       text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT ledger_amount_sign CHECK (
        CASE kind
            WHEN 'debit' THEN amount < 0
            WHEN 'adjust' THEN amount <> 0
            ELSE amount > 0
        END),
    CONSTRAINT ledger_job_iff_job_kind CHECK (
        (kind IN ('debit', 'refund')) = (job_id IS NOT NULL))
);

-- The job's num_outputs travels with every output through the composite
-- foreign key, so `idx < num_outputs` is checked against the job's own value:
-- an output past what was paid for cannot be stored.
CREATE TABLE IF NOT EXISTS orchestrator.outputs (
    job_id       uuid NOT NULL,
    idx          integer NOT NULL,
    num_outputs  integer NOT NULL,
    url          text,
    path         text,
    size_bytes   bigint CHECK (size_bytes >= 0),
    sha256       text,
    content_type text,
    -- An http(s) URL serving the stored bytes, for the app to hand a browser.
    public_url   text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at   timestamptz,
    PRIMARY KEY (job_id, idx),
    CONSTRAINT outputs_idx_in_range CHECK (idx >= 0 AND idx < num_outputs),
    CONSTRAINT outputs_job_fkey FOREIGN KEY (job_id, num_outputs)
        REFERENCES orchestrator.jobs (id, num_outputs)
);

ALTER TABLE orchestrator.outputs ADD COLUMN IF NOT EXISTS public_url text;

-- Every provider prediction a job started, by output index, recorded the
-- moment its id is known, so a restart re-attaches instead of paying again.
CREATE TABLE IF NOT EXISTS orchestrator.predictions (
    job_id        uuid NOT NULL REFERENCES orchestrator.jobs (id),
    idx           integer NOT NULL CHECK (idx >= 0),
    provider      text NOT NULL,
    prediction_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The lease epoch of the job's slot under which it was recorded.
    epoch         bigint,
    PRIMARY KEY (job_id, idx),
    UNIQUE (provider, prediction_id)
);
ALTER TABLE orchestrator.predictions ADD COLUMN IF NOT EXISTS epoch bigint;

-- Provider money: predictions that ran for a job without delivering to it, and
-- what reconciliation last saw of them upstream. Rows come from reconciliation
-- (a recorded prediction of a job that ended without that output), from a job
-- task that found a prediction whose submit it cut off ('lost'), from a
-- resubmission that replaced a recorded id ('replaced'), and from the
-- provider's listing ('listed'). `status` is the upstream status last seen;
-- NULL means not looked at yet.
CREATE TABLE IF NOT EXISTS orchestrator.upstream_predictions (
    provider       text NOT NULL,
    prediction_id  text NOT NULL,
    job_id         uuid NOT NULL REFERENCES orchestrator.jobs (id),
    idx            integer NOT NULL CHECK (idx >= 0),
    found_by       text NOT NULL
                   CHECK (found_by IN ('recorded', 'lost', 'replaced', 'listed')),
    status         text CHECK (status IN ('starting', 'processing', 'succeeded',
                                          'failed', 'canceled', 'aborted')),
    cancel_sent_at timestamptz,
    checked_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (provider, prediction_id)
);

-- Webhook deliveries already processed: a repeat is a no-op.
CREATE TABLE IF NOT EXISTS orchestrator.webhook_events (
    provider    text NOT NULL,
    event_id    text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (provider, event_id)
);

-- The event feed: one row per ending (any terminal status), appended in the same
-- transaction as the status by the deferred trigger `jobs_append_event`, which also
-- sends NOTIFY orchestrator_job_events. `seq` follows commit order (see
-- append_job_event), so a reader resuming after the last seq it read never misses
-- one. Pruned after the retention by prune_job_events_v1.
CREATE TABLE IF NOT EXISTS orchestrator.job_events (
    -- CACHE 1, and it must stay so: a backend caching values would hand out seqs
    -- ahead of the commit order the feed's lock imposes.
    seq         bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES orchestrator.jobs (id),
    user_id     text NOT NULL,
    status      text NOT NULL REFERENCES orchestrator.job_statuses (status),
    error_code  text REFERENCES orchestrator.error_codes (code),
    finished_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Holds no rows and is only ever locked: the event trigger takes it in EXCLUSIVE
-- mode before taking a seq and keeps it until its transaction's commit is visible,
-- so seqs are handed out in commit order (see append_job_event). A table lock
-- writes no WAL and dirties no page, unlike a row lock; and no role but the
-- schema's owner may lock it directly (the others are refused even SELECT on it
-- below), as any role could an advisory lock. It is held only by a transaction
-- that ends a job, from its commit-time trigger to its commit: a session of the
-- daemon's role that paused inside such a transaction would hold it, as it would
-- hold the rows it wrote.
CREATE TABLE IF NOT EXISTS orchestrator.job_event_clock (
    id boolean PRIMARY KEY CHECK (id)
);

-- A job's ending owed to its callback_url: created with the event, delivered at
-- least once by the owner of the job's slot (the webhook-id is `evt_<seq>`), retried
-- with backoff until `delivered_at`, or given up at `failed_at` (24 h by default).
-- `attempts` counts claims; a claim moves `next_attempt_at` past the request's
-- timeout, so a daemon that dies mid-request leaves it due again for the next owner.
CREATE TABLE IF NOT EXISTS orchestrator.callback_deliveries (
    seq             bigint PRIMARY KEY REFERENCES orchestrator.job_events (seq),
    job_id          uuid NOT NULL,
    slot            integer NOT NULL,
    url             text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    claimed_by      text,
    delivered_at    timestamptz,
    failed_at       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT callback_deliveries_one_end CHECK (delivered_at IS NULL OR failed_at IS NULL)
);

CREATE TABLE IF NOT EXISTS orchestrator.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Daemons alive now: each heartbeats in its lease round. A member whose
-- `expires_at` passed (on the database's clock) is gone, and the slots it held
-- go to the others.
CREATE TABLE IF NOT EXISTS orchestrator.members (
    member_id    text PRIMARY KEY CHECK (length(member_id) BETWEEN 1 AND 200),
    info         jsonb NOT NULL DEFAULT '{}',
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL
);

-- One row per partition slot: its owner and fencing epoch. Taking a slot bumps
-- its epoch; every write a daemon makes to a job checks, in the same
-- transaction, that the job's slot is still its own under the epoch it holds.
-- Logged, so epochs survive a crash and never repeat.
CREATE TABLE IF NOT EXISTS orchestrator.partition_leases (
    slot       integer PRIMARY KEY CHECK (slot BETWEEN 0 AND 1023),
    owner      text,
    epoch      bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    taken_at   timestamptz,
    expires_at timestamptz,
    CONSTRAINT partition_leases_owner_iff_expiry CHECK ((owner IS NULL) = (expires_at IS NULL))
);
INSERT INTO orchestrator.partition_leases (slot)
SELECT s FROM pg_catalog.generate_series(0, 1023) s
ON CONFLICT (slot) DO NOTHING;

-- Who held each (slot, epoch), from when: with the epochs stored on jobs and
-- predictions, it shows which daemon made each write.
CREATE TABLE IF NOT EXISTS orchestrator.lease_history (
    slot     integer NOT NULL,
    epoch    bigint NOT NULL,
    owner    text NOT NULL,
    taken_at timestamptz NOT NULL,
    PRIMARY KEY (slot, epoch)
);

-- ---------------------------------------------------------------------------
-- Constraints and indices
-- ---------------------------------------------------------------------------

-- Protects: a job is debited at most once.
CREATE UNIQUE INDEX IF NOT EXISTS ledger_one_debit_per_job
    ON orchestrator.ledger (job_id) WHERE kind = 'debit';
-- Protects: a job is refunded at most once.
CREATE UNIQUE INDEX IF NOT EXISTS ledger_one_refund_per_job
    ON orchestrator.ledger (job_id) WHERE kind = 'refund';
CREATE INDEX IF NOT EXISTS ledger_user_idx ON orchestrator.ledger (user_id);

-- Protects: at most max_inflight jobs per user in flight; admission takes a
-- free seat number in 1..max_inflight, and two daemons cannot take the same one.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_job_per_seat
    ON orchestrator.jobs (user_id, inflight_seat) WHERE inflight_seat IS NOT NULL;
-- Serves the catch-up scan, recovery and the sweeper.
CREATE INDEX IF NOT EXISTS jobs_active_idx
    ON orchestrator.jobs (created_at, id)
    WHERE status IN ('queued', 'starting', 'processing');
-- Serves the scans of a daemon's own slots: queued and in-flight jobs by slot.
CREATE INDEX IF NOT EXISTS jobs_slot_active_idx
    ON orchestrator.jobs (slot, status, created_at)
    WHERE status IN ('queued', 'starting', 'processing');
-- Serves pruning of the lease history.
CREATE INDEX IF NOT EXISTS lease_history_taken_idx
    ON orchestrator.lease_history (taken_at);
-- Serves the duplicate check: identical jobs of one user still alive.
CREATE INDEX IF NOT EXISTS jobs_alive_fingerprint_idx
    ON orchestrator.jobs (user_id, fingerprint)
    WHERE status IN ('queued', 'starting', 'processing');
-- Serves webhook pruning, oldest first.
CREATE INDEX IF NOT EXISTS webhook_events_received_idx
    ON orchestrator.webhook_events (received_at);
-- Serves monthly usage and listings per user.
CREATE INDEX IF NOT EXISTS jobs_user_admitted_idx
    ON orchestrator.jobs (user_id, admitted_at) WHERE admitted_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_user_created_idx
    ON orchestrator.jobs (user_id, created_at);
-- Serves reconciliation: jobs that ended recently.
CREATE INDEX IF NOT EXISTS jobs_finished_idx
    ON orchestrator.jobs (finished_at) WHERE finished_at IS NOT NULL;
-- A job's earlier attempts, for a resume's retry count and the runbook's look-up.
CREATE INDEX IF NOT EXISTS upstream_predictions_job_idx
    ON orchestrator.upstream_predictions (job_id, idx);

-- Protects: a job's ending is in the feed once.
CREATE UNIQUE INDEX IF NOT EXISTS job_events_one_per_job ON orchestrator.job_events (job_id);
-- Serves pruning of the feed, oldest first. BRIN: events are appended in time
-- order, so a summary per block range finds the old ones, and an ending (which
-- holds the feed's lock while it inserts) pays no btree insert for it.
CREATE INDEX IF NOT EXISTS job_events_created_idx
    ON orchestrator.job_events USING brin (created_at);
-- Serves each slot owner's claim of the callbacks due.
CREATE INDEX IF NOT EXISTS callback_deliveries_due_idx
    ON orchestrator.callback_deliveries (slot, next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
-- Serves `orchestrator callbacks --failed` and the web view, newest first.
CREATE INDEX IF NOT EXISTS callback_deliveries_failed_idx
    ON orchestrator.callback_deliveries (failed_at) WHERE failed_at IS NOT NULL;

-- Serves reconciliation: strays not yet seen terminal upstream.
CREATE INDEX IF NOT EXISTS upstream_predictions_open_idx
    ON orchestrator.upstream_predictions (created_at)
    WHERE status IS NULL OR status IN ('starting', 'processing');

-- ---------------------------------------------------------------------------
-- Functions
-- ---------------------------------------------------------------------------

-- Grant credits (creating the account on first grant). A repeated `ref` is a
-- no-op, so a retried grant never pays twice. Returns the balance.
CREATE OR REPLACE FUNCTION orchestrator.grant_credits(
    p_user_id text, p_amount bigint, p_ref text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ref text := coalesce(p_ref, 'grant:' || gen_random_uuid()::text);
    v_balance bigint;
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'credits to grant must be positive, got %', p_amount
            USING ERRCODE = 'OR004';
    END IF;
    INSERT INTO orchestrator.accounts (user_id) VALUES (p_user_id) ON CONFLICT (user_id) DO NOTHING;
    WITH entry AS (
        INSERT INTO orchestrator.ledger (user_id, kind, amount, ref)
        VALUES (p_user_id, 'grant', p_amount, v_ref)
        ON CONFLICT (ref) DO NOTHING
        RETURNING user_id, amount
    )
    UPDATE orchestrator.accounts a SET balance = a.balance + entry.amount, updated_at = now()
      FROM entry WHERE a.user_id = entry.user_id
    RETURNING a.balance INTO v_balance;
    IF v_balance IS NULL THEN
        SELECT balance INTO v_balance FROM orchestrator.accounts WHERE user_id = p_user_id;
    END IF;
    RETURN v_balance;
END
$$;

-- An operator's manual correction, as an `adjust` ledger row with its balance
-- change in one statement. NULL when `p_ref` was applied already; a negative
-- result is refused by the balance CHECK.
CREATE OR REPLACE FUNCTION orchestrator.adjust_balance_v1(
    p_user_id text, p_amount bigint, p_ref text, p_note text
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_balance bigint;
BEGIN
    IF p_amount IS NULL OR p_amount = 0 THEN
        RAISE EXCEPTION 'an adjustment must move the balance' USING ERRCODE = 'OR004';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM orchestrator.accounts a WHERE a.user_id = p_user_id) THEN
        RAISE EXCEPTION 'unknown user %', p_user_id USING ERRCODE = 'OR001';
    END IF;
    WITH entry AS (
        INSERT INTO orchestrator.ledger (user_id, kind, amount, ref, note)
        VALUES (p_user_id, 'adjust', p_amount, p_ref, p_note)
        ON CONFLICT (ref) DO NOTHING
        RETURNING user_id, amount
    )
    UPDATE orchestrator.accounts a
       SET balance = a.balance + entry.amount, updated_at = pg_catalog.now()
      FROM entry
     WHERE a.user_id = entry.user_id
    RETURNING a.balance INTO v_balance;
    RETURN v_balance;
END
$$;

-- An operator's refund of a finished job's credits (all, or p_amount of them),
-- once: a second refund finds the unique index and moves nothing. Jobs in
-- flight are refused, since their refund belongs to finishing, and a partial
-- one taken early would leave their failure short. No row: nothing refunded.
CREATE OR REPLACE FUNCTION orchestrator.refund_job_v1(p_job_id uuid, p_amount bigint)
RETURNS TABLE (amount bigint, balance bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
WITH debit AS (
    SELECT l.user_id, -l.amount AS debited
      FROM orchestrator.ledger l
      JOIN orchestrator.jobs j ON j.id = l.job_id
     WHERE l.job_id = p_job_id AND l.kind = 'debit'
       AND j.status IN ('succeeded', 'failed', 'timed_out', 'canceled')
       AND NOT EXISTS (SELECT 1 FROM orchestrator.ledger r
                        WHERE r.job_id = p_job_id AND r.kind = 'refund')
), entry AS (
    INSERT INTO orchestrator.ledger (user_id, job_id, kind, amount, ref)
    SELECT d.user_id, p_job_id, 'refund', coalesce(p_amount, d.debited),
           'refund:' || p_job_id::text
      FROM debit d
     WHERE coalesce(p_amount, d.debited) > 0
    ON CONFLICT DO NOTHING
    RETURNING user_id, amount
)
UPDATE orchestrator.accounts a
   SET balance = a.balance + entry.amount, updated_at = pg_catalog.now()
  FROM entry
 WHERE a.user_id = entry.user_id
RETURNING entry.amount, a.balance;
$$;

-- The outer limits of a submission, for plain INSERT (trigger below) and
-- submit_job alike: SQLSTATE OR004, the limit's name as the constraint. The
-- daemon checks the same limits (orchestrator/inputs.py) for older rows.
--   prompt   1 to 4000 characters
--   user_id  1 to 128 characters of A-Z a-z 0-9 . _ @ : + -
--   params   at most 16 KiB as jsonb text, nested at most 32 levels
CREATE OR REPLACE FUNCTION orchestrator.check_submission_v1(
    p_user_id text, p_prompt text, p_params jsonb
) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_bytes integer;
BEGIN
    IF p_user_id IS NULL OR p_user_id !~ '^[A-Za-z0-9._@:+-]{1,128}$' THEN
        RAISE EXCEPTION 'user_id must be 1 to 128 characters of A-Z a-z 0-9 . _ @ : + -'
            USING ERRCODE = 'OR004', CONSTRAINT = 'jobs_user_id_format';
    END IF;
    IF p_prompt IS NULL OR pg_catalog.length(p_prompt) NOT BETWEEN 1 AND 4000 THEN
        RAISE EXCEPTION 'the prompt has % characters; 1 to 4000 are allowed',
            coalesce(pg_catalog.length(p_prompt), 0)
            USING ERRCODE = 'OR004', CONSTRAINT = 'jobs_prompt_length';
    END IF;
    v_bytes := pg_catalog.octet_length(p_params::text);
    IF v_bytes > 16384 THEN
        RAISE EXCEPTION 'params are % bytes as JSON; at most 16384 are allowed', v_bytes
            USING ERRCODE = 'OR004', CONSTRAINT = 'jobs_params_size';
    END IF;
    IF pg_catalog.jsonb_path_exists(p_params, 'strict $.**{32 to last}') THEN
        RAISE EXCEPTION 'params are nested more than 32 levels deep'
            USING ERRCODE = 'OR004', CONSTRAINT = 'jobs_params_depth';
    END IF;
END
$$;

-- The outer shape of a job's callback_url, at INSERT (trigger below) and in
-- submit_job and submit_jobs: NULL, or an http(s) URL of at most 2048 characters
-- with a host and no whitespace or control character. Whether its host may be called is the daemon's
-- decision (ORCHESTRATOR_CALLBACK_HOSTS): a host off the list ends the job
-- `rejected` VALIDATION_ERROR, uncharged, and nothing is ever sent to it.
CREATE OR REPLACE FUNCTION orchestrator.check_callback_url_v1(p_url text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_url IS NULL THEN
        RETURN;
    END IF;
    IF pg_catalog.length(p_url) > 2048
       OR p_url !~ '^https?://[^/?#[:space:][:cntrl:]]+[^[:space:][:cntrl:]]*$' THEN
        RAISE EXCEPTION 'callback_url must be an http(s) URL of at most 2048 characters'
            USING ERRCODE = 'OR004', CONSTRAINT = 'jobs_callback_url_format';
    END IF;
END
$$;

-- What submit_job, submit_jobs and retry_job_v1 refuse before inserting, one
-- list so they cannot drift: OR004 for a malformed submission, OR001 for a
-- user without an account. Only reads, so a caller may run it inside an
-- EXCEPTION block without that block's subtransaction ever taking an XID.
CREATE OR REPLACE FUNCTION orchestrator.check_submit_v1(
    p_user_id text, p_prompt text, p_params jsonb, p_num_outputs integer,
    p_idempotency_key text
) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_user_id IS NULL OR p_prompt IS NULL OR p_num_outputs IS NULL THEN
        RAISE EXCEPTION 'user, prompt and num_outputs are required'
            USING ERRCODE = 'OR004';
    END IF;
    PERFORM orchestrator.check_submission_v1(p_user_id, p_prompt, coalesce(p_params, '{}'));
    IF pg_catalog.length(p_idempotency_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'an idempotency key must have 1 to 200 characters'
            USING ERRCODE = 'OR004';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM orchestrator.accounts a WHERE a.user_id = p_user_id) THEN
        RAISE EXCEPTION 'unknown user %', p_user_id
            USING ERRCODE = 'OR001', HINT = 'grant credits to create the account';
    END IF;
END
$$;

-- Submit a job. The same (user, idempotency key) returns the first job's id
-- and inserts nothing; reusing a key for a different request (prompt, params,
-- outputs) is an error rather than a silent answer about another job.
-- `p_traceparent` (a W3C trace context) makes the job's trace a child of the
-- submitter's span and is never sent to the provider; `p_callback_url` is where
-- the app hears the ending (see callback_deliveries). Neither is part of the
-- request an idempotency key names: the first submission's stand. The shorter
-- forms this replaces are dropped first: overloads with defaults would make every
-- short call ambiguous.
DROP FUNCTION IF EXISTS orchestrator.submit_job(text, text, jsonb, integer, text);
DROP FUNCTION IF EXISTS orchestrator.submit_job(text, text, jsonb, integer, text, text);
CREATE OR REPLACE FUNCTION orchestrator.submit_job(
    p_user_id text,
    p_prompt text,
    p_params jsonb DEFAULT '{}',
    p_num_outputs integer DEFAULT 1,
    p_idempotency_key text DEFAULT NULL,
    p_traceparent text DEFAULT NULL,
    p_callback_url text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid;
    v_same boolean;
BEGIN
    PERFORM orchestrator.check_submit_v1(p_user_id, p_prompt, p_params, p_num_outputs,
                                         p_idempotency_key);
    PERFORM orchestrator.check_callback_url_v1(p_callback_url);
    IF p_traceparent IS NOT NULL AND (
           p_traceparent !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
           OR p_traceparent ~ '^00-0{32}-' OR p_traceparent ~ '-0{16}-') THEN
        RAISE EXCEPTION 'a traceparent must be a W3C trace context: 00-<32 hex>-<16 hex>-<2 hex>'
            USING ERRCODE = 'OR004', CONSTRAINT = 'jobs_traceparent_format';
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs, idempotency_key,
                                       traceparent, callback_url)
        VALUES (p_user_id, p_prompt, coalesce(p_params, '{}'), p_num_outputs, p_idempotency_key,
                p_traceparent, p_callback_url)
        ON CONFLICT (user_id, idempotency_key) DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NULL THEN
            -- Another submission with this key won (or committed earlier).
            SELECT id, prompt = p_prompt AND params = coalesce(p_params, '{}')
                       AND num_outputs = p_num_outputs
              INTO v_id, v_same
              FROM orchestrator.jobs WHERE user_id = p_user_id AND idempotency_key = p_idempotency_key;
            IF NOT v_same THEN
                RAISE EXCEPTION 'idempotency key % was used for a different request',
                    p_idempotency_key USING ERRCODE = 'OR003';
            END IF;
        END IF;
        RETURN v_id;
    END IF;
    INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs, traceparent,
                                   callback_url)
    VALUES (p_user_id, p_prompt, coalesce(p_params, '{}'), p_num_outputs, p_traceparent,
            p_callback_url)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

-- Submit many jobs in one round trip. `p_items` is a JSON array of objects
-- {user_id, prompt, params?, num_outputs?, idempotency_key?, callback_url?}; one row comes back
-- per item, with its place in the input (`ordinal`, from 1): the job's id, or the
-- SQLSTATE and message submit_job would have raised for that item (OR001
-- unknown user, OR003 key reused for a different request, OR004 malformed).
-- A bad item never fails the others, and a repeated key returns the first
-- job's id as submit_job does. Each item is checked inside an EXCEPTION block
-- that only reads, so its subtransaction never takes an XID (a thousand
-- writing subtransactions would overflow the subxid cache of every snapshot
-- taken meanwhile); the INSERT runs after the block and cannot fail on what the
-- block checked. The insert trigger notifies each job's slot, as for one job.
-- Over 1000 items or 8 MiB of JSON refuses the whole call (OR004), before any
-- insert. Items are inserted in (user_id, idempotency_key) order, so two calls
-- that share keys wait on each other's rows in one order and never deadlock;
-- the rows come back in that order too: `ORDER BY ordinal` for the input's.
CREATE OR REPLACE FUNCTION orchestrator.submit_jobs(p_items jsonb)
RETURNS TABLE (ordinal integer, job_id uuid, code text, message text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_item jsonb;
    v_n bigint;
    v_count integer;
    v_bytes integer;
    v_user text;
    v_prompt text;
    v_params jsonb;
    v_outputs integer;
    v_key text;
    v_callback text;
    v_id uuid;
    v_same boolean;
BEGIN
    IF p_items IS NULL OR pg_catalog.jsonb_typeof(p_items) <> 'array' THEN
        RAISE EXCEPTION 'a bulk submission is a JSON array of job objects'
            USING ERRCODE = 'OR004';
    END IF;
    v_count := pg_catalog.jsonb_array_length(p_items);
    IF v_count > 1000 THEN
        RAISE EXCEPTION 'a bulk submission holds at most 1000 jobs, got %', v_count
            USING ERRCODE = 'OR004', HINT = 'split it into several calls';
    END IF;
    v_bytes := pg_catalog.octet_length(p_items::text);
    IF v_bytes > 8388608 THEN
        RAISE EXCEPTION 'a bulk submission is at most 8 MiB of JSON, got % bytes', v_bytes
            USING ERRCODE = 'OR004', HINT = 'split it into several calls';
    END IF;
    FOR v_item, v_n IN
        SELECT e.item, e.n
          FROM pg_catalog.jsonb_array_elements(p_items) WITH ORDINALITY AS e (item, n)
         ORDER BY e.item ->> 'user_id', e.item ->> 'idempotency_key', e.n
    LOOP
        ordinal := v_n::integer;
        job_id := NULL;
        code := NULL;
        message := NULL;
        BEGIN
            IF pg_catalog.jsonb_typeof(v_item) IS DISTINCT FROM 'object' THEN
                RAISE EXCEPTION 'a job is a JSON object' USING ERRCODE = 'OR004';
            END IF;
            IF pg_catalog.jsonb_typeof(v_item -> 'user_id') IS DISTINCT FROM 'string'
               OR pg_catalog.jsonb_typeof(v_item -> 'prompt') IS DISTINCT FROM 'string' THEN
                RAISE EXCEPTION 'user_id and prompt are required, as strings'
                    USING ERRCODE = 'OR004';
            END IF;
            IF pg_catalog.jsonb_typeof(v_item -> 'num_outputs') NOT IN ('number', 'null')
               OR pg_catalog.jsonb_typeof(v_item -> 'idempotency_key') NOT IN ('string', 'null')
               OR pg_catalog.jsonb_typeof(v_item -> 'callback_url') NOT IN ('string', 'null')
            THEN
                RAISE EXCEPTION
                    'num_outputs must be a number, idempotency_key and callback_url strings'
                    USING ERRCODE = 'OR004';
            END IF;
            v_user := v_item ->> 'user_id';
            v_prompt := v_item ->> 'prompt';
            v_params := CASE WHEN pg_catalog.jsonb_typeof(v_item -> 'params') <> 'null'
                             THEN v_item -> 'params' ELSE '{}' END;
            v_outputs := coalesce((v_item ->> 'num_outputs')::integer, 1);
            v_key := v_item ->> 'idempotency_key';
            v_callback := v_item ->> 'callback_url';
            PERFORM orchestrator.check_submit_v1(v_user, v_prompt, v_params, v_outputs, v_key);
            PERFORM orchestrator.check_callback_url_v1(v_callback);
        EXCEPTION
            WHEN SQLSTATE 'OR001' OR SQLSTATE 'OR004' THEN
                code := SQLSTATE;
                message := SQLERRM;
            WHEN data_exception THEN  -- a num_outputs no integer holds: 1.5, 1e12
                code := 'OR004';
                message := 'num_outputs must be a whole number: ' || SQLERRM;
        END;
        IF code IS NULL THEN
            IF v_key IS NULL THEN
                INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs,
                                               callback_url)
                VALUES (v_user, v_prompt, v_params, v_outputs, v_callback)
                RETURNING id INTO job_id;
            ELSE
                INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs,
                                               idempotency_key, callback_url)
                VALUES (v_user, v_prompt, v_params, v_outputs, v_key, v_callback)
                ON CONFLICT (user_id, idempotency_key) DO NOTHING
                RETURNING id INTO job_id;
                IF job_id IS NULL THEN
                    SELECT j.id, j.prompt = v_prompt AND j.params = v_params
                                 AND j.num_outputs = v_outputs
                      INTO v_id, v_same
                      FROM orchestrator.jobs j
                     WHERE j.user_id = v_user AND j.idempotency_key = v_key;
                    IF v_same THEN
                        job_id := v_id;
                    ELSE
                        code := 'OR003';
                        message := pg_catalog.format(
                            'idempotency key %s was used for a different request', v_key);
                    END IF;
                END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- An operator's retry of a job that failed or timed out: a new queued job of
-- the same user, prompt, params and output count, `retry_of` naming the old
-- one, admitted and charged like any other (the old one was refunded when it
-- ended); its callback_url goes with it. Only failed and timed_out: a success
-- needs no retry; a job queued or in flight may still succeed, and a second one
-- would pay twice; a cancel
-- was somebody's decision; a rejection never ran (submit it again once its
-- cause is fixed). The key defaults to 'retry:<old id>', so retrying one job
-- twice returns the same new job; a deliberate second retry passes another
-- key. A key already used for anything else is OR003, as in submit_job.
CREATE OR REPLACE FUNCTION orchestrator.retry_job_v1(
    p_job_id uuid, p_idempotency_key text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key text := coalesce(p_idempotency_key, 'retry:' || p_job_id::text);
    v_user text;
    v_prompt text;
    v_params jsonb;
    v_outputs integer;
    v_status text;
    v_callback text;
    v_id uuid;
    v_same boolean;
BEGIN
    SELECT j.user_id, j.prompt, j.params, j.num_outputs, j.status, j.callback_url
      INTO v_user, v_prompt, v_params, v_outputs, v_status, v_callback
      FROM orchestrator.jobs j WHERE j.id = p_job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown job %', p_job_id USING ERRCODE = 'OR002';
    END IF;
    IF v_status NOT IN ('failed', 'timed_out') THEN
        RAISE EXCEPTION 'job % is %: only a failed or timed-out job can be retried',
            p_job_id, v_status USING ERRCODE = 'OR004';
    END IF;
    PERFORM orchestrator.check_submit_v1(v_user, v_prompt, v_params, v_outputs, v_key);
    INSERT INTO orchestrator.jobs (user_id, prompt, params, num_outputs, idempotency_key,
                                   retry_of, callback_url)
    VALUES (v_user, v_prompt, v_params, v_outputs, v_key, p_job_id, v_callback)
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT j.id, j.retry_of IS NOT DISTINCT FROM p_job_id
          INTO v_id, v_same
          FROM orchestrator.jobs j WHERE j.user_id = v_user AND j.idempotency_key = v_key;
        IF NOT v_same THEN
            RAISE EXCEPTION 'idempotency key % was used for a different request', v_key
                USING ERRCODE = 'OR003';
        END IF;
    END IF;
    RETURN v_id;
END
$$;

-- Ask for a job's cancellation; the daemon acts on it. Returns false when the
-- job is already terminal (a finished job cannot be cancelled).
CREATE OR REPLACE FUNCTION orchestrator.request_cancel(p_job_id uuid)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status text;
    v_slot integer;
BEGIN
    SELECT status, slot INTO v_status, v_slot FROM orchestrator.jobs WHERE id = p_job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown job %', p_job_id USING ERRCODE = 'OR002';
    END IF;
    UPDATE orchestrator.jobs SET cancel_requested_at = coalesce(cancel_requested_at, clock_timestamp()),
                    updated_at = clock_timestamp()
     WHERE id = p_job_id
       AND status IN ('queued', 'starting', 'processing');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('orchestrator_jobs_' || v_slot::text, p_job_id::text);
    RETURN true;
END
$$;

-- Fencing: raise 'fenced' (OR008) unless `p_member` holds `p_slot` under
-- `p_epoch` with an unexpired lease. FOR KEY SHARE holds the lease row until
-- the caller's transaction ends: a takeover locks the row FOR UPDATE before it
-- bumps the epoch, so it waits for this write and cannot overlap it, while a
-- renewal (a plain UPDATE of `expires_at`) does not conflict and never waits
-- behind the writes. Both NULL means an unfenced caller (an operator's tool
-- or a test); the daemon always passes its lease.
CREATE OR REPLACE FUNCTION orchestrator.check_fence_v1(
    p_slot integer, p_member text, p_epoch bigint
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_member IS NULL AND p_epoch IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM orchestrator.partition_leases l
     WHERE l.slot = p_slot AND l.owner = p_member AND l.epoch = p_epoch
       AND l.expires_at > pg_catalog.clock_timestamp()
       FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'slot % is not held by % under epoch %', p_slot, p_member, p_epoch
            USING ERRCODE = 'OR008';
    END IF;
END
$$;

-- One member's lease round, in one statement: heartbeat, give up every slot it
-- holds but no longer keeps (and any whose lease ran out), renew the kept ones,
-- and take those of `p_take` that are free or expired, each under a new epoch.
-- Expiry is judged on this server's clock only. Returns every slot the member
-- holds afterwards, whether it was taken now, and how long its lease is valid.
CREATE OR REPLACE FUNCTION orchestrator.lease_round_v1(
    p_member text, p_ttl_s double precision, p_keep integer[], p_take integer[],
    p_info jsonb
) RETURNS TABLE (slot integer, epoch bigint, taken boolean, valid_s double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := pg_catalog.clock_timestamp();
    v_until timestamptz;
BEGIN
    IF p_member IS NULL OR p_ttl_s IS NULL OR p_ttl_s <= 0 OR p_ttl_s > 3600 THEN
        RAISE EXCEPTION 'a member id and a lease of up to an hour are required'
            USING ERRCODE = 'OR004';
    END IF;
    v_until := v_now + pg_catalog.make_interval(secs => p_ttl_s);
    -- Rows are locked in slot order. The member's own rows FOR NO KEY UPDATE,
    -- which its fenced writes (FOR KEY SHARE) never wait for nor block; the slots
    -- to take FOR UPDATE, which waits out the old owner's writes still running.
    PERFORM 1 FROM orchestrator.partition_leases l
     WHERE l.owner = p_member
     ORDER BY l.slot
       FOR NO KEY UPDATE;
    PERFORM 1 FROM orchestrator.partition_leases l
     WHERE l.slot = ANY (coalesce(p_take, '{}')) AND (l.owner IS NULL OR l.expires_at <= v_now)
     ORDER BY l.slot
       FOR UPDATE;
    INSERT INTO orchestrator.members AS m (member_id, info, started_at, heartbeat_at, expires_at)
    VALUES (p_member, coalesce(p_info, '{}'), v_now, v_now, v_until)
    ON CONFLICT (member_id) DO UPDATE
       SET heartbeat_at = v_now, expires_at = v_until, info = coalesce(p_info, m.info);
    UPDATE orchestrator.partition_leases l
       SET owner = NULL, expires_at = NULL
     WHERE l.owner = p_member
       AND (l.expires_at <= v_now OR NOT l.slot = ANY (coalesce(p_keep, '{}')));
    UPDATE orchestrator.partition_leases l
       SET expires_at = v_until
     WHERE l.owner = p_member;
    WITH taken AS (
        UPDATE orchestrator.partition_leases l
           SET owner = p_member, epoch = l.epoch + 1, taken_at = v_now, expires_at = v_until
         WHERE l.slot = ANY (coalesce(p_take, '{}'))
           AND (l.owner IS NULL OR l.expires_at <= v_now)
        RETURNING l.slot, l.epoch
    )
    INSERT INTO orchestrator.lease_history (slot, epoch, owner, taken_at)
    SELECT t.slot, t.epoch, p_member, v_now FROM taken t;
    RETURN QUERY
        SELECT l.slot, l.epoch, l.taken_at = v_now,
               pg_catalog.date_part('epoch', l.expires_at - pg_catalog.clock_timestamp())
          FROM orchestrator.partition_leases l
         WHERE l.owner = p_member
         ORDER BY l.slot;
END
$$;

-- A member leaving on purpose: its slots are free at once and the others are
-- told, so they take them within a second instead of after the lease's TTL.
CREATE OR REPLACE FUNCTION orchestrator.leave_cluster_v1(p_member text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_released integer;
BEGIN
    UPDATE orchestrator.partition_leases l SET owner = NULL, expires_at = NULL
     WHERE l.owner = p_member;
    GET DIAGNOSTICS v_released = ROW_COUNT;
    DELETE FROM orchestrator.members m WHERE m.member_id = p_member;
    PERFORM pg_catalog.pg_notify('orchestrator_members', p_member);
    RETURN v_released;
END
$$;

-- Forget lease history and departed members older than `p_older_than_s`.
CREATE OR REPLACE FUNCTION orchestrator.prune_lease_history_v1(p_older_than_s double precision)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cutoff timestamptz;
    v_pruned integer;
BEGIN
    IF p_older_than_s IS NULL OR p_older_than_s < 60 THEN
        RAISE EXCEPTION 'keep at least a minute of lease history' USING ERRCODE = 'OR004';
    END IF;
    v_cutoff := pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => p_older_than_s);
    DELETE FROM orchestrator.lease_history h
     WHERE h.taken_at < v_cutoff
       AND h.epoch < (SELECT l.epoch FROM orchestrator.partition_leases l WHERE l.slot = h.slot);
    GET DIAGNOSTICS v_pruned = ROW_COUNT;
    DELETE FROM orchestrator.members m WHERE m.expires_at < v_cutoff;
    RETURN v_pruned;
END
$$;

-- Superseded shapes of the money functions, dropped so no role can reach them.
DROP FUNCTION IF EXISTS orchestrator.admit_job_v1(uuid, bigint, integer, double precision);
DROP FUNCTION IF EXISTS orchestrator.admit_job_v1(uuid, bigint, integer, double precision, bigint);
DROP FUNCTION IF EXISTS orchestrator.admit_job_v2(uuid, double precision, bigint);
DROP FUNCTION IF EXISTS orchestrator.finish_job_v1(uuid, text, text, text, bigint);
DROP FUNCTION IF EXISTS orchestrator.finish_job_v1(uuid, text, text, text, bigint, text[]);
DROP FUNCTION IF EXISTS orchestrator.finish_job_v1(uuid, text, text, text, bigint, jsonb);
DROP FUNCTION IF EXISTS orchestrator.finish_job_v2(uuid, text, text, text, jsonb);
DROP FUNCTION IF EXISTS orchestrator.finish_job_v3(uuid, text, text, text, jsonb, text, bigint);
DROP FUNCTION IF EXISTS orchestrator.reject_job_v1(uuid, text, text);
DROP FUNCTION IF EXISTS orchestrator.record_prediction_v1(uuid, text, text, integer);
DROP FUNCTION IF EXISTS orchestrator.take_intake_epoch_v1();

-- Forget webhook deliveries older than the providers' retry window, oldest
-- first, at most `p_limit` a call; returns how many went. A definer function
-- so the daemon, which may delete nothing itself, prunes only this table.
CREATE OR REPLACE FUNCTION orchestrator.prune_webhook_events_v1(
    p_older_than_s double precision, p_limit integer
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pruned integer;
BEGIN
    IF p_older_than_s IS NULL OR p_older_than_s <= 0 OR p_limit IS NULL OR p_limit <= 0 THEN
        RAISE EXCEPTION 'retention and batch must be positive' USING ERRCODE = 'OR004';
    END IF;
    WITH old AS (
        SELECT e.provider, e.event_id FROM orchestrator.webhook_events e
         WHERE e.received_at < pg_catalog.clock_timestamp()
                               - pg_catalog.make_interval(secs => p_older_than_s)
         ORDER BY e.received_at
         LIMIT p_limit
    )
    DELETE FROM orchestrator.webhook_events w
     USING old WHERE (w.provider, w.event_id) = (old.provider, old.event_id);
    GET DIAGNOSTICS v_pruned = ROW_COUNT;
    RETURN v_pruned;
END
$$;

-- Version 2 of admission and finishing: the database decides every amount.
-- The cost is the plan's price per output times the job's own num_outputs,
-- the seat limit is the plan's, and a refund is what was paid for but not
-- stored. Callers pass ids, a status and a deadline, never credits. These,
-- and the small writes below them, are the only ways the daemon's role
-- changes a job, a balance or the ledger.
CREATE OR REPLACE FUNCTION orchestrator.admit_job_v3(
    p_job_id uuid, p_deadline_s double precision, p_member text, p_epoch bigint
) RETURNS TABLE (outcome text, seat integer, cost bigint, balance bigint,
                 deadline_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_job record;
    v_plan record;
    v_cost bigint;
    v_seat integer;
    v_balance bigint;
    v_deadline timestamptz;
BEGIN
    IF p_deadline_s IS NULL OR p_deadline_s <= 0 THEN
        RAISE EXCEPTION 'the deadline must be positive' USING ERRCODE = 'OR004';
    END IF;
    SELECT j.user_id, j.slot, j.status, j.num_outputs, j.cancel_requested_at INTO v_job
      FROM orchestrator.jobs j WHERE j.id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown job %', p_job_id USING ERRCODE = 'OR002';
    END IF;
    IF v_job.status <> 'queued' THEN
        RETURN QUERY SELECT 'not_queued'::text, NULL::integer, NULL::bigint, NULL::bigint,
                            NULL::timestamptz;
        RETURN;
    END IF;
    IF v_job.cancel_requested_at IS NOT NULL THEN
        RETURN QUERY SELECT 'canceled'::text, NULL::integer, NULL::bigint, NULL::bigint,
                            NULL::timestamptz;
        RETURN;
    END IF;
    PERFORM orchestrator.check_fence_v1(v_job.slot, p_member, p_epoch);
    SELECT p.cost_per_output, p.max_inflight INTO v_plan
      FROM orchestrator.accounts a JOIN orchestrator.plans p ON p.name = a.plan
     WHERE a.user_id = v_job.user_id
       FOR UPDATE OF a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown user %', v_job.user_id USING ERRCODE = 'OR001';
    END IF;
    IF v_job.num_outputs < 1 THEN
        RAISE EXCEPTION 'job % asks for % outputs', p_job_id, v_job.num_outputs
            USING ERRCODE = 'OR004';
    END IF;
    v_cost := v_plan.cost_per_output * v_job.num_outputs;
    SELECT s INTO v_seat FROM pg_catalog.generate_series(1, v_plan.max_inflight) s
     WHERE NOT EXISTS (SELECT 1 FROM orchestrator.jobs j
                        WHERE j.user_id = v_job.user_id AND j.inflight_seat = s)
     ORDER BY s LIMIT 1;
    IF v_seat IS NULL THEN
        RETURN QUERY SELECT 'no_seat'::text, NULL::integer, NULL::bigint, NULL::bigint,
                            NULL::timestamptz;
        RETURN;
    END IF;
    UPDATE orchestrator.accounts a
       SET balance = a.balance - v_cost, last_admitted_at = pg_catalog.clock_timestamp(),
           updated_at = pg_catalog.now()
     WHERE a.user_id = v_job.user_id AND a.balance >= v_cost
    RETURNING a.balance INTO v_balance;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'insufficient_credits'::text, NULL::integer, NULL::bigint,
                            NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    INSERT INTO orchestrator.ledger (user_id, job_id, kind, amount, ref)
    VALUES (v_job.user_id, p_job_id, 'debit', -v_cost, 'debit:' || p_job_id::text);
    UPDATE orchestrator.jobs j
       SET status = 'starting', cost = v_cost, inflight_seat = v_seat, admit_epoch = p_epoch,
           admitted_at = pg_catalog.clock_timestamp(),
           deadline_at = pg_catalog.clock_timestamp()
                         + pg_catalog.make_interval(secs => p_deadline_s),
           updated_at = pg_catalog.clock_timestamp()
     WHERE j.id = p_job_id
    RETURNING j.deadline_at INTO v_deadline;
    RETURN QUERY SELECT 'admitted'::text, v_seat, v_cost, v_balance, v_deadline;
END
$$;

-- End an admitted job. Only a success stores outputs, each under its own index
-- (`idx` in each item of `p_outputs`, never its position in the array: a job whose
-- output 0 failed stores outputs 1 and 2 as 1 and 2); an index outside the job's
-- outputs is never stored. Its refund is the cost of the outputs it asked for and
-- did not store (the unit is the job's own cost over its num_outputs, the price it
-- was admitted at). Any other ending gets the whole debit back. Finishing a
-- finished job is a no-op. The ending's event (and callback) comes from the
-- deferred trigger jobs_append_event, in this same transaction.
CREATE OR REPLACE FUNCTION orchestrator.finish_job_v4(
    p_job_id uuid, p_status text, p_error_code text, p_message text,
    p_outputs jsonb, p_member text, p_epoch bigint
) RETURNS TABLE (status text, refunded bigint, balance bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_job record;
    v_delivered integer;
    v_refund bigint;
    v_balance bigint;
BEGIN
    SELECT j.user_id, j.slot, j.status, j.cost, j.num_outputs INTO v_job
      FROM orchestrator.jobs j WHERE j.id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown job %', p_job_id USING ERRCODE = 'OR002';
    END IF;
    IF v_job.status IN ('succeeded', 'failed', 'timed_out', 'canceled', 'rejected') THEN
        RETURN QUERY SELECT v_job.status, 0::bigint, NULL::bigint;
        RETURN;
    END IF;
    PERFORM orchestrator.check_fence_v1(v_job.slot, p_member, p_epoch);
    IF v_job.status = 'queued' THEN
        RAISE EXCEPTION 'job % was never admitted; reject it instead', p_job_id
            USING ERRCODE = 'OR007';
    END IF;
    IF p_status IS NULL OR p_status NOT IN ('succeeded', 'failed', 'timed_out', 'canceled') THEN
        RAISE EXCEPTION 'cannot finish a job as %', p_status USING ERRCODE = 'OR004';
    END IF;
    IF p_status = 'succeeded' AND p_outputs IS NOT NULL THEN
        IF pg_catalog.jsonb_typeof(p_outputs) <> 'array' OR EXISTS (
               SELECT 1 FROM pg_catalog.jsonb_array_elements(p_outputs) o(item)
                WHERE pg_catalog.jsonb_typeof(o.item -> 'idx') IS DISTINCT FROM 'number') THEN
            RAISE EXCEPTION 'outputs must be an array of objects, each with its idx'
                USING ERRCODE = 'OR004';
        END IF;
        INSERT INTO orchestrator.outputs (job_id, idx, num_outputs, url, path, size_bytes,
                                          sha256, content_type, public_url)
        SELECT p_job_id, (o.item ->> 'idx')::integer, v_job.num_outputs, o.item ->> 'url',
               o.item ->> 'path', (o.item ->> 'size_bytes')::bigint, o.item ->> 'sha256',
               o.item ->> 'content_type', o.item ->> 'public_url'
          FROM pg_catalog.jsonb_array_elements(p_outputs) AS o(item)
         WHERE (o.item ->> 'idx')::integer >= 0
           AND (o.item ->> 'idx')::integer < v_job.num_outputs
        ON CONFLICT (job_id, idx) DO NOTHING;
    END IF;
    SELECT pg_catalog.count(*) INTO v_delivered
      FROM orchestrator.outputs o WHERE o.job_id = p_job_id AND o.deleted_at IS NULL;
    IF p_status = 'succeeded' AND v_delivered = 0 THEN
        RAISE EXCEPTION 'job % cannot succeed without an output', p_job_id
            USING ERRCODE = 'OR004';
    END IF;
    v_refund := CASE WHEN p_status = 'succeeded'
                     THEN v_job.cost - v_delivered * (v_job.cost / v_job.num_outputs)
                     ELSE v_job.cost END;
    IF v_refund > 0 THEN
        INSERT INTO orchestrator.ledger (user_id, job_id, kind, amount, ref)
        VALUES (v_job.user_id, p_job_id, 'refund', v_refund, 'refund:' || p_job_id::text)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            UPDATE orchestrator.accounts a
               SET balance = a.balance + v_refund, updated_at = pg_catalog.now()
             WHERE a.user_id = v_job.user_id
            RETURNING a.balance INTO v_balance;
        ELSE
            v_refund := 0;
        END IF;
    END IF;
    UPDATE orchestrator.jobs j
       SET status = p_status, error_code = p_error_code, error_message = p_message,
           inflight_seat = NULL, partial = (p_status = 'succeeded' AND v_refund > 0),
           finish_epoch = p_epoch, finished_at = pg_catalog.clock_timestamp(),
           updated_at = pg_catalog.clock_timestamp()
     WHERE j.id = p_job_id;
    IF v_balance IS NULL THEN
        SELECT a.balance INTO v_balance FROM orchestrator.accounts a
         WHERE a.user_id = v_job.user_id;
    END IF;
    RETURN QUERY SELECT p_status, v_refund, v_balance;
END
$$;

-- Refuse a queued job at admission, never charged: `rejected` with its code,
-- or `canceled` at cost 0 when a cancel came first. False when no longer queued.
CREATE OR REPLACE FUNCTION orchestrator.reject_job_v2(
    p_job_id uuid, p_error_code text, p_message text, p_member text, p_epoch bigint
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_error_code IS NULL THEN
        RAISE EXCEPTION 'a refused job needs an error code' USING ERRCODE = 'OR004';
    END IF;
    PERFORM orchestrator.check_fence_v1(j.slot, p_member, p_epoch)
       FROM orchestrator.jobs j WHERE j.id = p_job_id AND j.status = 'queued' FOR UPDATE;
    UPDATE orchestrator.jobs
       SET status = CASE WHEN p_error_code = 'CANCELED' THEN 'canceled' ELSE 'rejected' END,
           cost = CASE WHEN p_error_code = 'CANCELED' THEN 0 END,
           error_code = p_error_code, error_message = p_message, finish_epoch = p_epoch,
           finished_at = pg_catalog.clock_timestamp(),
           updated_at = pg_catalog.clock_timestamp()
     WHERE id = p_job_id AND status = 'queued';
    RETURN FOUND;
END
$$;

-- Record output `p_idx`'s prediction the moment the provider names it
-- (Brandur's atomic phase): the job is `processing` and a restart can
-- re-attach. False when the job is no longer in flight.
CREATE OR REPLACE FUNCTION orchestrator.record_prediction_v2(
    p_job_id uuid, p_provider text, p_prediction_id text, p_idx integer,
    p_member text, p_epoch bigint
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_outputs integer;
    v_replaced text;
BEGIN
    PERFORM orchestrator.check_fence_v1(j.slot, p_member, p_epoch)
       FROM orchestrator.jobs j
      WHERE j.id = p_job_id AND j.status IN ('starting', 'processing') FOR UPDATE;
    UPDATE orchestrator.jobs
       SET status = 'processing', provider = p_provider,
           prediction_id = coalesce(prediction_id, p_prediction_id),
           updated_at = pg_catalog.clock_timestamp()
     WHERE id = p_job_id AND status IN ('starting', 'processing')
    RETURNING num_outputs INTO v_outputs;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_idx IS NULL OR p_idx < 0 OR p_idx >= v_outputs THEN
        RAISE EXCEPTION 'output % of job % is out of range', p_idx, p_job_id
            USING ERRCODE = 'OR004';
    END IF;
    SELECT p.prediction_id INTO v_replaced FROM orchestrator.predictions p
     WHERE p.job_id = p_job_id AND p.idx = p_idx FOR UPDATE;
    IF v_replaced IS DISTINCT FROM p_prediction_id AND v_replaced IS NOT NULL THEN
        -- A resubmission: the replaced prediction may still run, so keep it in sight.
        INSERT INTO orchestrator.upstream_predictions (provider, prediction_id, job_id, idx,
                                                        found_by)
        VALUES (p_provider, v_replaced, p_job_id, p_idx, 'replaced')
        ON CONFLICT (provider, prediction_id) DO NOTHING;
    END IF;
    INSERT INTO orchestrator.predictions (job_id, idx, provider, prediction_id, epoch)
    VALUES (p_job_id, p_idx, p_provider, p_prediction_id, p_epoch)
    ON CONFLICT (job_id, idx) DO UPDATE
       SET prediction_id = excluded.prediction_id, epoch = excluded.epoch,
           created_at = excluded.created_at;
    RETURN true;
END
$$;

-- Keep a job's trace context, once: the daemon's root span at admission when the
-- submitter gave none, so whoever resumes the job continues the same trace.
-- Tracing metadata only (no status, no money); fenced like every daemon write.
CREATE OR REPLACE FUNCTION orchestrator.note_traceparent_v1(
    p_job_id uuid, p_traceparent text, p_member text, p_epoch bigint
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM orchestrator.check_fence_v1(j.slot, p_member, p_epoch)
       FROM orchestrator.jobs j
      WHERE j.id = p_job_id AND j.traceparent IS NULL FOR UPDATE;
    UPDATE orchestrator.jobs SET traceparent = p_traceparent
     WHERE id = p_job_id AND traceparent IS NULL;
    RETURN FOUND;
END
$$;

-- What was seen of a prediction upstream (see upstream_predictions). Returns the
-- status seen before this call, so a caller counts a transition exactly once
-- (an undelivered success is counted when first seen, not on every pass).
CREATE OR REPLACE FUNCTION orchestrator.note_upstream_v1(
    p_provider text, p_prediction_id text, p_job_id uuid, p_idx integer,
    p_found_by text, p_status text, p_cancel_sent boolean
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_before text;
BEGIN
    SELECT u.status INTO v_before FROM orchestrator.upstream_predictions u
     WHERE u.provider = p_provider AND u.prediction_id = p_prediction_id FOR UPDATE;
    INSERT INTO orchestrator.upstream_predictions AS u
        (provider, prediction_id, job_id, idx, found_by, status, cancel_sent_at, checked_at)
    VALUES (p_provider, p_prediction_id, p_job_id, p_idx, p_found_by, p_status,
            CASE WHEN p_cancel_sent THEN pg_catalog.clock_timestamp() END,
            CASE WHEN p_status IS NOT NULL THEN pg_catalog.clock_timestamp() END)
    ON CONFLICT (provider, prediction_id) DO UPDATE
       SET status = coalesce(excluded.status, u.status),
           checked_at = coalesce(excluded.checked_at, u.checked_at),
           cancel_sent_at = coalesce(excluded.cancel_sent_at, u.cancel_sent_at);
    RETURN v_before;
END
$$;

-- The event feed's writer: the deferred trigger jobs_append_event runs it at
-- commit for each job the transaction ended (any terminal status), and it appends
-- the event, the callback owed (when the job has a callback_url) and NOTIFY
-- orchestrator_job_events {seq, job_id, status, code} (never a prompt, params or
-- user id: any role may LISTEN on any channel).
--
-- Why a reader resuming after the last seq it read never misses an event: an
-- identity value is taken before commit, so two transactions could commit out of
-- seq order, and a reader that saw seq 11 before seq 10 committed would skip 10.
-- Here the seq is taken only after locking job_event_clock in EXCLUSIVE mode, and
-- that lock is released only after this transaction's commit is visible (Postgres
-- releases locks after it leaves the proc array). So when a transaction takes seq
-- n, every transaction that took a smaller one has committed and is visible, or
-- aborted; any snapshot that sees n sees every smaller committed seq. The feed is
-- a prefix in seq order, gaps only where a transaction rolled back. The lock is
-- held from commit-time trigger to commit, about as long as the NOTIFY queue's own
-- commit lock that every notifying transaction already takes.
CREATE OR REPLACE FUNCTION orchestrator.append_job_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_seq bigint;
BEGIN
    LOCK TABLE orchestrator.job_event_clock IN EXCLUSIVE MODE;
    INSERT INTO orchestrator.job_events (job_id, user_id, status, error_code, finished_at)
    VALUES (NEW.id, NEW.user_id, NEW.status, NEW.error_code,
            coalesce(NEW.finished_at, pg_catalog.clock_timestamp()))
    RETURNING seq INTO v_seq;
    IF NEW.callback_url IS NOT NULL THEN
        INSERT INTO orchestrator.callback_deliveries (seq, job_id, slot, url)
        VALUES (v_seq, NEW.id, NEW.slot, NEW.callback_url);
    END IF;
    PERFORM pg_catalog.pg_notify('orchestrator_job_events', pg_catalog.json_build_object(
        'seq', v_seq, 'job_id', NEW.id, 'status', NEW.status, 'code', NEW.error_code)::text);
    RETURN NULL;
END
$$;

-- The endings after seq `p_after`, at most `p_limit` (1 to 10000) of them, in seq
-- order: a reader keeps the last seq it read and asks again from there (after a
-- NOTIFY, a reconnect or a restart). Raises OR009 when events after `p_after` were
-- pruned already (the retention, ORCHESTRATOR_EVENT_RETENTION): that reader must
-- catch up from orchestrator.jobs, then resume from job_events_head().
CREATE OR REPLACE FUNCTION orchestrator.job_events_after(p_after bigint, p_limit integer)
RETURNS TABLE (seq bigint, job_id uuid, user_id text, status text, error_code text,
               finished_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pruned bigint;
BEGIN
    IF p_after IS NULL OR p_after < 0 OR p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'read after a seq >= 0, at most 1 to 10000 events at a time'
            USING ERRCODE = 'OR004';
    END IF;
    SELECT m.value::bigint INTO v_pruned FROM orchestrator.meta m
     WHERE m.key = 'job_events_pruned_through';
    IF p_after < v_pruned THEN
        RAISE EXCEPTION 'events up to seq % were pruned; catch up from orchestrator.jobs', v_pruned
            USING ERRCODE = 'OR009',
                  HINT = 'then resume after orchestrator.job_events_head()';
    END IF;
    RETURN QUERY
        SELECT e.seq, e.job_id, e.user_id, e.status, e.error_code, e.finished_at
          FROM orchestrator.job_events e
         WHERE e.seq > p_after
         ORDER BY e.seq
         LIMIT p_limit;
END
$$;

-- The newest seq in the feed, where a new reader starts: never below what was pruned
-- (an empty feed after a quiet week still hands out a cursor job_events_after takes),
-- 0 for a feed that never held an event.
CREATE OR REPLACE FUNCTION orchestrator.job_events_head() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
SELECT GREATEST(
    coalesce((SELECT pg_catalog.max(e.seq) FROM orchestrator.job_events e), 0),
    coalesce((SELECT m.value::bigint FROM orchestrator.meta m
               WHERE m.key = 'job_events_pruned_through'), 0));
$$;

-- Forget events and finished callbacks older than `p_older_than_s`, oldest first,
-- at most `p_limit` events a call; an event whose callback is still owed stays.
-- The highest seq forgotten is kept in meta, so job_events_after can tell a reader
-- that it fell behind the retention instead of silently skipping.
CREATE OR REPLACE FUNCTION orchestrator.prune_job_events_v1(
    p_older_than_s double precision, p_limit integer
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seqs bigint[];
    v_pruned integer;
BEGIN
    IF p_older_than_s IS NULL OR p_older_than_s < 60 OR p_limit IS NULL OR p_limit <= 0 THEN
        RAISE EXCEPTION 'keep at least a minute of events, and prune a positive batch'
            USING ERRCODE = 'OR004';
    END IF;
    SELECT pg_catalog.array_agg(old.seq) INTO v_seqs
      FROM (SELECT e.seq FROM orchestrator.job_events e
             WHERE e.created_at < pg_catalog.clock_timestamp()
                                  - pg_catalog.make_interval(secs => p_older_than_s)
               AND NOT EXISTS (SELECT 1 FROM orchestrator.callback_deliveries d
                                WHERE d.seq = e.seq AND d.delivered_at IS NULL
                                  AND d.failed_at IS NULL)
             ORDER BY e.created_at
             LIMIT p_limit) old;
    IF v_seqs IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM orchestrator.callback_deliveries d WHERE d.seq = ANY (v_seqs);
    DELETE FROM orchestrator.job_events e WHERE e.seq = ANY (v_seqs);
    GET DIAGNOSTICS v_pruned = ROW_COUNT;
    INSERT INTO orchestrator.meta AS m (key, value)
    VALUES ('job_events_pruned_through',
            (SELECT pg_catalog.max(x) FROM pg_catalog.unnest(v_seqs) x)::text)
    ON CONFLICT (key) DO UPDATE
       SET value = GREATEST(m.value::bigint, excluded.value::bigint)::text;
    RETURN v_pruned;
END
$$;

-- Take up to `p_limit` callbacks due in the slots `p_member` holds a live lease on,
-- each with its event and stored outputs, for one attempt each: `attempts` counts
-- it and `next_attempt_at` moves `p_claim_s` ahead, so a daemon that dies while
-- sending leaves the callback due again for the slot's next owner. The lease rows
-- are held FOR KEY SHARE, as by every fenced write, so no takeover interleaves.
CREATE OR REPLACE FUNCTION orchestrator.claim_callbacks_v1(
    p_member text, p_limit integer, p_claim_s double precision
) RETURNS TABLE (seq bigint, attempt integer, url text, created_at timestamptz,
                 job_id uuid, user_id text, status text, error_code text,
                 error_message text, finished_at timestamptz, outputs jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := pg_catalog.clock_timestamp();
BEGIN
    IF p_member IS NULL OR p_limit IS NULL OR p_limit <= 0 OR p_claim_s IS NULL
       OR p_claim_s <= 0 THEN
        RAISE EXCEPTION 'a member, a positive batch and a claim time are required'
            USING ERRCODE = 'OR004';
    END IF;
    RETURN QUERY
    WITH due AS (
        SELECT d.seq
          FROM orchestrator.callback_deliveries d
          JOIN orchestrator.partition_leases l ON l.slot = d.slot
         WHERE l.owner = p_member AND l.expires_at > v_now
           AND d.delivered_at IS NULL AND d.failed_at IS NULL AND d.next_attempt_at <= v_now
         ORDER BY d.next_attempt_at
         LIMIT p_limit
           FOR UPDATE OF d SKIP LOCKED
           FOR KEY SHARE OF l
    ), claimed AS (
        UPDATE orchestrator.callback_deliveries d
           SET attempts = d.attempts + 1, last_attempt_at = v_now, claimed_by = p_member,
               next_attempt_at = v_now + pg_catalog.make_interval(secs => p_claim_s)
          FROM due WHERE d.seq = due.seq
        RETURNING d.seq, d.attempts, d.url, d.created_at, d.job_id
    )
    SELECT c.seq, c.attempts, c.url, c.created_at, c.job_id, e.user_id, e.status,
           e.error_code, j.error_message, e.finished_at,
           coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                 'idx', o.idx, 'public_url', o.public_url, 'sha256', o.sha256,
                                 'content_type', o.content_type, 'size_bytes', o.size_bytes)
                             ORDER BY o.idx)
                       FROM orchestrator.outputs o
                      WHERE o.job_id = c.job_id AND o.deleted_at IS NULL), '[]'::jsonb)
      FROM claimed c
      JOIN orchestrator.job_events e ON e.seq = c.seq
      JOIN orchestrator.jobs j ON j.id = c.job_id
     ORDER BY c.seq;
END
$$;

-- What one claimed attempt came to. Delivered is final whoever claimed it (the
-- receiver has it); any other outcome is stored only while `p_attempt` is still
-- the latest claim, so a late answer to an attempt some other owner has since
-- retried never moves that owner's schedule. `p_give_up` ends the retries
-- (`failed_at`); otherwise the next attempt is `p_retry_in_s` from now.
CREATE OR REPLACE FUNCTION orchestrator.record_callback_v1(
    p_seq bigint, p_attempt integer, p_delivered boolean, p_status integer, p_error text,
    p_retry_in_s double precision, p_give_up boolean
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := pg_catalog.clock_timestamp();
BEGIN
    IF p_delivered THEN
        UPDATE orchestrator.callback_deliveries d
           SET delivered_at = v_now, last_status = p_status, last_error = NULL
         WHERE d.seq = p_seq AND d.delivered_at IS NULL AND d.failed_at IS NULL;
        RETURN FOUND;
    END IF;
    UPDATE orchestrator.callback_deliveries d
       SET last_status = p_status, last_error = pg_catalog.left(p_error, 500),
           failed_at = CASE WHEN p_give_up THEN v_now END,
           next_attempt_at = CASE WHEN p_give_up THEN d.next_attempt_at
                                  ELSE v_now + pg_catalog.make_interval(
                                           secs => greatest(coalesce(p_retry_in_s, 0), 0)) END
     WHERE d.seq = p_seq AND d.attempts = p_attempt
       AND d.delivered_at IS NULL AND d.failed_at IS NULL;
    RETURN FOUND;
END
$$;

-- An operator's second chance for a callback given up on: due again now, counted
-- on from its attempts so far. False when it is not failed.
CREATE OR REPLACE FUNCTION orchestrator.redeliver_callback_v1(p_seq bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE orchestrator.callback_deliveries d
       SET failed_at = NULL, next_attempt_at = pg_catalog.clock_timestamp()
     WHERE d.seq = p_seq AND d.failed_at IS NOT NULL;
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION orchestrator.notify_job_inserted() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('orchestrator_jobs_' || NEW.slot::text, NEW.id::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION orchestrator.refuse_ledger_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % refused', TG_OP
        USING ERRCODE = 'OR005',
              HINT = 'correct a balance with an adjust row (orchestrator adjust)';
END
$$;

-- A refund needs a debit of the same job and user, and never exceeds it.
CREATE OR REPLACE FUNCTION orchestrator.check_refund() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_debited bigint;
BEGIN
    SELECT -l.amount INTO v_debited FROM orchestrator.ledger l
     WHERE l.job_id = NEW.job_id AND l.kind = 'debit' AND l.user_id = NEW.user_id;
    IF v_debited IS NULL THEN
        RAISE EXCEPTION 'refund of job % which was never debited', NEW.job_id
            USING ERRCODE = 'OR006';
    END IF;
    IF NEW.amount > v_debited THEN
        RAISE EXCEPTION 'refund % exceeds debit % of job %', NEW.amount, v_debited, NEW.job_id
            USING ERRCODE = 'OR006';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION orchestrator.check_job_inserted() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM orchestrator.check_submission_v1(NEW.user_id, NEW.prompt, NEW.params);
    PERFORM orchestrator.check_callback_url_v1(NEW.callback_url);
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION orchestrator.refuse_job_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.status <> NEW.status
       AND (SELECT s.terminal FROM orchestrator.job_statuses s WHERE s.status = OLD.status) THEN
        RAISE EXCEPTION 'job % is % and cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'OR007';
    END IF;
    IF (OLD.user_id, OLD.prompt, OLD.params, OLD.num_outputs)
       IS DISTINCT FROM (NEW.user_id, NEW.prompt, NEW.params, NEW.num_outputs) THEN
        RAISE EXCEPTION 'the submission of job % is immutable', OLD.id
            USING ERRCODE = 'OR007';
    END IF;
    RETURN NEW;
END
$$;

-- ---------------------------------------------------------------------------
-- Triggers
-- ---------------------------------------------------------------------------

CREATE OR REPLACE TRIGGER jobs_notify_inserted
    AFTER INSERT ON orchestrator.jobs
    FOR EACH ROW EXECUTE FUNCTION orchestrator.notify_job_inserted();

-- Only on INSERT: rows that predate the limits still update (the daemon rejects them).
CREATE OR REPLACE TRIGGER jobs_check_submission
    BEFORE INSERT ON orchestrator.jobs
    FOR EACH ROW EXECUTE FUNCTION orchestrator.check_job_inserted();

-- The WHEN clause is evaluated without entering PL/pgSQL, so ordinary status
-- updates pay nothing for this guard.
CREATE OR REPLACE TRIGGER jobs_refuse_change
    BEFORE UPDATE ON orchestrator.jobs
    FOR EACH ROW
    WHEN (OLD.status IN ('succeeded', 'failed', 'timed_out', 'canceled', 'rejected')
          AND OLD.status IS DISTINCT FROM NEW.status
          OR (OLD.user_id, OLD.prompt, OLD.params, OLD.num_outputs)
             IS DISTINCT FROM (NEW.user_id, NEW.prompt, NEW.params, NEW.num_outputs))
    EXECUTE FUNCTION orchestrator.refuse_job_change();

-- Deferred to commit, so the event's seq is taken as late as possible (see
-- append_job_event); the WHEN clause lets every other update pass for free.
-- Constraint triggers cannot be created OR REPLACE: created once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                    WHERE t.tgrelid = 'orchestrator.jobs'::regclass
                      AND t.tgname = 'jobs_append_event') THEN
        CREATE CONSTRAINT TRIGGER jobs_append_event
            AFTER UPDATE OF status ON orchestrator.jobs
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW
            WHEN (NEW.status IN ('succeeded', 'failed', 'timed_out', 'canceled', 'rejected')
                  AND OLD.status NOT IN ('succeeded', 'failed', 'timed_out', 'canceled',
                                         'rejected'))
            EXECUTE FUNCTION orchestrator.append_job_event();
    END IF;
END
$$;

CREATE OR REPLACE TRIGGER ledger_append_only
    BEFORE UPDATE OR DELETE ON orchestrator.ledger
    FOR EACH ROW EXECUTE FUNCTION orchestrator.refuse_ledger_change();

CREATE OR REPLACE TRIGGER ledger_no_truncate
    BEFORE TRUNCATE ON orchestrator.ledger
    FOR EACH STATEMENT EXECUTE FUNCTION orchestrator.refuse_ledger_change();

CREATE OR REPLACE TRIGGER ledger_check_refund
    BEFORE INSERT ON orchestrator.ledger
    FOR EACH ROW WHEN (NEW.kind = 'refund')
    EXECUTE FUNCTION orchestrator.check_refund();

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------

-- Submitters may submit, cancel and read jobs; they never see or touch
-- balances or the ledger. The roles are created at the top of this file.

REVOKE ALL ON ALL TABLES IN SCHEMA orchestrator FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA orchestrator FROM PUBLIC;
GRANT USAGE ON SCHEMA orchestrator TO submitter;
GRANT SELECT ON orchestrator.jobs, orchestrator.job_statuses, orchestrator.error_codes,
    orchestrator.outputs TO submitter;
GRANT INSERT (user_id, prompt, params, num_outputs, idempotency_key, traceparent,
               callback_url)
    ON orchestrator.jobs TO submitter;
GRANT EXECUTE ON FUNCTION
    orchestrator.submit_job(text, text, jsonb, integer, text, text, text),
    orchestrator.submit_jobs(jsonb),
    orchestrator.request_cancel(uuid),
    orchestrator.check_submission_v1(text, text, jsonb),
    orchestrator.check_callback_url_v1(text),
    orchestrator.job_events_after(bigint, integer),
    orchestrator.job_events_head()
    TO submitter;
-- A job's slot is generated at INSERT from the user id; every role may compute it.
GRANT EXECUTE ON FUNCTION orchestrator.slot_of(text)
    TO submitter, orchestrator_daemon, orchestrator_operator;

-- The daemon reads everything it decides on, records webhook deliveries, and
-- changes jobs, balances and the ledger only through the functions below; it
-- may not update, delete, truncate or touch triggers (it owns nothing).
GRANT USAGE ON SCHEMA orchestrator TO orchestrator_daemon;
GRANT SELECT ON ALL TABLES IN SCHEMA orchestrator TO orchestrator_daemon;
GRANT INSERT ON orchestrator.webhook_events TO orchestrator_daemon;
GRANT EXECUTE ON FUNCTION
    orchestrator.admit_job_v3(uuid, double precision, text, bigint),
    orchestrator.finish_job_v4(uuid, text, text, text, jsonb, text, bigint),
    orchestrator.reject_job_v2(uuid, text, text, text, bigint),
    orchestrator.record_prediction_v2(uuid, text, text, integer, text, bigint),
    orchestrator.note_upstream_v1(text, text, uuid, integer, text, text, boolean),
    orchestrator.note_traceparent_v1(uuid, text, text, bigint),
    orchestrator.lease_round_v1(text, double precision, integer[], integer[], jsonb),
    orchestrator.leave_cluster_v1(text),
    orchestrator.prune_lease_history_v1(double precision),
    orchestrator.job_events_after(bigint, integer),
    orchestrator.job_events_head(),
    orchestrator.prune_job_events_v1(double precision, integer),
    orchestrator.claim_callbacks_v1(text, integer, double precision),
    orchestrator.record_callback_v1(bigint, integer, boolean, integer, text,
                                    double precision, boolean)
    TO orchestrator_daemon;

-- Webhook pruning: the daemon forgets old deliveries through this function only.
GRANT EXECUTE ON FUNCTION orchestrator.prune_webhook_events_v1(double precision, integer)
    TO orchestrator_daemon;

-- Operators (the CLI) grant, adjust and refund through the functions above,
-- submit and cancel as a submitter would, move plans, mark stored outputs
-- deleted and audit; they never write a balance or the
-- ledger directly, nor a job's status or cost.
GRANT USAGE ON SCHEMA orchestrator TO orchestrator_operator;
GRANT SELECT ON ALL TABLES IN SCHEMA orchestrator TO orchestrator_operator;
GRANT UPDATE (plan, updated_at) ON orchestrator.accounts TO orchestrator_operator;
GRANT UPDATE (deleted_at) ON orchestrator.outputs TO orchestrator_operator;
GRANT EXECUTE ON FUNCTION
    orchestrator.grant_credits(text, bigint, text),
    orchestrator.adjust_balance_v1(text, bigint, text, text),
    orchestrator.refund_job_v1(uuid, bigint),
    orchestrator.submit_job(text, text, jsonb, integer, text, text, text),
    orchestrator.submit_jobs(jsonb),
    orchestrator.retry_job_v1(uuid, text),
    orchestrator.job_events_after(bigint, integer),
    orchestrator.job_events_head(),
    orchestrator.redeliver_callback_v1(bigint),
    orchestrator.request_cancel(uuid),
    orchestrator.note_upstream_v1(text, text, uuid, integer, text, text, boolean)
    TO orchestrator_operator;

-- The feed's commit-order lock is the owner's alone. The grants on all tables above
-- include it; taken back, no login can lock it in a mode that conflicts with the
-- trigger's EXCLUSIVE (ROW EXCLUSIVE needs a write privilege, FOR UPDATE too) and
-- stall every ending.
REVOKE ALL ON orchestrator.job_event_clock FROM orchestrator_daemon, orchestrator_operator;

-- Ownership: the schema and everything in it belong to orchestrator_owner, so
-- a SECURITY DEFINER function runs with the schema's rights and never with
-- those of whoever migrated (a superuser in embedded mode). A migrating login
-- that is no superuser must be able to act as that role.
DO $$
DECLARE
    v_object record;
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'orchestrator_owner', 'SET') THEN
        EXECUTE pg_catalog.format('GRANT orchestrator_owner TO %I', current_user);
    END IF;
    ALTER SCHEMA orchestrator OWNER TO orchestrator_owner;
    FOR v_object IN
        SELECT c.relname, c.relkind FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'orchestrator'::regnamespace
           AND c.relkind IN ('r', 'v', 'm', 'p')
           AND c.relowner <> 'orchestrator_owner'::regrole
    LOOP
        EXECUTE pg_catalog.format(
            CASE v_object.relkind WHEN 'v' THEN 'ALTER VIEW orchestrator.%I OWNER TO orchestrator_owner'
                                  WHEN 'm' THEN 'ALTER MATERIALIZED VIEW orchestrator.%I OWNER TO orchestrator_owner'
                                  ELSE 'ALTER TABLE orchestrator.%I OWNER TO orchestrator_owner' END,
            v_object.relname);
    END LOOP;
    FOR v_object IN
        SELECT p.oid::regprocedure AS signature FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'orchestrator'::regnamespace
           AND p.proowner <> 'orchestrator_owner'::regrole
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO orchestrator_owner',
                                  v_object.signature);
    END LOOP;
END
$$;
