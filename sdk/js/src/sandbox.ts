// Sandbox: the handle for one sandbox of the API and the static calls that
// create, resume, list and describe sandboxes and plans.

import { openTerminal, type Terminal, type TerminalOptions } from "./terminal.js";
import { getBody, putStream, sendStream, type BodyReader, type StreamResponse } from "./nodestream.js";
import {
  type BlockedConnection,
  type ExecResult,
  NetworkPolicyError,
  OrkestrError,
  classify,
  statusOfCode,
} from "./errors.js";
import {
  type CallOptions,
  type ClientOptions,
  type Connection,
  call,
  camelize,
  connect,
  isObject,
  segment,
  send,
  snakify,
  toDate,
} from "./http.js";
import { FileCalls, Processes, type User, type UserOptions } from "./processes.js";

export type SandboxStatus = "starting" | "running" | "paused" | "terminated" | "error";
export type SandboxSize = "small" | "medium" | "large";
export type NetworkMode = "off" | "restricted" | "open";

/** What `Sandbox.create` and `Sandbox.withTemp` take. */
export interface CreateOptions extends ClientOptions, CallOptions {
  /** Template name, e.g. "python-3.12". */
  template: string;
  /** "small" | "medium" | "large" (plan-capped). Default "small". */
  size?: SandboxSize | (string & {});
  /** "off" | "restricted" | "open". Default "off". */
  network?: NetworkMode | (string & {});
  /** Auto-terminate after this many seconds of running time. Default 600. */
  timeoutSeconds?: number;
  /** Environment of every command; never returned by the API (only envKeys). Keys pass unchanged. */
  env?: Record<string, string>;
  /** Caller-defined strings, returned unchanged (no case conversion). */
  metadata?: Record<string, string>;
  /** "fsn1" | "hel1" | undefined for auto. */
  region?: string;
}

/** Connection options plus an AbortSignal, for the static calls. */
export type RequestOptions = ClientOptions & CallOptions;

export interface ListOptions extends RequestOptions {
  /** Only sandboxes in this status. */
  status?: SandboxStatus;
  /** Page size, 1..200 (the API's default is 50). The iterator fetches every page. */
  pageSize?: number;
}

export interface ExecOptions extends CallOptions {
  /** Wall-clock limit of the command; then it is killed with its children. Default 60. */
  timeoutSeconds?: number;
  /** Added to the sandbox's env for this command. Keys pass unchanged. */
  env?: Record<string, string>;
  /** Working directory. Default "/workspace". */
  cwd?: string;
  /** Standard input of the command (UTF-8 text, at most 1 MiB). */
  stdin?: string;
  /** "root" (default) or "user" (uid 1000, home /home/user). */
  user?: User;
}

/** A piece of a running command's output. */
export interface ExecChunk {
  stream: "stdout" | "stderr";
  /** The output as text (UTF-8, a character split between chunks is joined). */
  data: string;
  /**
   * The output's bytes exactly as the command wrote them, UTF-8 or not
   * (not enumerable: a chunk prints and compares as `{ stream, data }`).
   */
  readonly bytes: Uint8Array;
}

/** The exec stream's binary-safe framing, asked for in Accept. */
const EXEC_FRAMES = "application/vnd.orkestr.exec-frames";

export interface SizeInfo {
  size: string;
  cpu: number;
  memoryMb: number;
  allowed: boolean;
}

/** The sizes, caps and monthly usage of the API key's plan. */
export interface Limits {
  plan: string;
  allowedSizes: string[];
  /** 0 means no limit. */
  maxConcurrent: number;
  /** Paused sandboxes kept at once; 0 means no limit. */
  snapshotCap: number;
  /** The most clones one fork() makes. */
  maxFork: number;
  usageGbHoursUsed: number;
  usageGbHoursIncluded: number;
  usageCpuHoursUsed: number;
  usageCpuHoursIncluded: number;
  /** 00:00 UTC on the 1st of next month. */
  usageResetsAt: Date;
  /** The full menu, smallest first, each with .allowed. */
  sizes: SizeInfo[];
}

export interface Template {
  name: string;
  description: string;
  default: boolean;
  /** Whether this server has the template's root filesystem (self-hosted servers). */
  built?: boolean;
}

export interface MetricSample {
  t: Date;
  cpuPercent: number;
  memBytes: number;
}

/** A sandbox's live CPU and memory, a rolling window of samples and its lifetime totals. */
export interface Metrics {
  sandboxId: string;
  sandboxStatus: SandboxStatus;
  /** Poll no faster than this. */
  sampleIntervalSeconds: number;
  /** null unless the sandbox is running. */
  cpu: { cores: number; usageCores: number; usagePercent: number } | null;
  /** null unless the sandbox is running. */
  memory: { limitBytes: number; usageBytes: number; usagePercent: number } | null;
  lifetime: { cpuSeconds: number; memMbSeconds: number; runningSeconds: number };
  /** The last ~60 s, oldest first; [] unless running. */
  samples: MetricSample[];
}

