// Long response bodies read as they arrive (the exec stream). On Node, with
// the global fetch, they are read through node:http/node:https instead:
// fetch hands every piece the socket delivered through a WHATWG stream
// (a promise, a Buffer, a transfer per piece), which cost 2.5-3.5 s of CPU
// per GB of output against 1.2-1.3 s for node:http's own stream on the same
// machine (docs/benchmarks.md). For an http:// API not even node:http: an
// HTTP/1.1 exchange of our own on a node:net socket whose reads land in
// memory we hand it (`onread`, see slabReads) took the SDK from 1.5-1.6 to
// 0.8-1.0 s/GB (a bare reader: node:http 0.6-0.8, node:net 0.15). Elsewhere (browsers,
// Deno, Bun, a fetch passed in the options) fetch is used as before.

import { OrkestrError } from "./errors.js";
import { call, decodeAnswer, readError, requestUrl, send, VERSION, withRetries, type Connection, type Request } from "./http.js";

/** Reads a body piece by piece; a WHATWG stream reader is one. */
export interface BodyReader {
  read(): Promise<{ done: true; value?: Uint8Array | undefined } | { done: false; value: Uint8Array }>;
  cancel(): Promise<void>;
}

/** A 2xx answer whose body is read with reader. */
export interface StreamResponse {
  status: number;
  headers: { get(name: string): string | null };
  reader: BodyReader;
}

// The little of Node's modules this file uses (the SDK has no @types/node).
interface NodeIncoming {
  statusCode?: number;
  headers: Record<string, string | string[] | undefined>;
  on(ev: "data", f: (b: Uint8Array) => void): void;
  on(ev: "end" | "close", f: () => void): void;
  on(ev: "error", f: (e: Error) => void): void;
  pause(): void;
  resume(): void;
  destroy(err?: unknown): void;
}
interface NodeClientRequest {
  on(ev: "response", f: (res: NodeIncoming) => void): void;
  on(ev: "error", f: (e: Error) => void): void;
  end(body?: string): void;
  destroy(err?: unknown): void;
}
interface NodeHttp {
  request(url: string, opts: { method: string; headers: Record<string, string> }): NodeClientRequest;
}

interface NodeSocket {
  on(ev: "connect" | "end" | "close" | "drain", f: () => void): void;
  on(ev: "error", f: (e: Error) => void): void;
  off(ev: "close" | "drain", f: () => void): void;
  write(b: Uint8Array): boolean;
  cork(): void;
  uncork(): void;
  readonly destroyed: boolean;
  readonly writableLength: number;
  setNoDelay(on: boolean): void;
  pause(): void;
  resume(): void;
  destroy(err?: unknown): void;
}
interface NodeNet {
  connect(opts: {
    host: string;
    port: number;
    onread: { buffer: Uint8Array | (() => Uint8Array); callback: (n: number, buf: Uint8Array) => boolean | void };
  }): NodeSocket;
}

type Runtime = { process?: { versions?: Record<string, string | undefined> }; Deno?: unknown };

/** Whether this is Node itself (not Bun or Deno, whose node:http differs). */
function onNode(): boolean {
  const g = globalThis as Runtime;
  const v = g.process?.versions;
  return typeof v?.["node"] === "string" && v["bun"] === undefined && g.Deno === undefined;
}

type NodeModules = { http: NodeHttp; https: NodeHttp; net: NodeNet };
let nodeModules: Promise<NodeModules | null> | undefined;

function loadNode(): Promise<NodeModules | null> {
  // Computed specifiers, so bundlers for browsers do not try to resolve them.
  const load = (name: string) => import("node:" + name) as Promise<unknown>;
  nodeModules ??= Promise.all([load("http"), load("https"), load("net")]).then(
    ([http, https, net]) => ({ http: http as NodeHttp, https: https as NodeHttp, net: net as NodeNet }),
    () => null,
  );
  return nodeModules;
}

/**
 * Sends r (a JSON POST or a GET; never retried) and returns the 2xx
 * answer with its body unread, or throws the API's error as send does.
 */
