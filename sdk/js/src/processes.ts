// Background processes, users and the extended file calls (stat, exists,
// mkdir, rename, watch) of one sandbox.

import { OrkestrError, classify, statusOfCode } from "./errors.js";
import { type CallOptions, type Connection, call, isObject, segment, send, toDate } from "./http.js";

/** Who a command, process or file call runs as. Default "root". */
export type User = "root" | "user";

/** A piece of a process's output. */
export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: string;
}

export interface StartOptions extends CallOptions {
  /** Added to the sandbox's env. Keys pass unchanged. */
  env?: Record<string, string>;
  /** Working directory. Default "/workspace". */
  cwd?: string;
  /** "root" (default) or "user" (uid 1000, home /home/user). */
  user?: User;
}

export interface OutputOptions extends CallOptions {
  /** Start from the oldest byte still in the process's 1 MiB buffer instead of now. */
  replay?: boolean;
  /** Told how many bytes this reader missed (overwritten before they were read). */
  onDropped?: (bytes: number) => void;
}

/** What the API says about a background process. */
export interface ProcessInfo {
  /** Its pid inside the sandbox. */
  pid: number;
  command: string;
  cwd: string;
  user: User;
  startedAt: Date;
  running: boolean;
  /** Once ended; 128+n when killed by signal n. */
  exitCode: number | null;
  /** The signal that killed it, if one did. */
  signal: number | null;
  endedAt: Date | null;
}

/** The sandbox was paused or stopped while attached or watching; attach or watch again after a resume. */
export class Detached extends OrkestrError {
  constructor(what: string) {
    super({ code: "detached", status: 0, message: `${what} ended: the sandbox was paused or stopped` });
    this.name = "Detached";
  }
}

function processInfo(raw: unknown): ProcessInfo {
  const r = isObject(raw) ? raw : {};
  return {
    pid: Number(r["pid"] ?? 0),
    command: String(r["command"] ?? ""),
    cwd: String(r["cwd"] ?? ""),
    user: (r["user"] === "user" ? "user" : "root") as User,
    startedAt: toDate(r["started_at"]) ?? new Date(NaN),
    running: r["running"] === true,
    exitCode: typeof r["exit_code"] === "number" ? r["exit_code"] : null,
    signal: typeof r["signal"] === "number" ? r["signal"] : null,
    endedAt: toDate(r["ended_at"]),
  };
}

/** Reads an NDJSON response line by line. */
async function* ndjson(resp: Response, what: string): AsyncGenerator<Record<string, unknown>, void, undefined> {
  const requestId = resp.headers.get("X-Request-Id") ?? undefined;
  if (!resp.body) throw new OrkestrError({ code: "invalid_response", status: resp.status, requestId, message: `the ${what} has no body` });
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      buf += done ? dec.decode() : dec.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line === "") continue;
        let ev: unknown;
        try {
          ev = JSON.parse(line);
        } catch {
          throw new OrkestrError({ code: "invalid_response", status: resp.status, requestId, message: `the ${what} sent a line that is not JSON` });
        }
        if (!isObject(ev)) continue;
        if (ev["type"] === "error") {
          const e = isObject(ev["error"]) ? ev["error"] : {};
          const code = typeof e["code"] === "string" && e["code"] !== "" ? e["code"] : "internal";
          throw classify({
            code,
            status: statusOfCode(code),
            message: typeof e["message"] === "string" ? e["message"] : `the ${what} failed`,
            requestId,
            details: isObject(e["details"]) ? e["details"] : {},
          });
        }
        yield ev;
      }
      if (buf.length > 64 << 20) {
        throw new OrkestrError({ code: "invalid_response", status: resp.status, requestId, message: `the ${what} sent a line over 64 MiB` });
      }
      if (done) break;
    }
    throw new OrkestrError({ code: "stream_ended", status: resp.status, requestId, message: `the ${what} ended early (connection lost?)` });
  } finally {
    await reader.cancel().catch(() => {});
  }
}

/**
 * A command running in the background: it outlives the call that started
 * it and every output stream, and survives pause/resume. Its fields are as
 * of the last call that returned it.
 */
export class Process implements ProcessInfo {
  pid!: number;
  command!: string;
  cwd!: string;
  user!: User;
  startedAt!: Date;
  running!: boolean;
  exitCode!: number | null;
  signal!: number | null;
  endedAt!: Date | null;
  readonly #conn: Connection;
  readonly #base: string;

  /** @internal */
  constructor(conn: Connection, sandboxId: string, info: ProcessInfo) {
    this.#conn = conn;
    Object.assign(this, info);
    this.#base = `/sandboxes/${segment(sandboxId, "sandbox id")}/processes/${info.pid}`;
  }