export interface FileEntry {
  name: string;
  path: string;
  isDir: boolean;
  size: number;
  /** Permission bits, e.g. 0o644. */
  mode: number;
  modifiedAt: Date;
}

/** The API's Sandbox object, in camelCase: the fields of a Sandbox. */
export interface SandboxData {
  id: string;
  status: SandboxStatus;
  template: string;
  size: string;
  cpu: number;
  memoryMb: number;
  network: string;
  region: string;
  timeoutSeconds: number;
  expiresAt: Date | null;
  envKeys: string[];
  metadata: Record<string, string>;
  createdAt: Date;
  pausedAt: Date | null;
  terminatedAt: Date | null;
  /** Why a sandbox in status "error" stopped; null otherwise. */
  errorReason: string | null;
}

const MAX_STDIN = 1 << 20;

function sandboxData(raw: unknown): SandboxData {
  if (!isObject(raw) || typeof raw["id"] !== "string") {
    throw new OrkestrError({ code: "invalid_response", status: 200, message: "the API's answer is not a sandbox" });
  }
  const c = camelize(raw) as Record<string, unknown>;
  const str = (k: string) => (typeof c[k] === "string" ? (c[k] as string) : "");
  const num = (k: string) => (typeof c[k] === "number" ? (c[k] as number) : 0);
  // Only the known fields: the sandbox's own properties are assigned from
  // this, and a key such as "__proto__" from the wire must not reach them.
  return {
    id: str("id"),
    status: str("status") as SandboxStatus,
    template: str("template"),
    size: str("size"),
    cpu: num("cpu"),
    memoryMb: num("memoryMb"),
    network: str("network"),
    region: str("region"),
    timeoutSeconds: num("timeoutSeconds"),
    envKeys: Array.isArray(c["envKeys"]) ? (c["envKeys"] as string[]) : [],
    metadata: isObject(c["metadata"]) ? (c["metadata"] as Record<string, string>) : {},
    createdAt: toDate(c["createdAt"]) ?? new Date(NaN),
    expiresAt: toDate(c["expiresAt"]),
    pausedAt: toDate(c["pausedAt"]),
    terminatedAt: toDate(c["terminatedAt"]),
    errorReason: typeof c["errorReason"] === "string" ? (c["errorReason"] as string) : null,
  };
}

function execBody(command: string, o: ExecOptions): Record<string, unknown> {
  if (typeof command !== "string" || command === "") {
    throw new OrkestrError({ code: "invalid_argument", status: 0, message: "command must be a non-empty string" });
  }
  if (o.stdin !== undefined && new TextEncoder().encode(o.stdin).byteLength > MAX_STDIN) {
    throw new OrkestrError({
      code: "invalid_argument",
      status: 0,
      message: "stdin is larger than the API's 1 MiB limit; write it to a file with files.write and redirect it instead",
    });
  }
  return snakify({ command, timeoutSeconds: o.timeoutSeconds, env: o.env, cwd: o.cwd, stdin: o.stdin, user: o.user }) as Record<
    string,
    unknown
  >;
}

function blocked(v: unknown): BlockedConnection[] {
  if (!Array.isArray(v)) return [];
  return v.filter(isObject).map((b) => ({ host: String(b["host"] ?? ""), port: Number(b["port"] ?? 0) }));
}

/**
 * A sandbox of the API. Its fields are the API's Sandbox object as last
 * seen; pause, resume, terminate and refresh update them.
 */
export class Sandbox implements SandboxData {
  id!: string;
  status!: SandboxStatus;
  template!: string;
  size!: string;
  cpu!: number;
  memoryMb!: number;
  network!: string;
  region!: string;
  timeoutSeconds!: number;
  expiresAt!: Date | null;
  envKeys!: string[];
  metadata!: Record<string, string>;
  createdAt!: Date;
  pausedAt!: Date | null;
  terminatedAt!: Date | null;
  /** Why a sandbox in status "error" stopped (e.g. it exceeded its memory limit as a whole); null otherwise. */
  errorReason!: string | null;

  /** File operations; paths are absolute paths inside the sandbox. */
  readonly files: Files;
  /** Background processes: start, list, attach, stdin, signals, wait. */
  readonly processes: Processes;
  readonly #conn: Connection;

  private constructor(conn: Connection, data: SandboxData) {
    this.#conn = conn;
    Object.assign(this, data);
    this.files = new Files(conn, data.id);
    this.processes = new Processes(conn, data.id);
  }

