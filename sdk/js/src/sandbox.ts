// Sandbox: the handle for one sandbox of the API and the static calls that
// create, resume, list and describe sandboxes and plans.

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
import { FileCalls, Processes, type User } from "./processes.js";

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
  data: string;
}

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
    return new ExecStream(() => send(this.#conn, { method: "POST", path: this.#path("/exec/stream"), json: body, signal: options.signal }));
  }

  /**
   * This sandbox's live CPU and memory, a ~60 s window of samples and its
   * lifetime totals. `since` limits samples to those newer than it.
   */
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
   * sandbox id to pass to Sandbox.resume from any process. Over the plan's
   * snapshot cap it throws SnapshotCapReached. Not retried.
   */
  async pause(options: CallOptions = {}): Promise<string> {
    const raw = await call(this.#conn, { method: "POST", path: this.#path("/pause"), signal: options.signal });
    this.status = "paused";
    this.expiresAt = null;
    return isObject(raw) && typeof raw["id"] === "string" ? raw["id"] : this.id;
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
  #start: () => Promise<Response>;
  #started = false;
  #done: Promise<{ exitCode: number; durationMs: number; blockedConnections: BlockedConnection[] }> | undefined;
  #iter: AsyncGenerator<ExecChunk, void, undefined> | undefined;
  #failed: { error: unknown } | undefined;

  /** @internal */
  constructor(start: () => Promise<Response>) {
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

  async *#read(): AsyncGenerator<ExecChunk, void, undefined> {
    const resp = await this.#start();
    const requestId = resp.headers.get("X-Request-Id") ?? undefined;
    if (!resp.body) throw new OrkestrError({ code: "invalid_response", status: resp.status, requestId, message: "the exec stream has no body" });
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    let finished = false;
    const settle = (exit: { exitCode: number; durationMs: number; blockedConnections: BlockedConnection[] }) => {
      this.#done = Promise.resolve(exit);
    };
    try {
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
            yield { stream: type, data: typeof ev["data"] === "string" ? ev["data"] : "" };
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

  #req(method: "GET" | "PUT" | "DELETE", suffix: string, path: string) {
    if (typeof path !== "string" || path === "") {
      throw new OrkestrError({ code: "invalid_argument", status: 0, message: "a file path must be a non-empty absolute path, e.g. /workspace/main.py" });
    }
    return { method, path: `/sandboxes/${segment(this.#id, "sandbox id")}${suffix}`, query: { path } };
  }

  /** Writes text (as UTF-8), replacing the file and creating its parent directories. */
  async write(path: string, content: string, options: CallOptions = {}): Promise<void> {
    await this.writeBytes(path, new TextEncoder().encode(content), options);
  }

  /** Writes bytes, replacing the file and creating its parent directories. */
  async writeBytes(path: string, data: Uint8Array, options: CallOptions = {}): Promise<void> {
    if (!(data instanceof Uint8Array)) {
      throw new OrkestrError({ code: "invalid_argument", status: 0, message: "writeBytes needs a Uint8Array" });
    }
    await call(this.#conn, { ...this.#req("PUT", "/files", path), bytes: data, signal: options.signal });
  }

  /** The file's content as bytes. */
  async readBytes(path: string, options: CallOptions = {}): Promise<Uint8Array> {
    const resp = await send(this.#conn, { ...this.#req("GET", "/files", path), signal: options.signal });
    return new Uint8Array(await resp.arrayBuffer());
  }

  /** The file's content decoded as UTF-8 (invalid bytes become U+FFFD). */
  async read(path: string, options: CallOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.readBytes(path, options));
  }

  /** The entries of a directory, not recursive, sorted by name. */
  async list(path: string, options: CallOptions = {}): Promise<FileEntry[]> {
    const raw = await call(this.#conn, { ...this.#req("GET", "/files/list", path), signal: options.signal });
    const entries = isObject(raw) && Array.isArray(raw["entries"]) ? raw["entries"] : [];
    return entries.filter(isObject).map((e) => {
      const c = camelize(e) as Record<string, unknown>;
      return { ...(c as unknown as FileEntry), modifiedAt: toDate(c["modifiedAt"]) ?? new Date(NaN) };
    });
  }

  /** Deletes a file, or a directory with everything in it. */
  async delete(path: string, options: CallOptions = {}): Promise<void> {
    await call(this.#conn, { ...this.#req("DELETE", "/files", path), signal: options.signal });
  }
}
