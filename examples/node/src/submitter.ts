/**
 * An app backend's side of the generation orchestrator, written against its SQL contract
 * only (schema.sql: submit_jobs, job_events_after, job_events_head, outputs, NOTIFY
 * orchestrator_job_events), as a Next.js route handler or a worker beside it would be.
 *
 * It submits a batch of jobs in one round trip, follows their endings through the event
 * feed, drops its LISTEN connection halfway and catches up from its cursor, fetches every
 * output by its public URL and checks its sha256 and size, then prints one JSON summary
 * line. The rules it shows:
 *
 *   - the cursor is the seq of the last feed row handled, never a NOTIFY payload: a
 *     notification is only a wake-up, and the feed decides what ended;
 *   - LISTEN comes before the read that catches up, so nothing that ends in between
 *     goes unheard until the safety timer;
 *   - an ending is handled (here: its outputs verified) before the cursor moves past it,
 *     so a crash or a reconnect reads it again rather than losing it.
 *
 * Configuration (environment):
 *   DATABASE_URL          a login granted `submitter` (required)
 *   EXAMPLE_JOBS          jobs to submit, the refused one included (default 30)
 *   EXAMPLE_USERS         comma-separated users with accounts and credits
 *                         (default app-ana,app-bo,app-cy)
 *   EXAMPLE_BROKE_USER    a user whose balance cannot cover EXAMPLE_BROKE_OUTPUTS outputs:
 *                         its one job must end `rejected` (default app-broke; empty: none)
 *   EXAMPLE_BROKE_OUTPUTS outputs that user's job asks for (default 5)
 *   EXAMPLE_TIMEOUT_S     give up after this many seconds (default 60)
 *   EXAMPLE_AWAY_S        seconds without a LISTEN connection halfway (default 1)
 *   EXAMPLE_POLL_S        safety timer: read the feed at least this often (default 1)
 *
 * Exit status: 0 when every submitted job's ending was seen exactly once, in strictly
 * increasing seq order, and every output matched; 1 otherwise (the summary's `problems`
 * say why); 2 for a configuration error.
 */

import { createHash, randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";

const CHANNEL = "orchestrator_job_events";
const PAGE = 100;
const QUERY_TIMEOUT_MS = 10_000;
const FETCH_TIMEOUT_MS = 10_000;
const AWAY_POLL_MS = 100;
/** Past the deadline, how long the summary may take before the process is ended anyway. */
const HARD_STOP_GRACE_MS = 15_000;

const HEAD = "SELECT orchestrator.job_events_head() AS head";
const SUBMIT = "SELECT ordinal, job_id, code, message FROM orchestrator.submit_jobs($1::jsonb)";
const EVENTS_AFTER =
  "SELECT seq, job_id, user_id, status, error_code, finished_at" +
  " FROM orchestrator.job_events_after($1, $2)";
const OUTPUTS =
  "SELECT idx, public_url, sha256, size_bytes FROM orchestrator.outputs" +
  " WHERE job_id = $1 AND deleted_at IS NULL ORDER BY idx";
const NOW = "SELECT clock_timestamp() AS now";

interface Config {
  databaseUrl: string;
  jobs: number;
  users: string[];
  brokeUser: string | null;
  brokeOutputs: number;
  timeoutMs: number;
  awayMs: number;
  pollMs: number;
}

interface Item {
  user_id: string;
  prompt: string;
  params: Record<string, unknown>;
  num_outputs: number;
  idempotency_key: string;
}

interface SubmitRow {
  ordinal: number;
  job_id: string | null;
  code: string | null;
  message: string | null;
}

interface EventRow {
  seq: string; // bigint: node-postgres hands int8 over as text
  job_id: string;
  user_id: string;
  status: string;
  error_code: string | null;
  finished_at: Date;
}

interface OutputRow {
  idx: number;
  public_url: string | null;
  sha256: string | null;
  size_bytes: string | null;
}

interface Expected {
  userId: string;
  numOutputs: number;
  meantToBeRefused: boolean;
}

type Reason = "submit" | "notify" | "timer" | "catch_up";

class ConfigError extends Error {}

class GaveUp extends Error {}

function readConfig(env: NodeJS.ProcessEnv): Config {
  const databaseUrl = env["DATABASE_URL"];
  if (!databaseUrl) {
    throw new ConfigError("DATABASE_URL is required: a login granted the submitter role");
  }
  const users = (env["EXAMPLE_USERS"] ?? "app-ana,app-bo,app-cy")
    .split(",")
    .map((u) => u.trim())
    .filter((u) => u.length > 0);
  if (users.length === 0) {
    throw new ConfigError("EXAMPLE_USERS names no user");
  }
  const broke = (env["EXAMPLE_BROKE_USER"] ?? "app-broke").trim();
  return {
    databaseUrl,
    jobs: whole(env, "EXAMPLE_JOBS", 30),
    users,
    brokeUser: broke.length > 0 ? broke : null,
    brokeOutputs: whole(env, "EXAMPLE_BROKE_OUTPUTS", 5),
    timeoutMs: positive(env, "EXAMPLE_TIMEOUT_S", 60) * 1000,
    awayMs: positive(env, "EXAMPLE_AWAY_S", 1) * 1000,
    pollMs: positive(env, "EXAMPLE_POLL_S", 1) * 1000,
  };
}

function positive(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const text = env[name];
  if (text === undefined || text === "") {
    return fallback;
  }
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) {
    throw new ConfigError(`${name} must be a positive number, got ${JSON.stringify(text)}`);
  }
  return value;
}