  /** Starts a sandbox and resolves once it runs. Never retried (a retry could start a second one). */
  static async create(options: CreateOptions): Promise<Sandbox> {
    const conn = connect(options);
    if (!isObject(options) || typeof options.template !== "string" || options.template === "") {
      throw new OrkestrError({ code: "invalid_argument", status: 0, message: "create needs { template }, e.g. \"python-3.12\"" });
    }
    const body = snakify({
      template: options.template,
      size: options.size,
      network: options.network,
      timeoutSeconds: options.timeoutSeconds,
      env: options.env,
      metadata: options.metadata,
      region: options.region,
    });
    const raw = await call(conn, { method: "POST", path: "/sandboxes", json: body, signal: options.signal });
    return new Sandbox(conn, sandboxData(raw));
  }

  /**
   * Creates a sandbox, calls fn with it and terminates it when fn returns or
   * throws; resolves to fn's result or rethrows fn's error. If fn threw,
   * its error is rethrown even when terminating fails too; if fn returned,
   * a failed termination is thrown.
   */
  static async withTemp<T>(options: CreateOptions, fn: (sbx: Sandbox) => Promise<T> | T): Promise<T> {
    const sbx = await Sandbox.create(options);
    let result: T;
    try {
      result = await fn(sbx);
    } catch (err) {
      // fn's error is what the caller needs; a failed cleanup must not hide it.
      await sbx.terminate().catch(() => {});
      throw err;
    }
    await sbx.terminate();
    return result;
  }

  /** The sandbox with this id (GET). */
  static async get(sandboxId: string, options: RequestOptions = {}): Promise<Sandbox> {
    const conn = connect(options);
    const raw = await call(conn, { method: "GET", path: "/sandboxes/" + segment(sandboxId, "sandboxId"), signal: options.signal });
    return new Sandbox(conn, sandboxData(raw));
  }

  /**
   * Restores a paused sandbox (on the same or another host) and resolves
   * with it running. Resuming a running sandbox returns it unchanged.
   */
  static async resume(sandboxId: string, options: RequestOptions = {}): Promise<Sandbox> {
    const conn = connect(options);
    const raw = await call(conn, {
      method: "POST",
      path: `/sandboxes/${segment(sandboxId, "sandboxId")}/resume`,
      signal: options.signal,
    });
    return new Sandbox(conn, sandboxData(raw));
  }

  /** The sizes, caps and monthly usage of the API key's plan. */
  static async limits(options: RequestOptions = {}): Promise<Limits> {
    const conn = connect(options);
    const raw = await call(conn, { method: "GET", path: "/limits", signal: options.signal });
    const c = camelize(raw) as Record<string, unknown>;
    return {
      ...(c as unknown as Limits),
      allowedSizes: Array.isArray(c["allowedSizes"]) ? (c["allowedSizes"] as string[]) : [],
      sizes: Array.isArray(c["sizes"]) ? (c["sizes"] as SizeInfo[]) : [],
      usageResetsAt: toDate(c["usageResetsAt"]) ?? new Date(NaN),
    };
  }

  /** The template catalog of the server. */
  static async templates(options: RequestOptions = {}): Promise<Template[]> {
    const conn = connect(options);
    const raw = await call(conn, { method: "GET", path: "/templates", signal: options.signal });
    const data = isObject(raw) ? raw["data"] : undefined;
    return Array.isArray(data) ? (camelize(data) as Template[]) : [];
  }

  /**
   * Every sandbox of the account, newest first, fetching pages as the
   * iteration goes: `for await (const sbx of Sandbox.list({ status: "running" }))`.
   */
  static async *list(options: ListOptions = {}): AsyncGenerator<Sandbox, void, undefined> {
    const conn = connect(options);
    let cursor: string | undefined;
    for (;;) {
      const raw = await call(conn, {
        method: "GET",
        path: "/sandboxes",
        query: {
          status: options.status,
          limit: options.pageSize === undefined ? undefined : String(options.pageSize),
          cursor,
        },
        signal: options.signal,
      });
      if (!isObject(raw)) {
        throw new OrkestrError({ code: "invalid_response", status: 200, message: "the API's answer is not a page of sandboxes" });
      }
      const data = Array.isArray(raw["data"]) ? raw["data"] : [];
      for (const item of data) yield new Sandbox(conn, sandboxData(item));
      const next = raw["next_cursor"];
      // A cursor that does not move would loop forever.
      if (typeof next !== "string" || next === "" || next === cursor) return;
      cursor = next;
    }
  }

