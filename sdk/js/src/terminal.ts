// Interactive terminals (GET /v1/sandboxes/{id}/pty, a WebSocket). The
// WebSocket client is written here on node:http/node:https because Node 18
// and 20 have no global WebSocket and a browser's cannot send the
// Authorization header; so terminals need Node (or Bun/Deno's node:http).
// Binary messages are terminal bytes both ways, text messages JSON control
// messages (docs/api.md, Terminals).

import { classify, OrkestrError, statusOfCode } from "./errors.js";
import { readError, type CallOptions, type Connection } from "./http.js";

/** What a terminal runs; every field is optional. */
export interface TerminalOptions extends CallOptions {
  /** Run by `/bin/sh -c`; default: the user's login shell. */
  command?: string | undefined;
  /** Added to the sandbox's environment (TERM is xterm-256color unless set here). */
  env?: Record<string, string> | undefined;
  /** Working directory; default /workspace. */
  cwd?: string | undefined;
  /** Size, 1 to 1000; default 24 rows by 80 columns. */
  rows?: number | undefined;
  cols?: number | undefined;
  /** "root" (default) or "user" (uid 1000, HOME /home/user, its login shell). */
  user?: "root" | "user" | undefined;
}

/** How a terminal's program ended. */
export interface TerminalExit {
  /** 128+N when killed by signal N. */
  exitCode: number;
  durationMs: number;
}

// The little of Node's modules this file uses (the SDK has no @types/node).
interface NodeSocket {
  write(b: Uint8Array, cb?: (err?: Error | null) => void): boolean;
  on(ev: "data", f: (b: Uint8Array) => void): void;
  on(ev: "close" | "drain", f: () => void): void;
  on(ev: "error", f: (e: Error) => void): void;
  once(ev: "drain", f: () => void): void;
  pause(): void;
  resume(): void;
  end(): void;
  destroy(): void;
  setNoDelay?(on: boolean): void;
}
interface NodeIncoming {
  statusCode?: number;
  statusMessage?: string;
  headers: Record<string, string | string[] | undefined>;
  on(ev: "data", f: (b: Uint8Array) => void): void;
  on(ev: "end", f: () => void): void;
}
interface NodeClientRequest {
  on(ev: "upgrade", f: (res: NodeIncoming, socket: NodeSocket, head: Uint8Array) => void): void;
  on(ev: "response", f: (res: NodeIncoming) => void): void;
  on(ev: "error", f: (e: Error) => void): void;
  end(): void;
  destroy(): void;
}
interface NodeHttp {
  request(url: string, opts: { method: string; headers: Record<string, string> }): NodeClientRequest;
}
interface NodeCrypto {
  randomBytes(n: number): Uint8Array & { toString(enc: "base64"): string };
  createHash(alg: "sha1"): { update(s: string): { digest(enc: "base64"): string } };
}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** Output held for a consumer that is not reading before the socket is paused. */
const HIGH_WATER = 1 << 20;
/** Largest message accepted from the server (it sends at most 32 KiB). */
const MAX_MESSAGE = 4 << 20;

async function nodeModule<T>(name: string): Promise<T> {
  // A computed specifier, so bundlers for browsers do not try to resolve it.
  const spec = "node:" + name;
  try {
    return (await import(spec)) as T;
  } catch {
    throw new OrkestrError({
      code: "unsupported_runtime",
      status: 0,
      message: "terminals need Node.js (node:http); a browser cannot send the API key on a WebSocket, use the console's terminal there",
    });
  }
}

function checkSize(n: number | undefined, what: string): void {
  if (n !== undefined && (!Number.isInteger(n) || n < 1 || n > 1000)) {
    throw new OrkestrError({ code: "invalid_argument", status: 0, message: `${what} must be an integer from 1 to 1000` });
  }
}

/**
 * An interactive terminal in a sandbox. Iterate it for what the terminal
 * shows (`Uint8Array` chunks, byte-exact, escape sequences included); the
 * iteration ends when the program exits, then `exit` is set. Output is read
 * from the network only as fast as it is consumed, so a terminal nobody
 * reads stalls its program instead of filling memory. `close()` (or the
 * signal) hangs up, which kills the program and everything it started.
 */
export class Terminal implements AsyncIterable<Uint8Array> {
  /** The program's pid inside the sandbox. */
  pid = 0;
  /** How the program ended; null until it did. */
  exit: TerminalExit | null = null;