function whole(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const value = positive(env, name, fallback);
  if (!Number.isInteger(value)) {
    throw new ConfigError(`${name} must be a whole number, got ${value}`);
  }
  return value;
}

/** The batch: ordinary jobs (some with several outputs), one refused later, one unknown user. */
function batch(config: Config, runId: string): { items: Item[]; unknownUser: string } {
  const items: Item[] = [];
  const ordinary = config.brokeUser === null ? config.jobs : config.jobs - 1;
  for (let i = 1; i <= ordinary; i += 1) {
    items.push({
      user_id: config.users[(i - 1) % config.users.length] as string,
      prompt: `a lighthouse at dusk, study ${i} (${runId})`,
      params: { seed: i },
      num_outputs: [1, 2, 1, 3][i % 4] as number,
      idempotency_key: `${runId}:${i}`,
    });
  }
  if (config.brokeUser !== null) {
    items.push({
      user_id: config.brokeUser,
      prompt: `more than the balance covers (${runId})`,
      params: {},
      num_outputs: config.brokeOutputs,
      idempotency_key: `${runId}:broke`,
    });
  }
  const unknownUser = `nobody-${runId}`;
  items.push({
    user_id: unknownUser,
    prompt: `a user without an account (${runId})`,
    params: {},
    num_outputs: 1,
    idempotency_key: `${runId}:unknown`,
  });
  return { items, unknownUser };
}

/** The feed reader's wake-up: a NOTIFY (or a lost listener) sets it; a timer bounds the wait. */
class Waker {
  private pending = false;
  private release: (() => void) | null = null;

  wake(): void {
    this.pending = true;
    this.release?.();
  }

  wait(ms: number): Promise<"notify" | "timer"> {
    if (this.pending) {
      this.pending = false;
      return Promise.resolve("notify");
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.release = null;
        resolve("timer");
      }, ms);
      this.release = () => {
        clearTimeout(timer);
        this.release = null;
        this.pending = false;
        resolve("notify");
      };
    });
  }
}

/** The LISTEN connection, on a client of its own (a pooled one would be handed to others). */
class Listener {
  lost = false;
  private closing = false;

  private constructor(private readonly client: pg.Client) {}