export async function sendStream(c: Connection, r: Request): Promise<StreamResponse> {
  const node = c.fetch === globalThis.fetch && r.bytes === undefined && r.stream === undefined && onNode() ? await loadNode() : null;
  if (node === null) {
    const resp = await send(c, r);
    if (!resp.body) {
      throw new OrkestrError({ code: "invalid_response", status: resp.status, message: `${r.method} /v1${r.path.split("?")[0]}: the answer has no body` });
    }
    return { status: resp.status, headers: resp.headers, reader: resp.body.getReader() };
  }
  r.signal?.throwIfAborted();
  const url = requestUrl(c, r);
  const headers = nodeHeaders(c, r.accept);
  let body: string | undefined;
  if (r.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(r.json);
  }
  if (url.startsWith("http:")) {
    return rawExchange(node.net, c, r, url, headers, body);
  }
  const res = await new Promise<NodeIncoming>((resolve, reject) => {
    const req = (url.startsWith("https:") ? node.https : node.http).request(url, { method: r.method, headers });
    const onAbort = () => {
      req.destroy(r.signal?.reason);
      reject(r.signal?.reason);
    };
    r.signal?.addEventListener("abort", onAbort, { once: true });
    req.on("response", (res) => {
      r.signal?.removeEventListener("abort", onAbort);
      resolve(res);
    });
    req.on("error", (e) => {
      r.signal?.removeEventListener("abort", onAbort);
      reject(
        r.signal?.aborted
          ? r.signal.reason
          : new OrkestrError({
              code: "connection_error",
              status: 0,
              message: `${r.method} /v1${r.path.split("?")[0]}: no answer from the API at ${c.baseUrl}: ${e.message}`,
              cause: e,
            }),
      );
    });
    req.end(body);
  });
  const get = (name: string): string | null => {
    const v = res.headers[name.toLowerCase()];
    return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
  };
  const status = res.statusCode ?? 0;
  const it = pull(res);
  if (status < 200 || status >= 300) {
    await throwAnswer(status, get, it.read, () => res.destroy());
  }
  const onAbort = () => res.destroy(r.signal?.reason);
  r.signal?.addEventListener("abort", onAbort, { once: true });
  return {
    status,
    headers: { get },
    reader: {
      read: it.read,
      cancel: async () => {
        r.signal?.removeEventListener("abort", onAbort);
        res.destroy();
      },
    },
  };
}

/**
 * Sends the GET r (retried as send retries it) and returns the 2xx
 * answer's body as a stream. On Node, for an http:// API, the body is read
 * by the SDK's own HTTP/1.1 exchange (see rawExchange): fetch's web stream
 * held a 256 MiB download to 260-465 MB/s.
 */
export async function getBody(c: Connection, r: Request): Promise<ReadableStream<Uint8Array>> {
  const node = await ownClient(c);
  if (node === null) {
    const resp = await send(c, r);
    if (!resp.body) {
      throw new OrkestrError({ code: "invalid_response", status: resp.status, message: `${r.method} /v1${r.path.split("?")[0]}: the answer has no body` });
    }
    return resp.body;
  }
  const headers = nodeHeaders(c, "application/octet-stream");
  const resp = await withRetries(c, r, () => rawExchange(node.net, c, r, requestUrl(c, r), headers, undefined));
  const reader = resp.reader;
  return new ReadableStream<Uint8Array>(
    {
      async pull(ctrl) {
        const p = await reader.read();
        if (p.done) ctrl.close();
        else ctrl.enqueue(p.value);
      },
      cancel: () => reader.cancel(),
    },
    { highWaterMark: 0 },
  );
}

/**
 * Sends r, whose body is r.stream (never retried), and decodes its JSON
 * answer as call does. On Node, for an http:// API, the body goes out
 * through the SDK's own HTTP/1.1 exchange, chunked as the stream yields it
 * (fetch's streamed upload held a 256 MiB file to 350-380 MB/s).
 */
export async function putStream(c: Connection, r: Request & { stream: { body: ReadableStream<Uint8Array>; contentType: string } }): Promise<unknown> {
  const node = await ownClient(c);
  if (node === null) return call(c, r);
  const headers = { ...nodeHeaders(c, undefined), "Content-Type": r.stream.contentType };
  const resp = await rawExchange(node.net, c, r, requestUrl(c, r), headers, r.stream.body);
  const parts: Uint8Array[] = [];
  let n = 0;
  for (let p = await resp.reader.read(); !p.done; p = await resp.reader.read()) {
    parts.push(p.value);
    n += p.value.length;
  }
  return decodeAnswer(r, resp.status, resp.headers.get("X-Request-Id") ?? undefined, new TextDecoder().decode(concat(parts, n)));
}