  #path(suffix = ""): string {
    return `/sandboxes/${segment(this.id, "sandbox id")}${suffix}`;
  }

  #update(raw: unknown): void {
    Object.assign(this, sandboxData(raw));
  }

  /** Reloads the fields from the API. */
  async refresh(options: CallOptions = {}): Promise<this> {
    this.#update(await call(this.#conn, { method: "GET", path: this.#path(), signal: options.signal }));
    return this;
  }

  /**
   * Changes a running or paused sandbox: timeoutSeconds is the running time
   * left counted from now; metadata replaces the whole map.
   */
  async update(changes: { timeoutSeconds?: number; metadata?: Record<string, string> }, options: CallOptions = {}): Promise<this> {
    const body = snakify({ timeoutSeconds: changes.timeoutSeconds, metadata: changes.metadata });
    this.#update(await call(this.#conn, { method: "PATCH", path: this.#path(), json: body, signal: options.signal }));
    return this;
  }

  /**
   * Runs command with /bin/sh -c and resolves when it exits, with any exit
   * code. Throws ExecTimeout (with the output so far) after timeoutSeconds,
   * and NetworkPolicyError (with the result) if it exited non-zero after the
   * network policy blocked a connection. Never retried.
   */
  async exec(command: string, options: ExecOptions = {}): Promise<ExecResult> {
    const body = execBody(command, options);
    const resp = await send(this.#conn, { method: "POST", path: this.#path("/exec"), json: body, signal: options.signal });
    const requestId = resp.headers.get("X-Request-Id") ?? undefined;
    const raw: unknown = await resp.json();
    if (!isObject(raw)) {
      throw new OrkestrError({ code: "invalid_response", status: resp.status, requestId, message: "the API's answer is not an exec result" });
    }
    const result: ExecResult = {
      stdout: typeof raw["stdout"] === "string" ? raw["stdout"] : "",
      stderr: typeof raw["stderr"] === "string" ? raw["stderr"] : "",
      exitCode: Number(raw["exit_code"] ?? -1),
      durationMs: Number(raw["duration_ms"] ?? 0),
      blockedConnections: blocked(raw["blocked_connections"]),
      oomKilled: raw["oom_killed"] === true,
    };
    if (result.exitCode !== 0 && result.blockedConnections.length > 0) throw new NetworkPolicyError(result, requestId);
    return result;
  }

  /**
   * Runs command like exec and yields its output as it is written:
   * `for await (const chunk of sbx.execStream("python long_task.py"))`.
   * The iteration ends when the command exits; it throws ExecTimeout,
   * NetworkPolicyError or another OrkestrError as exec would. `wait()` gives
   * the exit code. Breaking out of the loop closes the stream (the command
   * runs on to its end or timeout).
   */
  execStream(command: string, options: ExecOptions = {}): ExecStream {
    const body = execBody(command, options);
    return new ExecStream(() =>
      sendStream(this.#conn, { method: "POST", path: this.#path("/exec/stream"), json: body, accept: EXEC_FRAMES, signal: options.signal }),
    );
  }

  /**
   * This sandbox's live CPU and memory, a ~60 s window of samples and its
   * lifetime totals. `since` limits samples to those newer than it.
   */
  /**
   * Opens an interactive terminal (a PTY) in the sandbox running
   * `options.command`, or root's login shell. Needs Node.js. See Terminal.
   */
  async terminal(options: TerminalOptions = {}): Promise<Terminal> {
    return openTerminal(this.#conn, this.#path("/pty"), options);
  }

  async metrics(options: CallOptions & { since?: Date } = {}): Promise<Metrics> {
    const raw = await call(this.#conn, {
      method: "GET",
      path: this.#path("/metrics"),
      query: { since: options.since?.toISOString() },
      signal: options.signal,
    });
    const c = camelize(raw) as Record<string, unknown>;
    const samples = Array.isArray(c["samples"]) ? (c["samples"] as Record<string, unknown>[]) : [];
    return {
      ...(c as unknown as Metrics),
      cpu: (c["cpu"] as Metrics["cpu"]) ?? null,
      memory: (c["memory"] as Metrics["memory"]) ?? null,
      samples: samples.map((s) => ({ ...(s as unknown as MetricSample), t: toDate(s["t"]) ?? new Date(NaN) })),
    };
  }

  /**
   * Snapshots memory + disk and stops the clock and meter; resolves with the
   * sandbox id to pass to Sandbox.resume from any process. When the server
   * keeps snapshots in a store it resolves only once the snapshot is
   * durable there (503 `snapshot_store_unavailable`: still running). Over
   * the plan's snapshot cap it throws SnapshotCapReached. Not retried.
   */
  async pause(options: CallOptions = {}): Promise<string> {
    const raw = await call(this.#conn, { method: "POST", path: this.#path("/pause"), signal: options.signal });
    this.status = "paused";
    this.expiresAt = null;
    return isObject(raw) && typeof raw["id"] === "string" ? raw["id"] : this.id;
  }

  /**
   * Makes `count` running clones of this (running or paused) sandbox: each
   * its own id and network identity, with the same memory, processes,
   * files, env and metadata. A running sandbox keeps running. All or
   * nothing: over the plan's concurrency it throws PlanLimitError
   * (concurrency_limit) and no clone is made; over the plan's maxFork,
   * PlanLimitError (fork_limit). Not retried.
   */
  async fork(count = 1, options: CallOptions = {}): Promise<Sandbox[]> {
    const raw = await call(this.#conn, { method: "POST", path: this.#path("/fork"), json: { count }, signal: options.signal });
    const data = isObject(raw) && Array.isArray(raw["data"]) ? raw["data"] : [];
    return data.map((item) => new Sandbox(this.#conn, sandboxData(item)));
  }

  /** Resumes this (paused) sandbox and refreshes its fields. */
  async resume(options: CallOptions = {}): Promise<this> {
    this.#update(await call(this.#conn, { method: "POST", path: this.#path("/resume"), signal: options.signal }));
    return this;
  }

  /**
   * Ends the sandbox: the VM and any in-memory state are gone; the record
   * stays in the account's history. Terminating twice is fine.
   */
  async terminate(options: CallOptions = {}): Promise<void> {
    this.#update(await call(this.#conn, { method: "DELETE", path: this.#path(), signal: options.signal }));
  }

  /** Plain data, for JSON.stringify and console.log (no key, no handle). */
  toJSON(): SandboxData {
    const { files: _f, processes: _p, ...rest } = this;
    return rest as SandboxData;
  }
}

/**
 * A running command's output as it arrives. Iterate it once with for await;
 * `wait()` resolves with how the command ended (consuming any output not yet
 * read); `close()` abandons it.
 */
export class ExecStream implements AsyncIterable<ExecChunk> {
  #start: () => Promise<StreamResponse>;
  #started = false;
  #done: Promise<{ exitCode: number; durationMs: number; blockedConnections: BlockedConnection[] }> | undefined;
  #iter: AsyncGenerator<ExecChunk, void, undefined> | undefined;
  #failed: { error: unknown } | undefined;

  /** @internal */
  constructor(start: () => Promise<StreamResponse>) {
    this.#start = start;
  }

  [Symbol.asyncIterator](): AsyncGenerator<ExecChunk, void, undefined> {
    if (this.#started) {
      throw new OrkestrError({ code: "invalid_argument", status: 0, message: "an exec stream can be iterated only once" });
    }
    this.#started = true;
    this.#iter = this.#run();
    return this.#iter;
  }

  /**
   * Resolves with the exit code, duration and blocked connections once the
   * command has ended, discarding output not yet read; rejects as the
   * iteration would.
   */
  async wait(): Promise<{ exitCode: number; durationMs: number; blockedConnections: BlockedConnection[] }> {
    if (!this.#started) {
      for await (const _ of this) {
        // output discarded
      }
    } else if (this.#iter) {
      for (;;) {
        const r = await this.#iter.next();
        if (r.done) break;
      }
    }
    if (this.#failed) throw this.#failed.error;
    if (!this.#done) throw new OrkestrError({ code: "stream_closed", status: 0, message: "the exec stream was closed before the command ended" });
    return this.#done;
  }

  /** Abandons the output (the command runs on to its end or timeout). */
  async close(): Promise<void> {
    this.#started = true;
    await this.#iter?.return();
  }

  async *#run(): AsyncGenerator<ExecChunk, void, undefined> {
    try {
      yield* this.#read();
    } catch (err) {
      // wait() rejects with the same error as the iteration.
      this.#failed = { error: err };
      throw err;
    }
  }

  /** Yields the chunks of a framed stream; true once the closing event came. */
  async *#frames(
    reader: BodyReader,
    status: number,
    requestId: string | undefined,
    settle: (exit: { exitCode: number; durationMs: number; blockedConnections: BlockedConnection[] }) => void,
  ): AsyncGenerator<ExecChunk, boolean, undefined> {
    // The incomplete UTF-8 sequence at the end of each stream's last chunk,
    // decoded with the next one; text is decoded only when `data` is read.
    const carry: Record<"stdout" | "stderr", Uint8Array> = { stdout: new Uint8Array(0), stderr: new Uint8Array(0) };
    const frames = readFrames(reader);
    for (;;) {
      const r = await frames.next();
      if (r.done) {
        throw new OrkestrError({
          code: "stream_ended",
          status,
          requestId,
          message: "the exec stream ended before the command did (connection lost?); the command may still be running",
        });
      }
      const { type, payload } = r.value;
      if (type === 1 || type === 2) {
        const stream = type === 1 ? "stdout" : "stderr";
        const cut = utf8Cut(payload);
        const prev = carry[stream];
        carry[stream] = payload.slice(cut);
        yield lazyChunk(stream, payload, prev, payload.subarray(0, cut));
        continue;
      }
      if (type !== 3 && type !== 4) continue; // unknown frames are skipped
      // A character the output ended inside of becomes U+FFFD (its bytes
      // came with the chunk before).
      for (const stream of ["stdout", "stderr"] as const) {
        if (carry[stream].length > 0) yield lazyChunk(stream, new Uint8Array(0), carry[stream], new Uint8Array(0));
      }
      let ev: Record<string, unknown>;
      try {
        const parsed: unknown = JSON.parse(new TextDecoder().decode(payload));
        ev = isObject(parsed) ? parsed : {};
      } catch {
        throw new OrkestrError({ code: "invalid_response", status, requestId, message: "the exec stream sent a closing event that is not JSON" });
      }
      if (type === 3) {
        const exit = {
          exitCode: Number(ev["exit_code"] ?? -1),
          durationMs: Number(ev["duration_ms"] ?? 0),
          blockedConnections: blocked(ev["blocked_connections"]),
        };
        if (exit.exitCode !== 0 && exit.blockedConnections.length > 0) {
          throw new NetworkPolicyError({ stdout: "", stderr: "", ...exit }, requestId);
        }
        settle(exit);
        return true;
      }
      const e = isObject(ev["error"]) ? ev["error"] : {};
      const code = typeof e["code"] === "string" && e["code"] !== "" ? e["code"] : "internal";
      const message = typeof e["message"] === "string" ? e["message"] : "the command failed";
      throw classify({
        code,
        status: statusOfCode(code),
        message: requestId ? `${message} (request ${requestId})` : message,
        requestId,
        details: isObject(e["details"]) ? e["details"] : {},
      });
    }
  }

  async *#read(): AsyncGenerator<ExecChunk, void, undefined> {
    const resp = await this.#start();
    const requestId = resp.headers.get("X-Request-Id") ?? undefined;
    const reader = resp.reader;
    const dec = new TextDecoder();
    let buf = "";
    let finished = false;
    const settle = (exit: { exitCode: number; durationMs: number; blockedConnections: BlockedConnection[] }) => {
      this.#done = Promise.resolve(exit);
    };
    const framed = (resp.headers.get("Content-Type") ?? "").split(";")[0]!.trim() === EXEC_FRAMES;
    try {
      if (framed) {
        finished = yield* this.#frames(reader, resp.status, requestId, settle);
        return;
      }
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          buf += dec.decode();
        } else {
          buf += dec.decode(value, { stream: true });
        }
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line === "") continue;
          let ev: unknown;
          try {
            ev = JSON.parse(line);
          } catch {
            throw new OrkestrError({ code: "invalid_response", status: resp.status, requestId, message: "the exec stream sent a line that is not JSON" });
          }
          if (!isObject(ev)) continue;
          const type = ev["type"];
          if (type === "stdout" || type === "stderr") {
            const data = typeof ev["data"] === "string" ? ev["data"] : "";
            const chunk = { stream: type, data };
            Object.defineProperty(chunk, "bytes", { value: new TextEncoder().encode(data), enumerable: false });
            yield chunk as ExecChunk;
          } else if (type === "exit") {
            finished = true;
            const exit = {
              exitCode: Number(ev["exit_code"] ?? -1),
              durationMs: Number(ev["duration_ms"] ?? 0),
              blockedConnections: blocked(ev["blocked_connections"]),
            };
            if (exit.exitCode !== 0 && exit.blockedConnections.length > 0) {
              throw new NetworkPolicyError({ stdout: "", stderr: "", ...exit }, requestId);
            }
            settle(exit);
            return;
          } else if (type === "error") {
            finished = true;
            const e = isObject(ev["error"]) ? ev["error"] : {};
            const code = typeof e["code"] === "string" && e["code"] !== "" ? e["code"] : "internal";
            const message = typeof e["message"] === "string" ? e["message"] : "the command failed";
            throw classify({
              code,
              status: statusOfCode(code),
              message: requestId ? `${message} (request ${requestId})` : message,
              requestId,
              details: isObject(e["details"]) ? e["details"] : {},
            });
          }
          // Unknown event types are skipped, for forward compatibility.
        }
        // A line longer than any the API sends: something else is answering.
        if (buf.length > 64 << 20) {
          throw new OrkestrError({ code: "invalid_response", status: resp.status, requestId, message: "the exec stream sent a line over 64 MiB" });
        }
        if (done) break;
      }
      throw new OrkestrError({
        code: "stream_ended",
        status: resp.status,
        requestId,
        message: "the exec stream ended before the command did (connection lost?); the command may still be running",
      });
    } catch (err) {
      if (!finished && err instanceof OrkestrError === false) {
        const sig = err as { name?: string };
        if (sig?.name === "AbortError") throw err;
        throw new OrkestrError({
          code: "connection_error",
          status: 0,
          requestId,
          message: `the exec stream broke off: ${err instanceof Error ? err.message : String(err)}`,
          cause: err,
        });
      }
      throw err;
    } finally {
      // Breaking out early, or an error: release the connection.
      await reader.cancel().catch(() => {});
    }
  }
}