  static async open(url: string, waker: Waker, onNotify: () => void): Promise<Listener> {
    const client = new pg.Client({
      connectionString: url,
      connectionTimeoutMillis: QUERY_TIMEOUT_MS,
      query_timeout: QUERY_TIMEOUT_MS,
      keepAlive: true,
    });
    const listener = new Listener(client);
    const lose = (): void => {
      if (!listener.closing) {
        listener.lost = true;
        waker.wake();
      }
    };
    client.on("error", lose);
    client.on("end", lose);
    client.on("notification", (message) => {
      if (message.channel === CHANNEL) {
        onNotify();
        waker.wake();
      }
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANNEL}`);
    } catch (err) {
      await listener.close();
      throw err;
    }
    return listener;
  }

  async close(): Promise<void> {
    if (this.closing) {
      return;
    }
    this.closing = true;
    try {
      await this.client.end();
    } catch {
      // already gone: nothing to close
    }
  }
}

/** Everything one run saw; the summary is made from it. */
class Run {
  readonly started = Date.now();
  readonly deadline: number;
  cursor = 0n;
  items = 0;
  readonly expected = new Map<string, Expected>();
  readonly refusedAtSubmit: Record<string, unknown>[] = [];
  readonly refusedByDaemon: Record<string, unknown>[] = [];
  readonly seen = new Map<string, bigint>();
  readonly statuses = new Map<string, number>();
  readonly events: [number, string, string, string | null][] = [];
  readonly outputs: [string, number, number, string][] = [];
  readonly mismatches: Record<string, unknown>[] = [];
  readonly problems: string[] = [];
  readonly wakeups = { notify: 0, timer: 0 };
  heardLive = 0;
  caughtUp = 0;
  endedWhileAway = 0;
  reconnects = 0;
  notifications = 0;
  foreignEvents = 0;
  seqsInOrder = true;
  duplicates = 0;
  outputsShort = 0;
  halfwayDone = false;
  awayFrom: Date | null = null;
  awayUntil: Date | null = null;

  constructor(timeoutMs: number) {
    this.deadline = this.started + timeoutMs;
  }

  pending(): number {
    return this.expected.size - this.seen.size;
  }

  halfwayDue(): boolean {
    return !this.halfwayDone && this.pending() > 0 && this.seen.size >= this.expected.size / 2;
  }

  remainingMs(): number {
    return this.deadline - Date.now();
  }

  checkDeadline(): void {
    if (this.remainingMs() <= 0) {
      throw new GaveUp(
        `gave up after ${((Date.now() - this.started) / 1000).toFixed(1)} s: ` +
          `${this.seen.size} of ${this.expected.size} endings seen`,
      );
    }
  }

  summary(): Record<string, unknown> {
    const ok = this.problems.length === 0 && this.mismatches.length === 0;
    return {
      example: "node",
      ok,
      items: this.items,
      submitted: this.expected.size,
      refused_at_submit: this.refusedAtSubmit,
      endings: this.seen.size,
      statuses: Object.fromEntries([...this.statuses].sort(([a], [b]) => (a < b ? -1 : 1))),
      refused_by_daemon: this.refusedByDaemon,
      heard_live: this.heardLive,
      caught_up: this.caughtUp,
      ended_while_away: this.endedWhileAway,
      reconnects: this.reconnects,
      notifications: this.notifications,
      wakeups: this.wakeups,
      foreign_events: this.foreignEvents,
      seqs_in_order: this.seqsInOrder,
      duplicates: this.duplicates,
      outputs_fetched: this.outputs.length,
      outputs_short: this.outputsShort,
      mismatches: this.mismatches,
      problems: this.problems,
      elapsed_s: Math.round((Date.now() - this.started) / 10) / 100,
      events: this.events,
      outputs: this.outputs,
    };
  }
}

class App {
  private listener: Listener | null = null;
  private readonly waker = new Waker();

  constructor(
    private readonly config: Config,
    private readonly pool: pg.Pool,
    private readonly run: Run,
  ) {}

  async main(): Promise<void> {
    this.run.cursor = await this.head();
    this.listener = await this.listen();
    await this.submit();
    let reason: Reason = "submit";
    while (this.run.pending() > 0) {
      this.run.checkDeadline();
      if (this.listener.lost) {
        // The connection broke under us: a new one, LISTEN first, then catch up.
        await this.listener.close();
        this.listener = await this.listen();
        this.run.reconnects += 1;
        reason = "catch_up";
      }
      if ((await this.drain(reason)) === "halfway") {
        await this.goAwayAndComeBack();
        reason = "catch_up";
        continue;
      }
      if (this.run.pending() === 0) {
        break;
      }
      const waitMs = Math.max(1, Math.min(this.config.pollMs, this.run.remainingMs()));
      reason = await this.waker.wait(waitMs);
      this.run.wakeups[reason] += 1;
    }
  }

  async close(): Promise<void> {
    await this.listener?.close();
  }

  private async submit(): Promise<void> {
    const runId = randomUUID().slice(0, 8);
    const { items, unknownUser } = batch(this.config, runId);
    this.run.items = items.length;
    const { rows } = await this.pool.query<SubmitRow>(SUBMIT, [JSON.stringify(items)]);
    for (const row of [...rows].sort((a, b) => a.ordinal - b.ordinal)) {
      const item = items[row.ordinal - 1];
      if (item === undefined) {
        this.run.problems.push(`submit_jobs answered for ordinal ${row.ordinal}, not in the batch`);
        continue;
      }
      if (item.user_id === unknownUser) {
        this.run.refusedAtSubmit.push({
          ordinal: row.ordinal,
          user_id: item.user_id,
          code: row.code,
          message: row.message,
        });
        if (row.code !== "OR001") {
          this.run.problems.push(
            `a user without an account was answered ${row.code ?? row.job_id}, not OR001`,
          );
        }
        continue;
      }
      if (row.job_id === null) {
        this.run.refusedAtSubmit.push({
          ordinal: row.ordinal,
          user_id: item.user_id,
          code: row.code,
          message: row.message,
        });
        this.run.problems.push(
          `${item.user_id}'s job was refused at submit: ${row.code} ${row.message}`,
        );
        continue;
      }
      this.run.expected.set(row.job_id, {
        userId: item.user_id,
        numOutputs: item.num_outputs,
        meantToBeRefused: item.user_id === this.config.brokeUser,
      });
    }
  }

  /**
   * Read the feed from the cursor until it is empty, handling each row in seq order.
   *
   * Returns "halfway" as soon as half the endings are handled (once): the rest of that
   * page is dropped unhandled, as a crash mid-page would, and read again by the catch-up,
   * because the cursor only ever moves past a row once that row was handled.
   */
  private async drain(reason: Reason): Promise<"halfway" | "empty"> {
    for (;;) {
      const { rows } = await this.pool.query<EventRow>(EVENTS_AFTER, [
        this.run.cursor.toString(),
        PAGE,
      ]);
      if (rows.length === 0) {
        return "empty";
      }
      for (const row of rows) {
        this.run.checkDeadline();
        const seq = BigInt(row.seq);
        if (seq <= this.run.cursor) {
          this.run.seqsInOrder = false;
          this.run.problems.push(`seq ${seq} came after ${this.run.cursor}`);
          continue;
        }
        await this.handle(row, seq, reason);
        this.run.cursor = seq;
        if (this.run.halfwayDue()) {
          this.run.halfwayDone = true;
          return "halfway";
        }
      }
    }
  }

  private async handle(row: EventRow, seq: bigint, reason: Reason): Promise<void> {
    const job = this.run.expected.get(row.job_id);
    if (job === undefined) {
      this.run.foreignEvents += 1; // another submitter's job: the feed is every ending
      return;
    }
    if (this.run.seen.has(row.job_id)) {
      this.run.duplicates += 1;
      const first = this.run.seen.get(row.job_id);
      this.run.problems.push(`job ${row.job_id} ended twice: seq ${first} and ${seq}`);
      return;
    }
    this.run.seen.set(row.job_id, seq);
    this.run.events.push([Number(seq), row.job_id, row.status, row.error_code]);
    this.run.statuses.set(row.status, (this.run.statuses.get(row.status) ?? 0) + 1);
    if (reason === "catch_up") {
      this.run.caughtUp += 1;
      const { awayFrom, awayUntil } = this.run;
      const ended = row.finished_at;
      if (awayFrom !== null && awayUntil !== null && ended > awayFrom && ended <= awayUntil) {
        this.run.endedWhileAway += 1;
      }
    } else {
      this.run.heardLive += 1;
    }
    if (row.status === "rejected") {
      this.run.refusedByDaemon.push({
        job_id: row.job_id,
        user_id: row.user_id,
        code: row.error_code,
      });
    }
    if (job.meantToBeRefused && row.status !== "rejected") {
      this.run.problems.push(`the job meant to be refused ended ${row.status}`);
    }
    if (row.status === "succeeded") {
      await this.verifyOutputs(row.job_id, job.numOutputs);
    }
  }

  private async verifyOutputs(jobId: string, asked: number): Promise<void> {
    const { rows } = await this.pool.query<OutputRow>(OUTPUTS, [jobId]);
    this.run.outputsShort += Math.max(0, asked - rows.length); // a partial success delivers fewer
    if (rows.length === 0) {
      this.run.problems.push(`job ${jobId} succeeded with no outputs`);
    }
    for (const output of rows) {
      const fault = await this.fetchAndCheck(jobId, output);
      if (fault !== null) {
        this.run.mismatches.push({ job_id: jobId, idx: output.idx, reason: fault });
      }
    }
  }

  /** Fetch one output by its public URL; null when its bytes match the row's sha256 and size. */
  private async fetchAndCheck(jobId: string, output: OutputRow): Promise<string | null> {
    if (output.public_url === null) {
      return "no public_url";
    }
    let body: Buffer;
    try {
      const response = await fetch(output.public_url, {
        signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
      });
      if (!response.ok) {
        return `GET answered ${response.status}`;
      }
      body = Buffer.from(await response.arrayBuffer());
    } catch (err) {
      return `GET failed: ${String(err)}`;
    }
    const sha256 = createHash("sha256").update(body).digest("hex");
    this.run.outputs.push([jobId, output.idx, body.length, sha256]);
    if (sha256 !== output.sha256) {
      return `sha256 ${sha256}, the row says ${output.sha256}`;
    }
    if (String(body.length) !== output.size_bytes) {
      return `${body.length} bytes, the row says ${output.size_bytes}`;
    }
    return null;
  }

  /**
   * Halfway: no LISTEN connection for a while, as after a deploy or a network blip.
   *
   * Away for EXAMPLE_AWAY_S, and on until the feed's head has moved past the cursor, so
   * that the catch-up always has something to show; the head is only looked at, and the
   * cursor still moves only through rows read.
   */
  private async goAwayAndComeBack(): Promise<void> {
    await this.listener?.close();
    this.run.awayFrom = await this.dbNow();
    await sleep(Math.min(this.config.awayMs, Math.max(0, this.run.remainingMs())));
    while ((await this.head()) <= this.run.cursor) {
      this.run.checkDeadline();
      await sleep(AWAY_POLL_MS);
    }
    this.listener = await this.listen(); // LISTEN before the catch-up read
    this.run.awayUntil = await this.dbNow();
    this.run.reconnects += 1;
  }

  /** A new LISTEN connection, retried with backoff until the deadline. */
  private async listen(): Promise<Listener> {
    let backoffMs = 200;
    for (;;) {
      try {
        return await Listener.open(this.config.databaseUrl, this.waker, () => {
          this.run.notifications += 1;
        });
      } catch (err) {
        if (this.run.remainingMs() <= backoffMs) {
          throw err;
        }
        await sleep(backoffMs);
        backoffMs = Math.min(backoffMs * 2, 2000);
      }
    }
  }

  /** The newest seq in the feed: where a reader that starts now begins. */
  private async head(): Promise<bigint> {
    const { rows } = await this.pool.query<{ head: string }>(HEAD);
    return BigInt(rows[0]?.head ?? "0");
  }

  /** The database's clock, which also stamps finished_at. */
  private async dbNow(): Promise<Date> {
    const { rows } = await this.pool.query<{ now: Date }>(NOW);
    return rows[0]?.now ?? new Date();
  }
}

function emit(summary: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

async function main(): Promise<number> {
  let config: Config;
  try {
    config = readConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`submitter: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const run = new Run(config.timeoutMs);
  // The backstop: whatever hangs, the process ends with its summary so far.
  setTimeout(() => {
    run.problems.push("did not finish within the timeout plus its grace; stopped");
    emit(run.summary());
    process.exit(1);
  }, config.timeoutMs + HARD_STOP_GRACE_MS).unref();

  const pool = new pg.Pool({
    connectionString: config.databaseUrl,
    max: 4,
    connectionTimeoutMillis: QUERY_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS,
  });
  pool.on("error", () => {
    // an idle pooled client died; the pool replaces it on the next query
  });
  const app = new App(config, pool, run);
  try {
    await app.main();
  } catch (err) {
    run.problems.push(err instanceof GaveUp ? err.message : `failed: ${String(err)}`);
  } finally {
    await app.close();
    await pool.end().catch(() => undefined);
  }
  const summary = run.summary();
  emit(summary);
  if (!summary["ok"]) {
    const reasons = [...run.problems, ...run.mismatches.map((m) => JSON.stringify(m))];
    process.stderr.write(`submitter: ${reasons.join("; ")}\n`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`submitter: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