/** Node's modules, when r may go through the SDK's own HTTP/1.1 client: Node, its own fetch, an http:// API. */
async function ownClient(c: Connection): Promise<NodeModules | null> {
  return c.fetch === globalThis.fetch && c.baseUrl.startsWith("http:") && onNode() ? loadNode() : null;
}

/** The headers of a request sent on Node's modules; accept is preferred over JSON. */
function nodeHeaders(c: Connection, accept: string | undefined): Record<string, string> {
  return {
    Authorization: "Bearer " + c.apiKey(),
    Accept: accept ? `${accept}, application/json;q=0.5` : "application/json",
    "User-Agent": `orkestr-js/${VERSION}`,
  };
}

/**
 * Reads the body of a non-2xx answer, at most 1 MiB of it, and throws it
 * as the API's error class.
 */
async function throwAnswer(
  status: number,
  get: (name: string) => string | null,
  read: () => Promise<ReadResult>,
  release: () => void,
): Promise<never> {
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    for (let p = await read(); !p.done && n < 1 << 20; p = await read()) {
      parts.push(p.value);
      n += p.value.length;
    }
  } catch {
    // The body broke off: the status still says what happened.
  }
  release();
  const all = new Uint8Array(Math.min(n, 1 << 20));
  let at = 0;
  for (const p of parts) {
    if (at >= all.length) break;
    all.set(p.subarray(0, all.length - at), at);
    at += p.length;
  }
  const h = new Headers();
  for (const k of ["content-type", "x-request-id", "retry-after"]) {
    const v = get(k);
    if (v !== null) h.set(k, v);
  }
  throw await readError(new Response(all, { status: status >= 400 && status <= 599 ? status : 502, headers: h }));
}

/** Output held for a reader that is not reading before the socket is paused. */
const HIGH_WATER = 1 << 20;

type ReadResult = { done: true; value?: undefined } | { done: false; value: Uint8Array };

/**
 * A pull reader over res's "data" events: pieces queue up to HIGH_WATER,
 * then the socket is paused (TCP back-pressure reaches the server, which
 * stops the command) until the reader catches up. Cheaper per piece than
 * the Readable's async iterator.
 */
function pull(res: NodeIncoming): { read: () => Promise<ReadResult> } {
  const q = pieceQueue(
    () => res.pause(),
    () => res.resume(),
  );
  let ended = false;
  res.on("data", (b) => q.push(b));
  res.on("end", () => {
    ended = true;
    q.end();
  });
  res.on("error", (e) => q.fail(e));
  res.on("close", () => {
    if (!ended) q.fail(new Error("the connection closed before the answer ended"));
  });
  return { read: q.read };
}

/** Pieces of a body between the socket and its reader (see pull). */
function pieceQueue(
  pause: () => void,
  resume: () => void,
): { push: (b: Uint8Array) => void; end: () => void; fail: (e: unknown) => void; read: () => Promise<ReadResult> } {
  const queue: Uint8Array[] = [];
  let head = 0;
  let queued = 0;
  let paused = false;
  let ended = false;
  let error: unknown = null;
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const push = (b: Uint8Array) => {
    if (b.length === 0) return;
    queue.push(b);
    queued += b.length;
    if (queued >= HIGH_WATER && !paused) {
      paused = true;
      pause();
    }
    poke();
  };
  const end = () => {
    ended = true;
    poke();
  };
  const fail = (e: unknown) => {
    if (!ended) error ??= e;
    poke();
  };
  const read = async (): Promise<ReadResult> => {
    for (;;) {
      if (head < queue.length) {
        const value = queue[head]!;
        queue[head++] = EMPTY;
        if (head > 1024 && head * 2 > queue.length) {
          queue.splice(0, head);
          head = 0;
        }
        queued -= value.length;
        if (paused && queued < HIGH_WATER / 2) {
          paused = false;
          resume();
        }
        return { done: false, value };
      }
      if (error !== null) throw error;
      if (ended) return { done: true };
      await new Promise<void>((resolve) => (wake = resolve));
    }
  };
  return { push, end, fail, read };
}