  /**
   * Yields the process's output as it is produced (from now, or from the
   * oldest buffered byte with replay) until it ends, then updates this
   * object's fields. Breaking out of the loop or aborting detaches; the
   * process goes on. Throws Detached when the sandbox pauses meanwhile.
   */
  async *output(options: OutputOptions = {}): AsyncGenerator<OutputChunk, void, undefined> {
    const resp = await send(this.#conn, {
      method: "GET",
      path: `${this.#base}/output`,
      query: { replay: options.replay ? "true" : undefined },
      signal: options.signal,
    });
    for await (const ev of ndjson(resp, "process output")) {
      const type = ev["type"];
      if (type === "stdout" || type === "stderr") {
        yield { stream: type, data: typeof ev["data"] === "string" ? ev["data"] : "" };
      } else if (type === "dropped") {
        options.onDropped?.(Number(ev["bytes"] ?? 0));
      } else if (type === "exit") {
        Object.assign(this, processInfo(ev["process"]));
        return;
      } else if (type === "detached") {
        throw new Detached("the process output");
      }
    }
  }

  /** Writes text or bytes (at most 512 KiB a call) to the process's stdin. */
  async sendStdin(data: string | Uint8Array, options: CallOptions = {}): Promise<void> {
    const body =
      typeof data === "string" ? { data } : { data_base64: btoa(Array.from(data, (b) => String.fromCharCode(b)).join("")) };
    await call(this.#conn, { method: "POST", path: `${this.#base}/stdin`, json: body, signal: options.signal });
  }

  /** Closes the process's stdin (closing twice is fine). */
  async closeStdin(options: CallOptions = {}): Promise<void> {
    await call(this.#conn, { method: "POST", path: `${this.#base}/stdin`, json: { eof: true }, signal: options.signal });
  }

  /** Sends a signal (default "TERM") to the process's group; an ended process is not signalled. */
  async kill(signal: number | string = "TERM", options: CallOptions = {}): Promise<void> {
    await call(this.#conn, { method: "POST", path: `${this.#base}/signal`, json: { signal }, signal: options.signal });
  }

  /** Resolves once the process has ended (or rejects when signal aborts), with this object updated. */
  async wait(options: CallOptions = {}): Promise<this> {
    for (;;) {
      const raw = await call(this.#conn, { method: "POST", path: `${this.#base}/wait`, json: { timeout_seconds: 60 }, signal: options.signal });
      Object.assign(this, processInfo(raw));
      if (!this.running) return this;
    }
  }

  /** Refreshes this object's fields. */
  async refresh(options: CallOptions = {}): Promise<this> {
    Object.assign(this, processInfo(await call(this.#conn, { method: "GET", path: this.#base, signal: options.signal })));
    return this;
  }

  /** Plain data, for JSON.stringify and console.log. */
  toJSON(): ProcessInfo {
    return { ...this };
  }
}

/** Background processes of one sandbox. */
export class Processes {
  readonly #conn: Connection;
  readonly #id: string;

  /** @internal */
  constructor(conn: Connection, id: string) {
    this.#conn = conn;
    this.#id = id;
  }

  #path(suffix = ""): string {
    return `/sandboxes/${segment(this.#id, "sandbox id")}/processes${suffix}`;
  }

  /** Starts command with /bin/sh -c in the background; resolves as soon as it runs. Never retried. */
  async start(command: string, options: StartOptions = {}): Promise<Process> {
    if (typeof command !== "string" || command === "") {
      throw new OrkestrError({ code: "invalid_argument", status: 0, message: "command must be a non-empty string" });
    }
    const raw = await call(this.#conn, {
      method: "POST",
      path: this.#path(),
      json: { command, env: options.env, cwd: options.cwd, user: options.user },
      signal: options.signal,
    });
    return new Process(this.#conn, this.#id, processInfo(raw));
  }

  /** The processes started through the API: running ones and the most recent ended ones, oldest first. */
  async list(options: CallOptions = {}): Promise<Process[]> {
    const raw = await call(this.#conn, { method: "GET", path: this.#path(), signal: options.signal });
    const list = isObject(raw) && Array.isArray(raw["processes"]) ? raw["processes"] : [];
    return list.map((p) => new Process(this.#conn, this.#id, processInfo(p)));
  }

  /** The process with this pid; an unknown pid throws an OrkestrError with code "process_not_found". */
  async get(pid: number, options: CallOptions = {}): Promise<Process> {
    if (!Number.isInteger(pid) || pid < 1) {
      throw new OrkestrError({ code: "invalid_argument", status: 0, message: "pid must be a positive integer" });
    }
    const raw = await call(this.#conn, { method: "GET", path: this.#path(`/${pid}`), signal: options.signal });
    return new Process(this.#conn, this.#id, processInfo(raw));
  }
}

/** What files.stat answers (a final symlink is not followed). */
export interface FileStat {
  name: string;
  path: string;
  type: "file" | "dir" | "symlink" | "fifo" | "socket" | "char_device" | "block_device";
  size: number;
  /** Permission bits with setuid, setgid and sticky (0o644 is 420). */
  mode: number;
  uid: number;
  gid: number;
  owner: string | null;
  group: string | null;
  accessedAt: Date | null;
  modifiedAt: Date | null;
  changedAt: Date | null;
  symlinkTarget: string | null;
}

/** One change under a watched directory; paths are relative to it. */
export interface WatchEvent {
  type: "create" | "write" | "remove" | "rename" | "chmod" | "overflow" | "limit";
  path: string;
  /** rename: the old path. */
  from?: string;
  isDir: boolean;
}

export interface UserOptions extends CallOptions {
  /** "root" (default) or "user": whose permissions decide, who owns what is made. */
  user?: User;
}

function fileStat(raw: unknown): FileStat {
  const r = isObject(raw) ? raw : {};
  const str = (k: string) => (typeof r[k] === "string" ? (r[k] as string) : null);
  return {
    name: String(r["name"] ?? ""),
    path: String(r["path"] ?? ""),
    type: String(r["type"] ?? "file") as FileStat["type"],
    size: Number(r["size"] ?? 0),
    mode: Number(r["mode"] ?? 0),
    uid: Number(r["uid"] ?? 0),
    gid: Number(r["gid"] ?? 0),
    owner: str("owner"),
    group: str("group"),
    accessedAt: toDate(r["accessed_at"]),
    modifiedAt: toDate(r["modified_at"]),
    changedAt: toDate(r["changed_at"]),
    symlinkTarget: str("symlink_target"),
  };
}

/** @internal The extended file calls, mixed into Files. */
export class FileCalls {
  readonly #conn: Connection;
  readonly #id: string;

  constructor(conn: Connection, id: string) {
    this.#conn = conn;
    this.#id = id;
  }

  #path(suffix: string): string {
    return `/sandboxes/${segment(this.#id, "sandbox id")}/files${suffix}`;
  }

  /** Type, size, mode, owner, times and symlink target of path (a final symlink is not followed). */
  async stat(path: string, options: UserOptions = {}): Promise<FileStat> {
    return fileStat(await call(this.#conn, { method: "GET", path: this.#path("/stat"), query: { path, user: options.user }, signal: options.signal }));
  }

  /** Whether path exists (a missing path is false, not an error). */
  async exists(path: string, options: UserOptions = {}): Promise<boolean> {
    const raw = await call(this.#conn, { method: "GET", path: this.#path("/exists"), query: { path, user: options.user }, signal: options.signal });
    return isObject(raw) && raw["exists"] === true;
  }

  /** Makes a directory and (unless parents is false) its missing parents. */
  async mkdir(path: string, options: UserOptions & { parents?: boolean; mode?: number } = {}): Promise<FileStat> {
    const json = { path, parents: options.parents ?? true, mode: options.mode, user: options.user };
    return fileStat(await call(this.#conn, { method: "POST", path: this.#path("/mkdir"), json, signal: options.signal }));
  }

  /** Moves from to to; an existing to throws code "file_exists" unless overwrite. */
  async rename(from: string, to: string, options: UserOptions & { overwrite?: boolean } = {}): Promise<FileStat> {
    const json = { from, to, overwrite: options.overwrite ?? false, user: options.user };
    return fileStat(await call(this.#conn, { method: "POST", path: this.#path("/rename"), json, signal: options.signal }));
  }

  /**
   * Watches the directory path (with recursive, its subdirectories too)
   * and resolves once the watch holds, with the changes to iterate:
   * `const w = await sbx.files.watch("/workspace"); for await (const ev of w) ...`.
   * Iteration ends when the directory is removed; breaking out or aborting
   * the signal ends the watch; it throws Detached when the sandbox pauses.
   */
  async watch(path: string, options: UserOptions & { recursive?: boolean } = {}): Promise<AsyncGenerator<WatchEvent, void, undefined>> {
    const resp = await send(this.#conn, {
      method: "GET",
      path: this.#path("/watch"),
      query: { path, recursive: options.recursive ? "true" : undefined, user: options.user },
      signal: options.signal,
    });
    const lines = ndjson(resp, "watch");
    const first = await lines.next();
    if (first.done || first.value["type"] !== "started") {
      await lines.return();
      throw new OrkestrError({ code: "invalid_response", status: resp.status, message: "the watch did not start" });
    }
    return (async function* () {
      try {
        for await (const ev of lines) {
          const type = ev["type"];
          if (type === "end") return;
          if (type === "detached") throw new Detached("the watch");
          const out: WatchEvent = { type: type as WatchEvent["type"], path: String(ev["path"] ?? ""), isDir: ev["is_dir"] === true };
          if (typeof ev["from"] === "string") out.from = ev["from"];
          yield out;
        }
      } finally {
        await lines.return();
      }
    })();
  }
}
