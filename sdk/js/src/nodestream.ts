// Long response bodies read as they arrive (the exec stream). On Node, with
// the global fetch, they are read through node:http/node:https instead:
// fetch hands every piece the socket delivered through a WHATWG stream
// (a promise, a Buffer, a transfer per piece), which cost 2.5-3.5 s of CPU
// per GB of output against 1.2-1.3 s for node:http's own stream on the same
// machine (docs/benchmarks.md). Elsewhere (browsers, Deno, Bun, a fetch
// passed in the options) fetch is used as before.

import { OrkestrError } from "./errors.js";
import { readError, send, VERSION, type Connection, type Request } from "./http.js";

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

type Runtime = { process?: { versions?: Record<string, string | undefined> }; Deno?: unknown };

/** Whether this is Node itself (not Bun or Deno, whose node:http differs). */
function onNode(): boolean {
  const g = globalThis as Runtime;
  const v = g.process?.versions;
  return typeof v?.["node"] === "string" && v["bun"] === undefined && g.Deno === undefined;
}

let nodeModules: Promise<{ http: NodeHttp; https: NodeHttp } | null> | undefined;

function loadNode(): Promise<{ http: NodeHttp; https: NodeHttp } | null> {
  // Computed specifiers, so bundlers for browsers do not try to resolve them.
  const load = (name: string) => import("node:" + name) as Promise<NodeHttp>;
  nodeModules ??= Promise.all([load("http"), load("https")]).then(
    ([http, https]) => ({ http, https }),
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
  const url = c.baseUrl + "/v1" + r.path;
  const headers: Record<string, string> = {
    Authorization: "Bearer " + c.apiKey(),
    Accept: r.accept ? `${r.accept}, application/json;q=0.5` : "application/json",
    "User-Agent": `orkestr-js/${VERSION}`,
  };
  let body: string | undefined;
  if (r.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(r.json);
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
    // The API's error body, at most 1 MiB of it, turned into its error class.
    const parts: Uint8Array[] = [];
    let n = 0;
    try {
      for (let p = await it.read(); !p.done && n < 1 << 20; p = await it.read()) {
        parts.push(p.value);
        n += p.value.length;
      }
    } catch {
      // The body broke off: the status still says what happened.
    }
    res.destroy();
    const all = new Uint8Array(n);
    let at = 0;
    for (const p of parts) {
      all.set(p.subarray(0, n - at), at);
      at += p.length;
    }
    const h = new Headers();
    for (const k of ["content-type", "x-request-id", "retry-after"]) {
      const v = get(k);
      if (v !== null) h.set(k, v);
    }
    throw await readError(new Response(all, { status: status >= 400 && status <= 599 ? status : 502, headers: h }));
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
  res.on("data", (b) => {
    queue.push(b);
    queued += b.length;
    if (queued >= HIGH_WATER && !paused) {
      paused = true;
      res.pause();
    }
    poke();
  });
  res.on("end", () => {
    ended = true;
    poke();
  });
  res.on("error", (e) => {
    error ??= e;
    poke();
  });
  res.on("close", () => {
    if (!ended) error ??= new Error("the connection closed before the answer ended");
    poke();
  });
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
          res.resume();
        }
        return { done: false, value };
      }
      if (error !== null) throw error;
      if (ended) return { done: true };
      await new Promise<void>((resolve) => (wake = resolve));
    }
  };
  return { read };
}

const EMPTY = new Uint8Array(0);