type NodeBufferClass = { allocUnsafeSlow(n: number): Uint8Array };

/** The memory a stream's socket reads land in, a slab at a time. */
const SLAB = 1 << 20;
/** A slab with less room than this left is put down for a fresh one. */
const MIN_READ = 64 << 10;

/**
 * Where one socket's reads land: each read fills the free end of the
 * current slab and is handed on as a view of it, never copied; a slab
 * whose free end is under MIN_READ is left to the views of it (the reader
 * may keep them) and a fresh one taken. Reading into one reused buffer and
 * copying every read out into memory of its own cost ≈ 0.1 s more per GB
 * (docs/benchmarks.md): the copy, and a Buffer per read. V8 frees slabs
 * only at a collection, so a process's first large stream grows it by
 * ≈ 100 MB of fresh pages; later streams reuse that memory.
 */
function slabReads(): { next: () => Uint8Array; took: (n: number) => void } {
  const B = (globalThis as { Buffer?: NodeBufferClass }).Buffer;
  let slab: Uint8Array = new Uint8Array(0);
  let used = 0;
  return {
    next: () => {
      if (slab.length - used < MIN_READ) {
        slab = B === undefined ? new Uint8Array(SLAB) : B.allocUnsafeSlow(SLAB);
        used = 0;
      }
      return slab.subarray(used);
    },
    took: (n) => {
      used += n;
    },
  };
}

/** The most an answer's status line and headers may take. */
const MAX_HEAD = 64 << 10;

/**
 * One HTTP/1.1 exchange on a socket of its own, closed after it, whose
 * reads land in slabs (slabReads) the reader may keep views of, and whose
 * body is taken apart here without a copy: chunked,
 * Content-Length or to the connection's end.
 */
async function rawExchange(
  net: NodeNet,
  c: Connection,
  r: Request,
  url: string,
  headers: Record<string, string>,
  body: string | ReadableStream<Uint8Array> | undefined,
): Promise<StreamResponse> {
  const u = new URL(url);
  const streamed = typeof body === "object" ? body : undefined;
  const bodyBytes = typeof body === "string" ? new TextEncoder().encode(body) : new Uint8Array(0);
  let head = `${r.method} ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\n`;
  for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
  // Not "Connection: close": a server that closes first while a request
  // body it did not read waits in its socket resets the connection, and
  // the reset drops the end of the answer. The socket is ours alone and
  // closed once the body is read.
  head += streamed ? "Transfer-Encoding: chunked\r\n\r\n" : `Content-Length: ${bodyBytes.length}\r\n\r\n`;

  const reads = slabReads();
  let sock: NodeSocket | undefined;
  const q = pieceQueue(
    () => sock?.pause(),
    () => sock?.resume(),
  );
  const parser = new BodyParser(q);
  let answered: ((v: { status: number; headers: Map<string, string> }) => void) | undefined;
  let refused: ((e: unknown) => void) | undefined;
  const answer = new Promise<{ status: number; headers: Map<string, string> }>((resolve, reject) => {
    answered = resolve;
    refused = reject;
  });
  let gotHead = false;
  const broke = (e: unknown) => {
    if (!gotHead) {
      refused?.(
        r.signal?.aborted
          ? r.signal.reason
          : new OrkestrError({
              code: "connection_error",
              status: 0,
              message: `${r.method} /v1${r.path.split("?")[0]}: no answer from the API at ${c.baseUrl}: ${e instanceof Error ? e.message : String(e)}`,
              cause: e,
            }),
      );
    }
    q.fail(e);
  };
  sock = net.connect({
    host: u.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: u.port === "" ? 80 : Number(u.port),
    onread: {
      // Called for the first read and again after each callback.
      buffer: reads.next,
      callback: (n, buf) => {
        reads.took(n);
        try {
          const h = parser.feed(buf.subarray(0, n));
          if (h !== undefined) {
            gotHead = true;
            answered?.(h);
          }
          if (parser.done) sock?.destroy();
        } catch (e) {
          sock?.destroy();
          broke(e);
        }
      },
    },
  });
  sock.setNoDelay(true);
  sock.on("connect", () => {
    sock?.write(new TextEncoder().encode(head));
    if (bodyBytes.length > 0) sock?.write(bodyBytes);
    if (streamed && sock) {
      const s = sock;
      sendChunked(s, streamed, () => gotHead).catch((e) => {
        s.destroy();
        broke(e);
      });
    }
  });
  sock.on("error", (e) => broke(e));
  sock.on("end", () => {
    if (parser.toClose) parser.closed();
  });
  sock.on("close", () => {
    if (!parser.done) broke(new Error("the connection closed before the answer ended"));
  });
  const onAbort = () => {
    sock?.destroy();
    broke(r.signal?.reason);
  };
  r.signal?.addEventListener("abort", onAbort, { once: true });
  let res: { status: number; headers: Map<string, string> };
  try {
    res = await answer;
  } catch (e) {
    r.signal?.removeEventListener("abort", onAbort);
    throw e;
  }
  const get = (name: string): string | null => res.headers.get(name.toLowerCase()) ?? null;
  const release = () => {
    r.signal?.removeEventListener("abort", onAbort);
    sock?.destroy();
  };
  if (res.status < 200 || res.status >= 300) {
    await throwAnswer(res.status, get, q.read, release);
  }
  return { status: res.status, headers: { get }, reader: { read: q.read, cancel: async () => release() } };
}

