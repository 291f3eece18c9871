-- Every SQL statement the orchestrator runs, one named block each.
--
-- Format: a block starts with `-- name: <identifier>` followed by one comment
-- line saying what the statement is for; the statement runs until the next
-- block. A `-- fragment: <identifier>` block is a column list written once and
-- used as `{{identifier}}` (or `{{alias.identifier}}`, every column prefixed).
-- `orchestrator/db/_queries.py` loads them once; no SQL lives anywhere else in
-- the Python code.

-- fragment: job_columns
-- A job's columns as `_rows.job` decodes them.
id, user_id, prompt, params, num_outputs, status, cost, error_code, error_message,
idempotency_key, prediction_id, deadline_at, cancel_requested_at, partial, created_at,
updated_at, admitted_at, finished_at, slot, retry_of, traceparent, callback_url

-- name: schema_version
-- The stamp migrate leaves, to tell whether the database matches this code.
SELECT value FROM orchestrator.meta WHERE key = 'schema_sha256';

-- name: stamp_schema_version
-- Record which schema.sql was applied last.
INSERT INTO orchestrator.meta (key, value) VALUES ('schema_sha256', $1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: migration_lock
-- Serialize concurrent migrations (daemons starting together) for this transaction.
SELECT pg_advisory_xact_lock(hashtext('orchestrator.migrate'));

-- name: grant_credits
-- Grant credits through the SQL function, so submit-side tools and we share one path.
SELECT orchestrator.grant_credits($1, $2, $3);

-- name: set_plan
-- Move an account to a plan.
UPDATE orchestrator.accounts SET plan = $2, updated_at = now()
 WHERE user_id = $1
RETURNING user_id;

-- name: plan_exists
-- Whether a plan of this name exists.
SELECT EXISTS (SELECT 1 FROM orchestrator.plans WHERE name = $1);

-- name: adjust_balance
-- A manual correction: the only way an operator changes a balance, as a ledger row.
SELECT orchestrator.adjust_balance_v1($1, $2, $3, $4);

-- name: debit_account
-- Take the cost only if the balance covers it, with its ledger row, in one
-- statement; no row back means refused (the caller must check).
WITH debited AS (
    UPDATE orchestrator.accounts
       SET balance = balance - $3, updated_at = now()
     WHERE user_id = $1 AND balance >= $3
    RETURNING user_id, balance
), entry AS (
    INSERT INTO orchestrator.ledger (user_id, job_id, kind, amount, ref)
    SELECT user_id, $2::uuid, 'debit', -$3, 'debit:' || $2::uuid::text FROM debited
    RETURNING id
)
SELECT balance FROM debited, entry;

-- name: refund_job
-- An operator's refund of a finished job, once; no row when nothing was refunded.
SELECT amount, balance FROM orchestrator.refund_job_v1($1, $2);

-- name: admission_context
-- Everything admission decides on, in one read: the job, its account and plan
-- (with its priority, the user's weight in the fair order beyond capacity),
-- the user's jobs in flight, this month's generations, and whether an
-- identical job is in flight or queued ahead of this one.
SELECT {{j.job_columns}},
       a.balance, a.plan, a.last_admitted_at,
       p.monthly_generations, p.max_inflight, p.min_seconds_between, p.cost_per_output,
       p.priority,
       (SELECT count(*) FROM orchestrator.jobs i
         WHERE i.user_id = j.user_id AND i.inflight_seat IS NOT NULL) AS in_flight,
       (SELECT coalesce(sum(m.num_outputs), 0) FROM orchestrator.jobs m
         WHERE m.user_id = j.user_id AND m.admitted_at >= date_trunc('month', now())
           AND m.status IN ({{statuses:month_usage}})) AS month_generations,
       EXISTS (
           SELECT 1 FROM orchestrator.jobs d
            WHERE d.user_id = j.user_id AND d.fingerprint = j.fingerprint AND d.id <> j.id
              AND d.status IN ({{statuses:active}})
              AND d.prompt = j.prompt AND d.params = j.params AND d.num_outputs = j.num_outputs
              AND (d.status <> 'queued' OR (d.created_at, d.id) < (j.created_at, j.id))
       ) AS duplicate,
       clock_timestamp() AS now
  FROM orchestrator.jobs j
  LEFT JOIN orchestrator.accounts a ON a.user_id = j.user_id
  LEFT JOIN orchestrator.plans p ON p.name = a.plan
 WHERE j.id = $1;

-- name: admit_job
-- Seat, debit at the plan's price, ledger row and `starting`, in one
-- transaction fenced by the slot's lease (see admit_job_v3); the caller names
-- no amount.
SELECT outcome, seat, cost, balance,
       extract(epoch FROM deadline_at - clock_timestamp())::float8 AS deadline_s
  FROM orchestrator.admit_job_v3($1, $2, $3, $4);

-- name: note_traceparent
-- Keep the root span's trace context on a job that has none (see note_traceparent_v1).
SELECT orchestrator.note_traceparent_v1($1, $2, $3, $4);

-- name: reject_job
-- A queued job refused at admission, never charged (see reject_job_v2).
SELECT orchestrator.reject_job_v2($1, $2, $3, $4, $5);

-- name: finish_job
-- Outputs (each under its own idx), terminal status, seat release, the refund the
-- database computes from what was stored, and the ending's event, in one
-- transaction (see finish_job_v4).
SELECT status, refunded, balance FROM orchestrator.finish_job_v4($1, $2, $3, $4, $5, $6, $7);

-- name: finish_jobs
-- Several finishes in one statement (group commit): $1 is a JSON array of
-- {id, status, code, message, outputs, member, epoch}; one row back per item,
-- in order.
SELECT f.status, f.refunded, f.balance
  FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS a (item, n)
 CROSS JOIN LATERAL orchestrator.finish_job_v4(
           (a.item ->> 'id')::uuid, a.item ->> 'status', a.item ->> 'code',
           a.item ->> 'message',
           CASE WHEN jsonb_typeof(a.item -> 'outputs') = 'array' THEN a.item -> 'outputs' END,
           a.item ->> 'member', (a.item ->> 'epoch')::bigint
       ) AS f
 ORDER BY a.n;

-- name: mark_processing
-- Record a prediction the moment the provider names it (see record_prediction_v2).
SELECT orchestrator.record_prediction_v2($1, $2, $3, $4, $5, $6);

-- name: route_jobs
-- Who owns each notified job and what it needs: admission or a cancel.
SELECT id, user_id, slot, status, cancel_requested_at IS NOT NULL AS cancel_requested
  FROM orchestrator.jobs
 WHERE id = ANY($1::uuid[]);

-- name: queued_jobs
-- Catch-up scan: queued jobs (their notification may have been lost), and
-- in-flight jobs whose cancellation was requested. Fair across users: each
-- user's oldest first, then everyone's second, and so on, at most $2 per user,
-- so one user's backlog of thousands hides nobody else's job. Only the slots
-- in $3 (this daemon's).
SELECT id, user_id, slot, status, cancel_requested
  FROM (SELECT id, user_id, slot, status, created_at,
               cancel_requested_at IS NOT NULL AS cancel_requested,
               row_number() OVER (PARTITION BY user_id ORDER BY created_at, id) AS turn
          FROM orchestrator.jobs
         WHERE slot = ANY($3::integer[])
           AND (status = 'queued'
                OR (status IN ({{statuses:in_flight}}) AND cancel_requested_at IS NOT NULL))
       ) pending
 WHERE turn <= $2
 ORDER BY turn, created_at, id
 LIMIT $1;

-- name: in_flight_jobs
-- Recovery when a daemon takes slots ($1): every job of theirs left between
-- admission and its end, by whoever held them before.
SELECT id, user_id, slot, status, cancel_requested_at IS NOT NULL AS cancel_requested
  FROM orchestrator.jobs
 WHERE slot = ANY($1::integer[]) AND status IN ({{statuses:in_flight}})
 ORDER BY created_at, id;

-- name: in_flight_job
-- One in-flight job with the seconds left before its deadline (negative when past),
-- measured on the database's clock, the same clock that set the deadline, and the
-- provider its predictions were recorded on.
SELECT {{job_columns}},
       extract(epoch FROM deadline_at - clock_timestamp())::float8 AS remaining_s,
       j.provider AS recorded_provider,
       (SELECT coalesce(jsonb_object_agg(p.idx::text, p.prediction_id), '{}'::jsonb)
          FROM orchestrator.predictions p WHERE p.job_id = j.id) AS predictions,
       (SELECT coalesce(jsonb_object_agg(r.idx::text, r.n), '{}'::jsonb)
          FROM (SELECT u.idx, count(*) AS n FROM orchestrator.upstream_predictions u
                 WHERE u.job_id = j.id AND u.found_by = 'replaced' GROUP BY u.idx) r
       ) AS replaced
  FROM orchestrator.jobs j
 WHERE id = $1 AND status IN ({{statuses:in_flight}});

-- name: stuck_jobs
-- Jobs the sweeper ends: queued longer than the stuck limit, or in flight that
-- long past their deadline (not past their submission: a backlog admitted
-- after an outage is not stuck), with every prediction to cancel upstream.
SELECT j.id, j.user_id, j.slot, j.status,
       j.cancel_requested_at IS NOT NULL AS cancel_requested,
       coalesce((SELECT array_agg(p.prediction_id ORDER BY p.idx) FROM orchestrator.predictions p
                  WHERE p.job_id = j.id), '{}') AS prediction_ids,
       coalesce((SELECT array_agg(p.provider ORDER BY p.idx) FROM orchestrator.predictions p
                  WHERE p.job_id = j.id), '{}') AS prediction_providers
  FROM orchestrator.jobs j
 WHERE j.slot = ANY($3::integer[])
   AND ((j.status = 'queued' AND j.created_at < clock_timestamp() - make_interval(secs => $1))
        OR (j.status IN ({{statuses:in_flight}})
            AND coalesce(j.deadline_at, j.created_at)
                < clock_timestamp() - make_interval(secs => $1)))
 ORDER BY j.created_at
 LIMIT $2;

-- name: orphaned_jobs
-- In-flight jobs well past their deadline: whatever ran them is gone (a crash,
-- a lost settle), so their slot's owner resumes them to settle and refund.
SELECT id, user_id, slot, status, cancel_requested_at IS NOT NULL AS cancel_requested
  FROM orchestrator.jobs
 WHERE slot = ANY($3::integer[]) AND status IN ({{statuses:in_flight}})
   AND deadline_at < clock_timestamp() - make_interval(secs => $1)
 ORDER BY deadline_at
 LIMIT $2;

-- name: set_role
-- SET ROLE with the role as a parameter: the session acts as $1 from now on.
SELECT pg_catalog.set_config('role', $1, false);

-- name: ping
-- Readiness: the database answers.
SELECT 1;

-- name: record_webhook_event
-- Remember a webhook delivery; no row back means it was processed before.
INSERT INTO orchestrator.webhook_events (provider, event_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING event_id;

-- name: webhook_delivery
-- A webhook in one round trip: the job it names ($1), and whether this delivery
-- (provider $2, event $3) is new. It is remembered only when the job has the
-- output ($4) it is for, so a bad index can be refused and resent.
WITH job AS (
    SELECT {{job_columns}}
      FROM orchestrator.jobs
     WHERE id = $1
), fresh AS (
    INSERT INTO orchestrator.webhook_events (provider, event_id)
    SELECT $2, $3 FROM job WHERE $4 < job.num_outputs
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT job.*, EXISTS (SELECT 1 FROM fresh) AS fresh FROM job;

-- name: prune_webhook_events
-- Forget deliveries past the providers' retry window (see prune_webhook_events_v1).
SELECT orchestrator.prune_webhook_events_v1($1, $2);

-- name: stored_outputs
-- A finished job's stored outputs that were not deleted yet, for `orchestrator delete`.
SELECT o.idx, o.path
  FROM orchestrator.outputs o
  JOIN orchestrator.jobs j ON j.id = o.job_id
 WHERE o.job_id = $1 AND o.deleted_at IS NULL AND o.path IS NOT NULL
   AND j.status IN ({{statuses:terminal}});

-- name: soft_delete_outputs
-- Mark a job's outputs deleted once their files are gone; the rows stay for the audit.
UPDATE orchestrator.outputs SET deleted_at = clock_timestamp()
 WHERE job_id = $1 AND deleted_at IS NULL
RETURNING idx;

-- name: lease_round
-- Heartbeat, give up, renew and take slots in one statement (see lease_round_v1).
SELECT slot, epoch, taken, valid_s FROM orchestrator.lease_round_v1($1, $2, $3, $4, $5);

-- name: live_members
-- The members whose heartbeat has not expired, on the database's clock, and
-- how many slots nobody holds a live lease on.
SELECT coalesce(array_agg(m.member_id ORDER BY m.member_id), '{}') AS members,
       (SELECT count(*) FROM orchestrator.partition_leases l
         WHERE l.owner IS NULL OR l.expires_at <= clock_timestamp()) AS unowned
  FROM orchestrator.members m
 WHERE m.expires_at > clock_timestamp();

-- name: leave_cluster
-- Free every slot of a member and tell the others (see leave_cluster_v1).
SELECT orchestrator.leave_cluster_v1($1);

-- name: prune_lease_history
-- Forget old lease history and departed members (see prune_lease_history_v1).
SELECT orchestrator.prune_lease_history_v1($1);

-- name: notify_slot
-- Wake the owner of a job's slot for a webhook that reached another daemon:
-- `wake:<job id>`, so the owner polls it now (or resumes it).
SELECT pg_notify('orchestrator_jobs_' || slot::text, 'wake:' || id::text)
  FROM orchestrator.jobs WHERE id = $1;

-- name: cluster_members
-- `orchestrator cluster`: every member, live or not, with the slots it holds
-- and the queue of those slots.
SELECT m.member_id, m.info, m.started_at, m.heartbeat_at,
       m.expires_at > clock_timestamp() AS alive,
       extract(epoch FROM clock_timestamp() - m.heartbeat_at)::float8 AS heartbeat_age_s,
       coalesce(array_agg(l.slot ORDER BY l.slot) FILTER (WHERE l.slot IS NOT NULL), '{}')
           AS slots,
       coalesce(max(l.epoch), 0) AS max_epoch
  FROM orchestrator.members m
  LEFT JOIN orchestrator.partition_leases l
         ON l.owner = m.member_id AND l.expires_at > clock_timestamp()
 GROUP BY m.member_id
 ORDER BY m.member_id;

-- name: cluster_slots
-- Per owner (NULL: unowned or expired): slots, the highest epoch, and the
-- jobs of those slots that are queued or in flight, with the oldest queued.
WITH owned AS (
    SELECT l.slot, l.epoch,
           CASE WHEN l.expires_at > clock_timestamp() THEN l.owner END AS owner
      FROM orchestrator.partition_leases l
), work AS (
    SELECT j.slot, count(*) FILTER (WHERE j.status = 'queued') AS queued,
           count(*) FILTER (WHERE j.status IN ({{statuses:in_flight}})) AS in_flight,
           min(j.created_at) FILTER (WHERE j.status = 'queued') AS oldest_queued
      FROM orchestrator.jobs j
     WHERE j.status IN ({{statuses:active}})
     GROUP BY j.slot
)
SELECT o.owner, count(*) AS slots, max(o.epoch) AS max_epoch,
       coalesce(sum(w.queued), 0)::bigint AS queued,
       coalesce(sum(w.in_flight), 0)::bigint AS in_flight,
       extract(epoch FROM clock_timestamp() - min(w.oldest_queued))::float8 AS oldest_queued_s
  FROM owned o LEFT JOIN work w ON w.slot = o.slot
 GROUP BY o.owner
 ORDER BY o.owner NULLS LAST;

-- name: get_account
-- One account with its plan.
SELECT user_id, balance, plan FROM orchestrator.accounts WHERE user_id = $1;

-- name: submit_job
-- Submit through the SQL function (idempotency and NOTIFY live there).
SELECT orchestrator.submit_job($1, $2, $3, $4, $5, $6, $7);

-- name: submit_jobs
-- Many submissions in one round trip (see submit_jobs): one row per item, in order.
SELECT ordinal, job_id, code, message FROM orchestrator.submit_jobs($1::jsonb)
 ORDER BY ordinal;

-- name: retry_job
-- A failed or timed-out job submitted again as a new job linked to it (see retry_job_v1).
SELECT orchestrator.retry_job_v1($1, $2);

-- name: request_cancel
-- Ask for cancellation; false when the job is already terminal.
SELECT orchestrator.request_cancel($1);

-- name: get_job
-- One job by id.
SELECT {{job_columns}}
  FROM orchestrator.jobs
 WHERE id = $1;

-- name: list_jobs
-- Newest jobs first, of one user or of everyone ($1 null).
SELECT {{job_columns}}
  FROM orchestrator.jobs
 WHERE $1::text IS NULL OR user_id = $1
 ORDER BY created_at DESC, id DESC
 LIMIT $2;

-- name: account_summaries
-- Per user: balance, plan, credits debited and refunded, jobs by status, and
-- how long the oldest queued job has waited (the queue, shown honestly).
SELECT a.user_id, a.balance, a.plan,
       coalesce(l.debited, 0) AS debited,
       coalesce(l.refunded, 0) AS refunded,
       coalesce(j.by_status, '{}'::jsonb) AS jobs_by_status,
       q.oldest_queued_s
  FROM orchestrator.accounts a
  LEFT JOIN LATERAL (
      SELECT (-sum(amount) FILTER (WHERE kind = 'debit'))::bigint AS debited,
             (sum(amount) FILTER (WHERE kind = 'refund'))::bigint AS refunded
        FROM orchestrator.ledger WHERE user_id = a.user_id
  ) l ON true
  LEFT JOIN LATERAL (
      SELECT jsonb_object_agg(status, n) AS by_status
        FROM (SELECT status, count(*) AS n FROM orchestrator.jobs
               WHERE user_id = a.user_id GROUP BY status) s
  ) j ON true
  LEFT JOIN LATERAL (
      SELECT extract(epoch FROM clock_timestamp() - min(created_at))::float8
             AS oldest_queued_s
        FROM orchestrator.jobs WHERE user_id = a.user_id AND status = 'queued'
  ) q ON true
 WHERE $1::text IS NULL OR a.user_id = $1
 ORDER BY a.user_id;

-- name: audit_balance_matches_ledger
-- Violations of: every balance equals the sum of its ledger rows.
SELECT a.user_id, a.balance, coalesce(sum(l.amount), 0) AS ledger_sum
  FROM orchestrator.accounts a
  LEFT JOIN orchestrator.ledger l ON l.user_id = a.user_id
 GROUP BY a.user_id, a.balance
HAVING a.balance <> coalesce(sum(l.amount), 0);

-- name: audit_no_negative_balance
-- Violations of: no balance is negative.
SELECT user_id, balance FROM orchestrator.accounts WHERE balance < 0;

-- name: audit_one_debit_and_refund_per_job
-- Violations of: a job has at most one debit and at most one refund.
SELECT job_id, kind, count(*) AS n
  FROM orchestrator.ledger
 WHERE kind IN ('debit', 'refund')
 GROUP BY job_id, kind
HAVING count(*) > 1;

-- name: audit_refund_within_debit
-- Violations of: a refund has a debit of the same job and user, and is not larger.
SELECT r.job_id, r.amount AS refunded, -d.amount AS debited
  FROM orchestrator.ledger r
  LEFT JOIN orchestrator.ledger d
    ON d.job_id = r.job_id AND d.kind = 'debit' AND d.user_id = r.user_id
 WHERE r.kind = 'refund' AND (d.id IS NULL OR r.amount > -d.amount);

-- name: audit_rejected_jobs_uncharged
-- Violations of: a rejected or still queued job has no ledger row.
SELECT j.id AS job_id, j.status, l.kind
  FROM orchestrator.jobs j
  JOIN orchestrator.ledger l ON l.job_id = j.id
 WHERE j.status IN ({{statuses:uncharged}});

-- name: audit_admitted_jobs_debited
-- Violations of: a job that was admitted carries exactly its cost as a debit.
SELECT j.id AS job_id, j.status, j.cost, -d.amount AS debited
  FROM orchestrator.jobs j
  LEFT JOIN orchestrator.ledger d ON d.job_id = j.id AND d.kind = 'debit'
 WHERE j.status NOT IN ({{statuses:uncharged}})
   AND j.cost > 0
   AND (d.id IS NULL OR -d.amount <> j.cost);

-- name: audit_failed_jobs_refunded
-- Violations of: a debited job that ended without success got all its credits back.
SELECT j.id AS job_id, j.status, -d.amount AS debited, coalesce(r.amount, 0) AS refunded
  FROM orchestrator.jobs j
  JOIN orchestrator.ledger d ON d.job_id = j.id AND d.kind = 'debit'
  LEFT JOIN orchestrator.ledger r ON r.job_id = j.id AND r.kind = 'refund'
 WHERE j.status IN ({{statuses:refunded_whole}})
   AND coalesce(r.amount, 0) <> -d.amount;

-- name: audit_outputs_within_num_outputs
-- Violations of: no job holds more outputs than it asked for.
SELECT o.job_id, count(*) AS outputs, j.num_outputs
  FROM orchestrator.outputs o
  JOIN orchestrator.jobs j ON j.id = o.job_id
 GROUP BY o.job_id, j.num_outputs
HAVING count(*) > j.num_outputs OR max(o.idx) >= j.num_outputs;

-- name: audit_totals
-- Figures for the audit report's header.
SELECT (SELECT count(*) FROM orchestrator.accounts) AS accounts,
       (SELECT count(*) FROM orchestrator.ledger) AS ledger_rows,
       (SELECT count(*) FROM orchestrator.jobs) AS jobs,
       (SELECT coalesce(sum(balance), 0)::bigint FROM orchestrator.accounts) AS balances;

-- name: upstream_to_check
-- Reconciliation's work: predictions recorded on jobs that ended (within $1
-- seconds) without that output, and every stray we know of, unless already
-- seen terminal upstream. At most $2.
SELECT c.provider, c.prediction_id, c.job_id, c.idx, c.found_by
  FROM (SELECT p.provider, p.prediction_id, p.job_id, p.idx, 'recorded' AS found_by
          FROM orchestrator.jobs j
          JOIN orchestrator.predictions p ON p.job_id = j.id
         WHERE j.finished_at > clock_timestamp() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM orchestrator.outputs o
                            WHERE o.job_id = p.job_id AND o.idx = p.idx)
        UNION ALL
        SELECT u.provider, u.prediction_id, u.job_id, u.idx, u.found_by
          FROM orchestrator.upstream_predictions u
         WHERE u.found_by <> 'recorded'
           AND (u.status IS NULL OR u.status IN ('starting', 'processing'))
           AND u.created_at > clock_timestamp() - make_interval(secs => $1)) c
 WHERE NOT EXISTS (SELECT 1 FROM orchestrator.upstream_predictions s
                    WHERE s.provider = c.provider AND s.prediction_id = c.prediction_id
                      AND s.status IN ('succeeded', 'failed', 'canceled', 'aborted'))
 LIMIT $2;

-- name: listed_claims
-- For predictions provider $1 listed with our tag ($2 ids, $3 jobs, $4 outputs):
-- the job's status, the id recorded for that output, and whether it is tracked.
SELECT l.prediction_id, l.job_id, l.idx, j.status, p.prediction_id AS recorded,
       EXISTS (SELECT 1 FROM orchestrator.upstream_predictions u
                WHERE u.provider = $1 AND u.prediction_id = l.prediction_id) AS noted
  FROM unnest($2::text[], $3::uuid[], $4::integer[]) AS l (prediction_id, job_id, idx)
  LEFT JOIN orchestrator.jobs j ON j.id = l.job_id
  LEFT JOIN orchestrator.predictions p ON p.job_id = l.job_id AND p.idx = l.idx;

-- name: note_upstream
-- What was seen of a prediction upstream; returns the status seen before.
SELECT orchestrator.note_upstream_v1($1, $2, $3, $4, $5, $6, $7);

-- name: ui_jobs
-- The web view's job list, newest first: filtered by user ($1), status ($2) and
-- error code ($3), each null for any; $4 a job id to page from (the rows older
-- than it), $5 the page size (the caller bounds it).
SELECT {{job_columns}}
  FROM orchestrator.jobs
 WHERE ($1::text IS NULL OR user_id = $1)
   AND ($2::text IS NULL OR status = $2)
   AND ($3::text IS NULL OR error_code = $3)
   AND ($4::uuid IS NULL
        OR (created_at, id) < (SELECT c.created_at, c.id FROM orchestrator.jobs c WHERE c.id = $4))
 ORDER BY created_at DESC, id DESC
 LIMIT $5;

-- name: ui_job
-- One job for the web view's timeline, with its provider and the lease epochs
-- it was admitted and ended under (one row: the primary key).
SELECT {{job_columns}}, provider, admit_epoch, finish_epoch
  FROM orchestrator.jobs
 WHERE id = $1
 LIMIT 1;

-- name: ui_job_predictions
-- A job's recorded predictions, by output index (at most num_outputs of them).
SELECT idx, provider, prediction_id, epoch, created_at
  FROM orchestrator.predictions
 WHERE job_id = $1
 ORDER BY idx
 LIMIT $2;

-- name: ui_job_upstream
-- Predictions that ran for a job without delivering to it, as reconciliation saw them.
SELECT provider, prediction_id, idx, found_by, status, cancel_sent_at, checked_at, created_at
  FROM orchestrator.upstream_predictions
 WHERE job_id = $1
 ORDER BY created_at, prediction_id
 LIMIT $2;

-- name: ui_job_outputs
-- A job's stored outputs, deleted ones included (their rows stay for the audit).
SELECT idx, url, path, size_bytes, sha256, content_type, public_url, created_at, deleted_at
  FROM orchestrator.outputs
 WHERE job_id = $1
 ORDER BY idx
 LIMIT $2;

-- name: ui_job_ledger
-- The ledger rows of one job: its debit and its refund, if any (a job's rows are
-- only these two kinds; each is read through its own unique partial index).
SELECT id, user_id, job_id, kind, amount, ref, note, created_at
  FROM (SELECT * FROM orchestrator.ledger WHERE job_id = $1 AND kind = 'debit'
        UNION ALL
        SELECT * FROM orchestrator.ledger WHERE job_id = $1 AND kind = 'refund') rows
 ORDER BY id
 LIMIT $2;

-- name: ui_user_ledger
-- One user's ledger, newest first, at most $2 rows.
SELECT id, user_id, job_id, kind, amount, ref, note, created_at
  FROM orchestrator.ledger
 WHERE user_id = $1
 ORDER BY id DESC
 LIMIT $2;
-- name: top_jobs_by_status
-- `orchestrator top`: the jobs not ended yet, by status (served by jobs_active_idx;
-- ended jobs are counted per minute from jobs_finished_idx, never the whole table).
SELECT status, count(*)::bigint AS n
  FROM orchestrator.jobs
 WHERE status IN ({{statuses:active}})
 GROUP BY status
 ORDER BY status;

-- name: top_finished_by_status
-- `orchestrator top`: jobs that ended in the last minute and the last $1 minutes,
-- by status (served by jobs_finished_idx).
SELECT status,
       count(*) FILTER (WHERE finished_at >= clock_timestamp() - interval '1 minute')::bigint
           AS last_minute,
       count(*)::bigint AS in_window
  FROM orchestrator.jobs
 WHERE finished_at >= clock_timestamp() - make_interval(mins => $1)
 GROUP BY status
 ORDER BY status;

-- name: top_refunds
-- `orchestrator top`: refunds in the ledger in the last minute and the last $1
-- minutes, with their credits; only the newest $2 ledger rows are scanned.
SELECT count(*) FILTER (WHERE created_at >= clock_timestamp() - interval '1 minute')::bigint
           AS last_minute,
       coalesce(sum(amount) FILTER (
           WHERE created_at >= clock_timestamp() - interval '1 minute'), 0)::bigint
           AS credits_last_minute,
       count(*)::bigint AS in_window,
       coalesce(sum(amount), 0)::bigint AS credits_in_window
  FROM orchestrator.ledger
 WHERE kind = 'refund'
   AND id > (SELECT coalesce(max(id), 0) - $2 FROM orchestrator.ledger)
   AND created_at >= clock_timestamp() - make_interval(mins => $1);

-- name: top_in_flight_by_provider
-- `orchestrator top`: in-flight jobs and their recorded predictions by provider;
-- a job with no prediction recorded yet counts under its job's provider, or NULL.
SELECT coalesce(p.provider, j.provider) AS provider,
       count(DISTINCT j.id)::bigint AS jobs,
       count(p.job_id)::bigint AS predictions
  FROM orchestrator.jobs j
  LEFT JOIN orchestrator.predictions p ON p.job_id = j.id
 WHERE j.status IN ({{statuses:in_flight}})
 GROUP BY 1
 ORDER BY 1 NULLS LAST;

-- name: top_slowest_in_flight
-- `orchestrator top`: the $1 in-flight jobs admitted longest ago (never the prompt).
SELECT j.id, j.user_id, j.status, j.num_outputs, j.slot,
       coalesce(j.provider, (SELECT min(p.provider) FROM orchestrator.predictions p
                              WHERE p.job_id = j.id)) AS provider,
       extract(epoch FROM clock_timestamp() - j.admitted_at)::float8 AS age_s,
       extract(epoch FROM j.deadline_at - clock_timestamp())::float8 AS deadline_in_s,
       (SELECT count(*) FROM orchestrator.predictions p WHERE p.job_id = j.id)::bigint
           AS predictions,
       j.cancel_requested_at IS NOT NULL AS cancel_requested
  FROM orchestrator.jobs j
 WHERE j.status IN ({{statuses:in_flight}})
 ORDER BY j.admitted_at, j.id
 LIMIT $1;

-- name: job_events_after
-- The endings after a seq, in seq order (see job_events_after).
SELECT seq, job_id, user_id, status, error_code, finished_at
  FROM orchestrator.job_events_after($1, $2);

-- name: job_events_head
-- The newest seq in the feed, 0 when empty: where a new reader starts.
SELECT orchestrator.job_events_head();

-- name: prune_job_events
-- Forget events and finished callbacks past the retention (see prune_job_events_v1).
SELECT orchestrator.prune_job_events_v1($1, $2);

-- name: job_outputs
-- The stored outputs of jobs, not deleted, by job and index: for status, listings
-- and callers following a job to its end.
SELECT job_id, idx, url, path, size_bytes, sha256, content_type, public_url
  FROM orchestrator.outputs
 WHERE job_id = ANY ($1::uuid[]) AND deleted_at IS NULL
 ORDER BY job_id, idx;

-- name: claim_callbacks
-- Callbacks due in the slots this member holds, claimed for one attempt each
-- (see claim_callbacks_v1).
SELECT seq, attempt, url, created_at, job_id, user_id, status, error_code, error_message,
       finished_at, outputs
  FROM orchestrator.claim_callbacks_v1($1, $2, $3);

-- name: record_callback
-- What an attempt came to (see record_callback_v1).
SELECT orchestrator.record_callback_v1($1, $2, $3, $4, $5, $6, $7);

-- name: redeliver_callback
-- A failed callback due again now (see redeliver_callback_v1).
SELECT orchestrator.redeliver_callback_v1($1);

-- name: ui_callbacks
-- Callbacks, newest first: given up ($1 true) or not delivered yet ($1 false), at
-- most $2 (for `orchestrator callbacks` and the web view).
SELECT d.seq, d.job_id, d.url, d.attempts, d.next_attempt_at, d.last_attempt_at,
       d.last_status, d.last_error, d.delivered_at, d.failed_at, d.created_at, e.status
  FROM orchestrator.callback_deliveries d
  JOIN orchestrator.job_events e ON e.seq = d.seq
 WHERE CASE WHEN $1::boolean THEN d.failed_at IS NOT NULL
            ELSE d.delivered_at IS NULL AND d.failed_at IS NULL END
 ORDER BY d.seq DESC
 LIMIT $2;

-- name: ui_job_event
-- A job's ending in the feed, with its callback if it named one (one row at most:
-- one event per job).
SELECT e.seq, e.status, e.job_id, d.url, d.attempts, d.next_attempt_at, d.last_attempt_at,
       d.last_status, d.last_error, d.delivered_at, d.failed_at, d.created_at
  FROM orchestrator.job_events e
  LEFT JOIN orchestrator.callback_deliveries d ON d.seq = e.seq
 WHERE e.job_id = $1
 LIMIT 1;

-- name: callback_counts
-- How many callbacks are owed, and how many were given up on (each through its
-- partial index, so the count stays cheap however many were delivered).
SELECT (SELECT count(*) FROM orchestrator.callback_deliveries
         WHERE delivered_at IS NULL AND failed_at IS NULL) AS pending,
       (SELECT count(*) FROM orchestrator.callback_deliveries
         WHERE failed_at IS NOT NULL) AS failed;