/** Where b ends if an incomplete UTF-8 sequence at its end is held back. */
function utf8Cut(b: Uint8Array): number {
  const n = b.length;
  for (let i = 1; i <= Math.min(3, n); i++) {
    const c = b[n - i]!;
    if ((c & 0xc0) !== 0x80) {
      const need = (c & 0xe0) === 0xc0 ? 2 : (c & 0xf0) === 0xe0 ? 3 : (c & 0xf8) === 0xf0 ? 4 : 1;
      return need > i ? n - i : n;
    }
  }
  return n;
}

/**
 * A chunk whose text, the bytes of head then body, is decoded when `data`
 * is first read (head: the end of a character the chunk before began).
 * Nothing is joined or copied until then: a reader of `bytes` alone paid
 * for a copy of every chunk that followed a cut character, most of them
 * for binary output. `bytes` is not enumerable, so a chunk still
 * compares, prints and serializes as `{ stream, data }`.
 */
function lazyChunk(stream: "stdout" | "stderr", bytes: Uint8Array, head: Uint8Array, body: Uint8Array): ExecChunk {
  let data: string | undefined;
  const chunk = {
    stream,
    get data(): string {
      if (data === undefined) {
        const dec = new TextDecoder();
        data = head.length === 0 ? dec.decode(body) : dec.decode(head, { stream: true }) + dec.decode(body);
      }
      return data;
    },
  };
  Object.defineProperty(chunk, "bytes", { value: bytes, enumerable: false });
  return chunk as ExecChunk;
}