/** Body bytes a chunked upload lets wait in the socket before it waits. */
const SEND_AHEAD = 4 << 20;

/**
 * Writes body to sock as a chunked request body, a chunk per piece the
 * stream yields (its size line, the piece and its CRLF corked into one
 * write), reading the next piece while up to SEND_AHEAD bytes still wait
 * to be sent: waiting for the socket to drain after every piece left the
 * source idle while the socket sent and the socket idle while the source
 * read. Stops (and cancels body) once the server has answered (an early
 * error) or the socket is gone.
 */
async function sendChunked(sock: NodeSocket, body: ReadableStream<Uint8Array>, answered: () => boolean): Promise<void> {
  const reader = body.getReader();
  const enc = new TextEncoder();
  const crlf = enc.encode("\r\n");
  try {
    for (;;) {
      if (answered() || sock.destroyed) {
        await reader.cancel().catch(() => {});
        return;
      }
      const p = await reader.read();
      if (p.done) {
        sock.write(enc.encode("0\r\n\r\n"));
        return;
      }
      if (p.value.length === 0) continue;
      sock.cork();
      sock.write(enc.encode(p.value.length.toString(16) + "\r\n"));
      sock.write(p.value);
      sock.write(crlf);
      sock.uncork();
      if (sock.writableLength > SEND_AHEAD && !sock.destroyed) {
        await new Promise<void>((resolve) => {
          const done = () => {
            sock.off("drain", done);
            sock.off("close", done);
            resolve();
          };
          sock.on("drain", done);
          sock.on("close", done);
        });
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * Takes an HTTP/1.1 answer apart as it arrives: the status line and
 * headers, then the body's pieces into q (views of the bytes fed, never
 * copied again).
 */
class BodyParser {
  /** The whole body was read. */
  done = false;
  /** The body ends with the connection (no length, not chunked). */
  toClose = false;
  #q: ReturnType<typeof pieceQueue>;
  #head: Uint8Array[] = [];
  #headLen = 0;
  #state: "head" | "fixed" | "close" | "size" | "data" | "data-crlf" | "trailer" = "head";
  #left = 0; // bytes of the body or of the current chunk still to come
  #line = ""; // a chunk-size or trailer line read so far

  constructor(q: ReturnType<typeof pieceQueue>) {
    this.#q = q;
  }

  /** The answer's head once it is complete (the feed that completed it). */
  feed(b: Uint8Array): { status: number; headers: Map<string, string> } | undefined {
    let off = 0;
    let head: { status: number; headers: Map<string, string> } | undefined;
    if (this.#state === "head") {
      this.#head.push(b);
      this.#headLen += b.length;
      const all = concat(this.#head, this.#headLen);
      const end = indexOfCRLFCRLF(all);
      if (end < 0) {
        if (this.#headLen > MAX_HEAD) throw new Error(`an answer head over ${MAX_HEAD} bytes`);
        return undefined;
      }
      this.#head = [];
      head = this.#parseHead(new TextDecoder("latin1").decode(all.subarray(0, end)));
      b = all.subarray(end + 4);
    }
    while (off < b.length && !this.done) {
      switch (this.#state) {
        case "close":
          this.#q.push(b.subarray(off));
          off = b.length;
          break;
        case "fixed":
        case "data": {
          const k = Math.min(this.#left, b.length - off);
          this.#q.push(b.subarray(off, off + k));
          off += k;
          this.#left -= k;
          if (this.#left === 0) {
            if (this.#state === "fixed") this.#finish();
            else this.#state = "data-crlf";
          }
          break;
        }
        case "data-crlf":
        case "size":
        case "trailer": {
          const nl = b.indexOf(10, off);
          const upto = nl < 0 ? b.length : nl;
          this.#line += new TextDecoder("latin1").decode(b.subarray(off, upto));
          if (this.#line.length > 4096) throw new Error("a chunk line over 4 KiB");
          if (this.#state === "data-crlf" && this.#line !== "" && this.#line !== "\r") throw new Error("a chunk not followed by CRLF");
          off = nl < 0 ? b.length : nl + 1;
          if (nl >= 0) {
            const line = this.#line.replace(/\r$/, "");
            this.#line = "";
            this.#endOfLine(line);
          }
          break;
        }
      }
    }
    if (this.#state === "fixed" && this.#left === 0 && !this.done) this.#finish(); // an empty body
    return head;
  }

  /** The connection ended: the end of a body read to the close. */
  closed(): void {
    if (this.#state === "close") this.#finish();
  }

  #finish(): void {
    this.done = true;
    this.#q.end();
  }

  /** A whole chunk-size, CRLF or trailer line has come. */
  #endOfLine(line: string): void {
    if (this.#state === "data-crlf") {
      if (line !== "") throw new Error("a chunk not followed by CRLF");
      this.#state = "size";
      return;
    }
    if (this.#state === "trailer") {
      if (line === "") this.#finish();
      return;
    }
    const size = line.split(";")[0]!.trim();
    if (!/^[0-9a-fA-F]{1,8}$/.test(size)) throw new Error(`a chunk size of ${JSON.stringify(size.slice(0, 20))}`);
    this.#left = parseInt(size, 16);
    this.#state = this.#left === 0 ? "trailer" : "data";
  }

  #parseHead(text: string): { status: number; headers: Map<string, string> } {
    const lines = text.split("\r\n");
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? "");
    if (!m) throw new Error(`not an HTTP/1.1 answer: ${JSON.stringify((lines[0] ?? "").slice(0, 40))}`);
    const headers = new Map<string, string>();
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      if (i <= 0) continue;
      const k = l.slice(0, i).trim().toLowerCase();
      const v = l.slice(i + 1).trim();
      headers.set(k, headers.has(k) ? `${headers.get(k)}, ${v}` : v);
    }
    const status = Number(m[1]);
    const te = (headers.get("transfer-encoding") ?? "").toLowerCase();
    const cl = headers.get("content-length");
    if (status === 204 || status === 304) {
      this.#state = "fixed"; // no body, whatever the headers say
    } else if (te.includes("chunked")) {
      this.#state = "size";
    } else if (cl !== undefined) {
      if (!/^\d{1,15}$/.test(cl)) throw new Error(`a Content-Length of ${JSON.stringify(cl.slice(0, 20))}`);
      this.#left = Number(cl);
      this.#state = "fixed";
    } else {
      this.#state = "close";
      this.toClose = true;
    }
    return { status, headers };
  }
}

function concat(parts: Uint8Array[], n: number): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const all = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  parts.length = 0;
  parts.push(all);
  return all;
}

function indexOfCRLFCRLF(b: Uint8Array): number {
  for (let i = b.indexOf(13); i >= 0 && i + 3 < b.length; i = b.indexOf(13, i + 1)) {
    if (b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

const EMPTY = new Uint8Array(0);