  readonly #socket: NodeSocket;
  readonly #mask: () => Uint8Array;
  #buf: Uint8Array = new Uint8Array(0);
  #frag: Uint8Array[] = [];
  #fragOp = 0;
  #queue: Uint8Array[] = [];
  #queued = 0;
  #paused = false;
  #ended = false;
  #error: Error | null = null;
  #wake: (() => void) | null = null;
  #started: { resolve: () => void; reject: (e: Error) => void } | null = null;
  #iterating = false;

  /** @internal Use `sandbox.terminal()`. */
  constructor(socket: NodeSocket, head: Uint8Array, mask: () => Uint8Array) {
    this.#socket = socket;
    this.#mask = mask;
    socket.setNoDelay?.(true);
    socket.on("data", (b) => this.#onData(b));
    socket.on("error", (e) => this.#fail(new OrkestrError({ code: "connection_error", status: 0, message: `terminal connection failed: ${e.message}` })));
    socket.on("close", () => {
      if (!this.#ended) this.#fail(new OrkestrError({ code: "connection_error", status: 0, message: "the terminal connection closed before the program exited" }));
    });
    if (head.length > 0) this.#onData(head);
  }

  /** @internal */
  started(): Promise<void> {
    if (this.pid !== 0) return Promise.resolve();
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      this.#started = { resolve, reject };
    });
  }

  /** Types into the terminal (`"\x03"` is Ctrl-C). Resolves once the bytes are handed to the network. */
  async write(data: string | Uint8Array): Promise<void> {
    const b = typeof data === "string" ? new TextEncoder().encode(data) : data;
    for (let i = 0; i < b.length; i += 32 << 10) {
      await this.#send(0x2, b.subarray(i, i + (32 << 10)));
    }
  }

  /** Changes the terminal's size; the program gets SIGWINCH. */
  async resize(rows: number, cols: number): Promise<void> {
    checkSize(rows, "rows");
    checkSize(cols, "cols");
    await this._control({ type: "resize", rows, cols });
  }

  /** @internal Sends a control message. */
  _control(v: unknown): Promise<void> {
    return this.#send(0x1, new TextEncoder().encode(JSON.stringify(v)));
  }

  /** @internal Ends the session with reason (an aborted signal). */
  _abort(reason: unknown): void {
    this.#fail(reason instanceof Error ? reason : new OrkestrError({ code: "aborted", status: 0, message: String(reason) }));
  }

  /** Reads (and discards) what is left of the output and resolves with how the program ended. */
  async wait(): Promise<TerminalExit> {
    if (!this.#iterating) {
      for await (const _ of this) void _;
    } else {
      while (!this.exit && !this.#error) await new Promise<void>((r) => setTimeout(r, 10));
    }
    if (this.#error) throw this.#error;
    return this.exit as TerminalExit;
  }

  /** Hangs up: a program still running is killed with everything it started. */
  close(): void {
    if (!this.#ended) {
      this.#ended = true;
      try {
        this.#socket.write(this.#frame(0x8, new Uint8Array([0x03, 0xe8])));
        this.#socket.end();
      } catch {
        // already gone
      }
    }
    this.#socket.destroy();
    this.#wakeUp();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    this.#iterating = true;
    try {
      for (;;) {
        const chunk = this.#queue.shift();
        if (chunk) {
          this.#queued -= chunk.length;
          if (this.#paused && this.#queued < HIGH_WATER / 4) {
            this.#paused = false;
            this.#socket.resume();
          }
          yield chunk;
          continue;
        }
        if (this.#error) throw this.#error;
        if (this.exit || this.#ended) return;
        await new Promise<void>((r) => {
          this.#wake = r;
        });
      }
    } finally {
      this.#iterating = false;
    }
  }

  #wakeUp(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  #fail(e: Error): void {
    if (this.#error || this.exit) return;
    this.#error = e;
    this.#ended = true;
    this.#started?.reject(e);
    this.#started = null;
    this.#socket.destroy();
    this.#wakeUp();
  }

  #send(op: number, payload: Uint8Array): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) {
      return Promise.reject(new OrkestrError({ code: "terminal_closed", status: 0, message: "the terminal has ended" }));
    }
    return new Promise((resolve, reject) => {
      const ok = this.#socket.write(this.#frame(op, payload), (err) => (err ? reject(err) : undefined));
      if (ok) resolve();
      else this.#socket.once("drain", () => resolve());
    });
  }

  /** A masked client frame (RFC 6455 §5.2). */
  #frame(op: number, payload: Uint8Array): Uint8Array {
    const n = payload.length;
    const ext = n < 126 ? 0 : n < 65536 ? 2 : 8;
    const out = new Uint8Array(2 + ext + 4 + n);
    out[0] = 0x80 | op;
    if (ext === 0) out[1] = 0x80 | n;
    else if (ext === 2) {
      out[1] = 0x80 | 126;
      out[2] = n >> 8;
      out[3] = n & 255;
    } else {
      out[1] = 0x80 | 127;
      new DataView(out.buffer).setBigUint64(2, BigInt(n));
    }
    const mask = this.#mask();
    out.set(mask, 2 + ext);
    for (let i = 0; i < n; i++) out[2 + ext + 4 + i] = (payload[i] as number) ^ (mask[i & 3] as number);
    return out;
  }

  #onData(b: Uint8Array): void {
    const buf = new Uint8Array(this.#buf.length + b.length);
    buf.set(this.#buf);
    buf.set(b, this.#buf.length);
    let off = 0;
    for (;;) {
      if (buf.length - off < 2) break;
      const b0 = buf[off] as number;
      const b1 = buf[off + 1] as number;
      let len = b1 & 0x7f;
      let p = off + 2;
      if (len === 126) {
        if (buf.length - p < 2) break;
        len = ((buf[p] as number) << 8) | (buf[p + 1] as number);
        p += 2;
      } else if (len === 127) {
        if (buf.length - p < 8) break;
        const big = new DataView(buf.buffer, buf.byteOffset + p, 8).getBigUint64(0);
        if (big > BigInt(MAX_MESSAGE)) return this.#fail(this.#protocol("a message over the size limit"));
        len = Number(big);
        p += 8;
      }
      if (len > MAX_MESSAGE) return this.#fail(this.#protocol("a message over the size limit"));
      if (b1 & 0x80) return this.#fail(this.#protocol("a masked frame from the server"));
      if (buf.length - p < len) break;
      const payload = buf.slice(p, p + len);
      off = p + len;
      this.#onFrame(b0 & 0x80 ? true : false, b0 & 0x0f, payload);
      if (this.#error) return;
    }
    this.#buf = buf.slice(off);
    if (!this.#paused && this.#queued > HIGH_WATER) {
      this.#paused = true;
      this.#socket.pause();
    }
  }

  #protocol(what: string): OrkestrError {
    return new OrkestrError({ code: "protocol_error", status: 0, message: `the terminal's server sent ${what}` });
  }

  #onFrame(fin: boolean, op: number, payload: Uint8Array): void {
    if (op === 0x9) {
      void this.#send(0xa, payload).catch(() => {});
      return;
    }
    if (op === 0xa) return;
    if (op === 0x8) {
      if (!this.exit) {
        const code = payload.length >= 2 ? ((payload[0] as number) << 8) | (payload[1] as number) : 1005;
        this.#fail(new OrkestrError({ code: "connection_error", status: 0, message: `the terminal closed (WebSocket status ${code}) before the program exited` }));
      }
      return;
    }
    if (op === 0x1 || op === 0x2) {
      this.#fragOp = op;
      this.#frag = [];
    } else if (op !== 0x0) {
      return this.#fail(this.#protocol(`an unknown frame type ${op}`));
    }
    this.#frag.push(payload);
    if (!fin) return;
    const parts = this.#frag;
    this.#frag = [];
    let msg: Uint8Array;
    if (parts.length === 1) msg = parts[0] as Uint8Array;
    else {
      msg = new Uint8Array(parts.reduce((n, x) => n + x.length, 0));
      let o = 0;
      for (const x of parts) {
        msg.set(x, o);
        o += x.length;
      }
    }
    if (this.#fragOp === 0x2) {
      if (msg.length > 0) {
        this.#queue.push(msg);
        this.#queued += msg.length;
        this.#wakeUp();
      }
      return;
    }
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(new TextDecoder().decode(msg)) as Record<string, unknown>;
    } catch {
      return this.#fail(this.#protocol("a control message that is not JSON"));
    }
    if (m["type"] === "started") {
      this.pid = typeof m["pid"] === "number" ? m["pid"] : 0;
      this.#started?.resolve();
      this.#started = null;
    } else if (m["type"] === "exit") {
      this.exit = { exitCode: Number(m["exit_code"]), durationMs: Number(m["duration_ms"]) };
      this.#ended = true;
      try {
        this.#socket.write(this.#frame(0x8, new Uint8Array([0x03, 0xe8])));
        this.#socket.end();
      } catch {
        // already gone
      }
      this.#wakeUp();
    } else if (m["type"] === "error") {
      const e = (m["error"] ?? {}) as Record<string, unknown>;
      const code = typeof e["code"] === "string" ? e["code"] : "internal";
      const details = e["details"] && typeof e["details"] === "object" ? (e["details"] as Record<string, unknown>) : {};
      this.#fail(classify({ code, status: statusOfCode(code), message: typeof e["message"] === "string" ? e["message"] : code, details }));
    }
  }
}

/** @internal Opens a terminal; `Sandbox.terminal` is the public way. */
export async function openTerminal(conn: Connection, path: string, o: TerminalOptions): Promise<Terminal> {
  checkSize(o.rows, "rows");
  checkSize(o.cols, "cols");
  o.signal?.throwIfAborted();
  const url = conn.baseUrl + "/v1" + path;
  const https = url.startsWith("https:");
  const http = await nodeModule<NodeHttp>(https ? "https" : "http");
  const crypto = await nodeModule<NodeCrypto>("crypto");
  const key = crypto.randomBytes(16).toString("base64");
  const req = http.request(url, {
    method: "GET",
    headers: {
      Authorization: "Bearer " + conn.apiKey(),
      Connection: "Upgrade",
      Upgrade: "websocket",
      "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": key,
      "User-Agent": "orkestr-js/terminal",
    },
  });
  const term = await new Promise<Terminal>((resolve, reject) => {
    const onAbort = () => {
      req.destroy();
      reject(o.signal?.reason);
    };
    o.signal?.addEventListener("abort", onAbort, { once: true });
    req.on("error", (e) => {
      o.signal?.removeEventListener("abort", onAbort);
      reject(new OrkestrError({ code: "connection_error", status: 0, message: `GET /v1${path}: no answer from the API at ${conn.baseUrl}: ${e.message}` }));
    });
    req.on("response", (res) => {
      // Not upgraded: the API's error answer.
      o.signal?.removeEventListener("abort", onAbort);
      const chunks: Uint8Array[] = [];
      res.on("data", (b) => chunks.push(b));
      res.on("end", () => {
        const headers = new Headers();
        for (const [k, v] of Object.entries(res.headers)) if (typeof v === "string") headers.set(k, v);
        const body = new Uint8Array(chunks.reduce((n, x) => n + x.length, 0));
        let off = 0;
        for (const c of chunks) {
          body.set(c, off);
          off += c.length;
        }
        void readError(new Response(body, { status: res.statusCode ?? 500, statusText: res.statusMessage ?? "", headers })).then(reject, reject);
      });
    });
    req.on("upgrade", (res, socket, head) => {
      o.signal?.removeEventListener("abort", onAbort);
      const want = crypto.createHash("sha1").update(key + GUID).digest("base64");
      if (res.headers["sec-websocket-accept"] !== want) {
        socket.destroy();
        reject(new OrkestrError({ code: "protocol_error", status: 0, message: "the server's WebSocket handshake is wrong" }));
        return;
      }
      resolve(new Terminal(socket, head, () => crypto.randomBytes(4)));
    });
    req.end();
  });
  const start: Record<string, unknown> = { type: "start" };
  if (o.command !== undefined) start["command"] = o.command;
  if (o.env !== undefined) start["env"] = o.env;
  if (o.cwd !== undefined) start["cwd"] = o.cwd;
  if (o.rows !== undefined) start["rows"] = o.rows;
  if (o.cols !== undefined) start["cols"] = o.cols;
  if (o.user !== undefined) start["user"] = o.user;
  const onAbort = () => term._abort(o.signal?.reason);
  o.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    await term._control(start);
    await term.started();
  } catch (e) {
    term.close();
    o.signal?.removeEventListener("abort", onAbort);
    if (o.signal?.aborted) throw o.signal.reason;
    throw e;
  }
  return term;
}