/**
 * Reads the binary framing: per frame a type byte, a 4-byte big-endian
 * length, the payload. Output payloads (types 1 and 2) are yielded piece by
 * piece as views of what the connection delivered, never copied or joined;
 * the JSON payloads of the closing events are joined.
 */
async function* readFrames(
  reader: BodyReader,
): AsyncGenerator<{ type: number; payload: Uint8Array }, boolean, undefined> {
  const hdr = new Uint8Array(5);
  let hdrHave = 0;
  let type = -1;
  let left = 0; // payload bytes of the current frame still to come
  let json: Uint8Array[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return hdrHave === 0 && type < 0;
    let off = 0;
    while (off < value.length) {
      if (type < 0) {
        const k = Math.min(5 - hdrHave, value.length - off);
        hdr.set(value.subarray(off, off + k), hdrHave);
        hdrHave += k;
        off += k;
        if (hdrHave < 5) break;
        hdrHave = 0;
        type = hdr[0]!;
        left = ((hdr[1]! << 24) >>> 0) + (hdr[2]! << 16) + (hdr[3]! << 8) + hdr[4]!;
        if (left > 16 << 20) throw new Error(`a frame of ${left} bytes`);
        json = [];
        if (left === 0) {
          if (type === 3 || type === 4) yield { type, payload: new Uint8Array(0) };
          type = -1;
        }
        continue;
      }
      const k = Math.min(left, value.length - off);
      const piece = value.subarray(off, off + k);
      off += k;
      left -= k;
      if (type === 3 || type === 4) {
        json.push(piece);
        if (left === 0) {
          const all = new Uint8Array(json.reduce((n, p) => n + p.length, 0));
          let at = 0;
          for (const p of json) {
            all.set(p, at);
            at += p.length;
          }
          yield { type, payload: all };
        }
      } else if (k > 0) {
        yield { type, payload: piece };
      }
      if (left === 0) type = -1;
    }
  }
}

