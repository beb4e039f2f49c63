// The SDK's error classes: one per row of the README's error table. Every
// error the SDK throws on its own account extends OrkestrError; an aborted
// call rejects with the AbortSignal's reason instead, as fetch does.

/** A connection the sandbox's network policy dropped. */
export interface BlockedConnection {
  host: string;
  port: number;
}

/** How a command ended, as `exec()` returns it. A non-zero exitCode is not an error. */
export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  durationMs: number;
  blockedConnections: BlockedConnection[];
  /** A process of the command was killed at the sandbox's memory limit (the sandbox keeps running). */
  oomKilled?: boolean;
}

export interface OrkestrErrorInit {
  code: string;
  status: number;
  message: string;
  requestId?: string | undefined;
  details?: Record<string, unknown> | undefined;
  cause?: unknown;
}

/**
 * Base class of every SDK error. `code` is the API's error code (branch on
 * it, never on the message), `status` the HTTP status (0 when no answer came
 * from the API), `requestId` the answer's X-Request-Id (quote it in bug
 * reports) and `details` the code-specific details of the API's error body.
 */
export class OrkestrError extends Error {
  readonly code: string;
  readonly status: number;
  readonly requestId: string | undefined;
  readonly details: Record<string, unknown>;

  constructor(init: OrkestrErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.status = init.status;
    this.requestId = init.requestId;
    this.details = init.details ?? {};
  }
}

/** Missing / invalid / expired API key (401), or the key lacks a scope (403). */
export class AuthError extends OrkestrError {
  /** For `insufficient_scope`: the scope the call needs, e.g. "sandboxes:write". */
  readonly requiredScope: string | undefined;
  constructor(init: OrkestrErrorInit) {
    super(init);
    this.requiredScope = str(this.details["required_scope"]);
  }
}

/** The plan's request rate was exceeded (429). */
export class RateLimitError extends OrkestrError {
  /** How long to wait before the next request, in milliseconds. */
  readonly retryAfterMs: number;
  constructor(init: OrkestrErrorInit & { retryAfterMs?: number }) {
    super(init);
    this.retryAfterMs = num(this.details["retry_after_ms"]) ?? init.retryAfterMs ?? 0;
  }
}

/**
 * The plan does not allow this (402). `code` is `size_not_allowed`,
 * `concurrency_limit`, `usage_exhausted`, `snapshot_cap_reached` or `fork_limit`.
 */
export class PlanLimitError extends OrkestrError {
  /** For `usage_exhausted`: when the usage counters reset. */
  readonly resetsAt: Date | undefined;
  constructor(init: OrkestrErrorInit) {
    super(init);
    this.resetsAt = date(this.details["resets_at"]);
  }
}

/** pause() would keep more paused sandboxes than the plan allows (402 `snapshot_cap_reached`). */
export class SnapshotCapReached extends PlanLimitError {
  /** How many paused sandboxes the plan keeps. */
  readonly cap: number | undefined;
  constructor(init: OrkestrErrorInit) {
    super(init);
    this.cap = num(this.details["cap"]);
  }
}

/** The sandbox id doesn't exist or isn't yours (404 `sandbox_not_found`). */
export class SandboxNotFound extends OrkestrError {}

/** The operation needs a running sandbox and this one is not (409 `sandbox_not_ready`). */
export class SandboxNotReady extends OrkestrError {
  /** The sandbox's status, e.g. "paused" or "terminated". */
  readonly sandboxStatus: string | undefined;
  constructor(init: OrkestrErrorInit) {
    super(init);
    this.sandboxStatus = str(this.details["status"]);
  }
}

/**
 * The command ran longer than its timeoutSeconds and was killed with its
 * children (408 `exec_timeout`). `stdout` and `stderr` hold the output up to
 * the kill; from `execStream()` they are empty, as the output already arrived
 * as chunks.
 */
export class ExecTimeout extends OrkestrError {
  readonly stdout: string;
  readonly stderr: string;
  readonly durationMs: number;
  constructor(init: OrkestrErrorInit) {
    super(init);
    this.stdout = str(this.details["stdout"]) ?? "";
    this.stderr = str(this.details["stderr"]) ?? "";
    this.durationMs = num(this.details["duration_ms"]) ?? 0;
  }
}

/**
 * The command exited non-zero after the sandbox's network policy blocked at
 * least one of its connections. `result` is the command's result (from
 * `execStream()` its stdout and stderr are empty: the output came as chunks).
 * The API answered 200, so `status` is 200 and `code` is
 * `network_policy_blocked`, a code of the SDK, not of the API.
 */
export class NetworkPolicyError extends OrkestrError {
  readonly result: ExecResult;
  readonly blockedConnections: BlockedConnection[];
  constructor(result: ExecResult, requestId: string | undefined) {
    const hosts = result.blockedConnections.map((b) => hostPort(b)).join(", ");
    super({
      code: "network_policy_blocked",
      status: 200,
      requestId,
      message: `the command exited with code ${result.exitCode} after the sandbox's network policy blocked connections to ${hosts}; allow these hosts or use network "open"`,
      details: { blocked_connections: result.blockedConnections },
    });
    this.result = result;
    this.blockedConnections = result.blockedConnections;
  }
}

function hostPort(b: BlockedConnection): string {
  return b.host.includes(":") ? `[${b.host}]:${b.port}` : `${b.host}:${b.port}`;
}

/** HTTP status of each API code, for errors that arrive inside an exec stream (HTTP 200). */
const statusOf: Record<string, number> = {
  unauthenticated: 401,
  insufficient_scope: 403,
  rate_limited: 429,
  size_not_allowed: 402,
  concurrency_limit: 402,
  usage_exhausted: 402,
  snapshot_cap_reached: 402,
  fork_limit: 402,
  snapshot_corrupt: 422,
  snapshot_store_unavailable: 503,
  sandbox_not_found: 404,
  process_not_found: 404,
  process_stdin_closed: 409,
  file_exists: 409,
  permission_denied: 403,
  sandbox_not_ready: 409,
  exec_timeout: 408,
  invalid_request: 400,
  unknown_template: 400,
  unknown_region: 400,
  file_not_found: 404,
  invalid_path: 400,
  payload_too_large: 413,
  no_capacity: 503,
  invalid_archive: 400,
  unavailable: 503,
  internal: 500,
  not_a_directory: 400,
  read_only: 409,
  busy: 409,
  io_error: 422,
  limit_exceeded: 422,
};

export function statusOfCode(code: string): number {
  return Object.prototype.hasOwnProperty.call(statusOf, code) ? (statusOf[code] as number) : 500;
}

/**
 * Maps an API error to its class by HTTP status and code, per the API's error
 * table. 401 and 429 map by status alone; a 402 with a code this SDK does not
 * know is still a PlanLimitError.
 */
export function classify(init: OrkestrErrorInit & { retryAfterMs?: number }): OrkestrError {
  const { status, code } = init;
  if (status === 401 || (status === 403 && code === "insufficient_scope")) return new AuthError(init);
  if (status === 429) return new RateLimitError(init);
  if (status === 402) return code === "snapshot_cap_reached" ? new SnapshotCapReached(init) : new PlanLimitError(init);
  if (status === 404 && code === "sandbox_not_found") return new SandboxNotFound(init);
  if (status === 409 && code === "sandbox_not_ready") return new SandboxNotReady(init);
  if (status === 408 && code === "exec_timeout") return new ExecTimeout(init);
  return new OrkestrError(init);
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function num(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function date(v: unknown): Date | undefined {
  if (typeof v !== "string") return undefined;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? undefined : d;
}