/** File operations of one sandbox. Paths are absolute paths inside it. */
export class Files extends FileCalls {
  readonly #conn: Connection;
  readonly #id: string;

  /** @internal */
  constructor(conn: Connection, id: string) {
    super(conn, id);
    this.#conn = conn;
    this.#id = id;
  }

  #req(method: "GET" | "PUT" | "DELETE", suffix: string, path: string, user?: User) {
    if (typeof path !== "string" || path === "") {
      throw new OrkestrError({ code: "invalid_argument", status: 0, message: "a file path must be a non-empty absolute path, e.g. /workspace/main.py" });
    }
    return { method, path: `/sandboxes/${segment(this.#id, "sandbox id")}${suffix}`, query: { path, user } };
  }

  /** Writes text (as UTF-8), replacing the file and creating its parent directories. */
  async write(path: string, content: string, options: UserOptions = {}): Promise<void> {
    await this.writeBytes(path, new TextEncoder().encode(content), options);
  }

  /** Writes bytes, replacing the file and creating its parent directories. */
  async writeBytes(path: string, data: Uint8Array, options: UserOptions = {}): Promise<void> {
    if (!(data instanceof Uint8Array)) {
      throw new OrkestrError({ code: "invalid_argument", status: 0, message: "writeBytes needs a Uint8Array" });
    }
    await call(this.#conn, { ...this.#req("PUT", "/files", path, options.user), bytes: data, signal: options.signal });
  }

  /** The file's content as bytes. */
  async readBytes(path: string, options: UserOptions = {}): Promise<Uint8Array> {
    const resp = await send(this.#conn, { ...this.#req("GET", "/files", path, options.user), signal: options.signal });
    return new Uint8Array(await resp.arrayBuffer());
  }

  /** The file's content decoded as UTF-8 (invalid bytes become U+FFFD). */
  async read(path: string, options: UserOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.readBytes(path, options));
  }

  /** The entries of a directory, not recursive, sorted by name. */
  async list(path: string, options: UserOptions = {}): Promise<FileEntry[]> {
    const raw = await call(this.#conn, { ...this.#req("GET", "/files/list", path, options.user), signal: options.signal });
    const entries = isObject(raw) && Array.isArray(raw["entries"]) ? raw["entries"] : [];
    return entries.filter(isObject).map((e) => {
      const c = camelize(e) as Record<string, unknown>;
      return { ...(c as unknown as FileEntry), modifiedAt: toDate(c["modifiedAt"]) ?? new Date(NaN) };
    });
  }

  /**
   * Extracts a tar archive (plain, gzip or zstd) into the directory `dir`
   * (created if missing), streamed: `archive` may be a ReadableStream, so
   * it never has to be in memory whole. Modes and symlinks are kept;
   * entries that are absolute, climb out with "..", lead out through a
   * symlink or are device nodes are refused (an OrkestrError with code
   * `invalid_archive`). Not retried.
   */
  async writeArchive(
    dir: string,
    archive: Uint8Array | ReadableStream<Uint8Array>,
    options: CallOptions = {},
  ): Promise<{ path: string; entries: number; bytes: number }> {
    const r = this.#req("PUT", "/files/archive", dir);
    const raw =
      archive instanceof Uint8Array
        ? await call(this.#conn, { ...r, bytes: archive, signal: options.signal })
        : await putStream(this.#conn, { ...r, stream: { body: archive, contentType: "application/x-tar" }, signal: options.signal });
    const o = isObject(raw) ? raw : {};
    return { path: String(o["path"] ?? dir), entries: Number(o["entries"] ?? 0), bytes: Number(o["bytes"] ?? 0) };
  }

  /**
   * The directory `dir` as a tar archive (compressed with `compression`),
   * as a stream of bytes; symlinks are archived as links.
   */
  async readArchive(
    dir: string,
    options: CallOptions & { compression?: "gzip" | "zstd" } = {},
  ): Promise<ReadableStream<Uint8Array>> {
    const r = this.#req("GET", "/files/archive", dir);
    return getBody(this.#conn, { ...r, query: { ...r.query, compression: options.compression }, signal: options.signal });
  }

  /**
   * Streams `data` into the file at `path` without holding it in memory
   * (written to a temporary name and renamed into place when complete, so
   * an upload cut short leaves the old file, or none). Not retried.
   */
  async writeStream(path: string, data: ReadableStream<Uint8Array>, options: UserOptions = {}): Promise<void> {
    const r = this.#req("PUT", "/files", path, options.user);
    await putStream(this.#conn, { ...r, stream: { body: data, contentType: "application/octet-stream" }, signal: options.signal });
  }

  /** The file at `path` as a stream of bytes, without holding it in memory. */
  async readStream(path: string, options: UserOptions = {}): Promise<ReadableStream<Uint8Array>> {
    return getBody(this.#conn, { ...this.#req("GET", "/files", path, options.user), signal: options.signal });
  }

  /** Deletes a file, or a directory with everything in it. */
  async delete(path: string, options: UserOptions = {}): Promise<void> {
    await call(this.#conn, { ...this.#req("DELETE", "/files", path, options.user), signal: options.signal });
  }
}
