// The transport under every call: configuration from options and the
// environment, one request with bounded, jittered retries for idempotent
// calls, API errors turned into the error classes, and snake_case <->
// camelCase conversion of API fields. Only fetch, AbortController and
// TextDecoder are used, so it runs on Node 18+, Bun, Deno and edge runtimes.

import { AuthError, OrkestrError, RateLimitError, classify } from "./errors.js";

export const VERSION = "0.1.4";
export const DEFAULT_BASE_URL = "https://api.orkestr.eu";
export const DEFAULT_MAX_RETRIES = 3;
export const DEFAULT_RETRY_BUDGET_MS = 10_000;

/** Connection options every static call and `Sandbox.create` accept. */
export interface ClientOptions {
  /** API key (`ork_...`). Default: the ORKESTR_API_KEY environment variable. */
  apiKey?: string | undefined;
  /**
   * Base URL of the API, e.g. `http://localhost:8080` for a self-hosted
   * orkestrd. Default: ORKESTR_BASE_URL, else https://api.orkestr.eu. A
   * trailing `/v1` is accepted.
   */
  baseUrl?: string | undefined;
  /**
   * How often an idempotent call (GET, DELETE, file PUT) is retried after a
   * 429, a 503 or a network failure; 0 disables retries. Default 3.
   */
  maxRetries?: number | undefined;
  /** Bound on the total time one call waits between retries, in ms. Default 10000. */
  retryBudgetMs?: number | undefined;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch | undefined;
}

/** Every call accepts an AbortSignal; aborting rejects with the signal's reason. */
export interface CallOptions {
  signal?: AbortSignal | undefined;
}

/** Resolved connection settings, shared by a sandbox and the calls made through it. */
export interface Connection {
  readonly baseUrl: string;
  readonly apiKey: () => string;
  readonly maxRetries: number;
  readonly retryBudgetMs: number;
  readonly fetch: typeof fetch;
}

function env(name: string): string | undefined {
  // process.env only where it exists (Node, Bun, Deno's Node compat).
  const p = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const v = p?.env?.[name];
  return typeof v === "string" && v !== "" ? v : undefined;
}

export function connect(o: ClientOptions = {}): Connection {
  const key = (o.apiKey ?? env("ORKESTR_API_KEY") ?? "").trim();
  if (key === "") {
    throw new AuthError({
      code: "missing_api_key",
      status: 0,
      message: "no API key: set ORKESTR_API_KEY or pass { apiKey }",
    });
  }
  const raw = o.baseUrl ?? env("ORKESTR_BASE_URL") ?? DEFAULT_BASE_URL;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    u = new URL("invalid:");
  }
  if ((u.protocol !== "http:" && u.protocol !== "https:") || u.host === "") {
    throw new OrkestrError({
      code: "invalid_base_url",
      status: 0,
      message: `invalid base URL ${JSON.stringify(raw.slice(0, 200))}: want http(s)://host[:port][/prefix]`,
    });
  }
  // Credentials in the URL would be sent and could end up in logs: drop them.
  u.username = "";
  u.password = "";
  const path = u.pathname.replace(/\/+$/, "").replace(/\/v1$/, "");
  const f = o.fetch ?? globalThis.fetch;
  if (typeof f !== "function") {
    throw new OrkestrError({ code: "no_fetch", status: 0, message: "this runtime has no fetch; pass { fetch }" });
  }
  return {
    baseUrl: u.origin + path,
    // A function, so that printing the connection never shows the key.
    apiKey: () => key,
    maxRetries: Math.max(0, Math.floor(o.maxRetries ?? DEFAULT_MAX_RETRIES)),
    retryBudgetMs: Math.max(0, o.retryBudgetMs ?? DEFAULT_RETRY_BUDGET_MS),
    fetch: f,
  };
}

export interface Request {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** Under /v1, already escaped. */
  path: string;
  query?: Record<string, string | undefined>;
  /** Sent as JSON (keys converted to snake_case by the caller). */
  json?: unknown;
  /** Sent as raw bytes. */
  bytes?: Uint8Array;
  /** Sent as a raw body with this Content-Type (never retried). */
  stream?: { body: ReadableStream<Uint8Array>; contentType: string };
  /** Preferred over application/json in Accept. */
  accept?: string;
  signal?: AbortSignal | undefined;
}

/** First backoff step; doubled on each retry, with full jitter. */
const BACKOFF_MS = 250;

function idempotent(r: Request): boolean {
  return r.method === "GET" || r.method === "DELETE" || r.method === "PUT";
}

/**
 * Sends r and returns the Response of a 2xx answer with its body unread;
 * any other answer is thrown as an OrkestrError (subclass). Idempotent calls
 * are retried after 429, 503 and network failures.
 */
export async function send(c: Connection, r: Request): Promise<Response> {
  const url = requestUrl(c, r);
  const headers: Record<string, string> = {
    Authorization: "Bearer " + c.apiKey(),
    Accept: r.accept ? `${r.accept}, application/json;q=0.5` : "application/json",
  };
  // Browsers refuse to set User-Agent; elsewhere it names the SDK.
  if (typeof (globalThis as { window?: unknown }).window === "undefined") headers["User-Agent"] = `orkestr-js/${VERSION}`;
  let body: BodyInit | undefined;
  if (r.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(r.json);
  } else if (r.bytes !== undefined) {
    headers["Content-Type"] = "application/octet-stream";
    body = r.bytes as Uint8Array<ArrayBuffer>;
  } else if (r.stream !== undefined) {
    headers["Content-Type"] = r.stream.contentType;
    body = r.stream.body;
  }
  return withRetries(c, r, async () => {
    const init: RequestInit & { duplex?: "half" } = { method: r.method, headers };
    if (body !== undefined) init.body = body;
    // A streamed body needs half duplex (Node's fetch refuses it otherwise).
    if (r.stream !== undefined) init.duplex = "half";
    if (r.signal) init.signal = r.signal;
    const resp = await c.fetch(url, init);
    if (resp.ok) return resp;
    throw await readError(resp);
  });
}

/** The URL r is sent to, its query included. */
export function requestUrl(c: Connection, r: Request): string {
  let url = c.baseUrl + "/v1" + r.path;
  if (r.query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(r.query)) if (v !== undefined) q.set(k, v);
    const s = q.toString();
    if (s) url += "?" + s;
  }
  return url;
}

/**
 * Runs one attempt of r and, for an idempotent call, runs it again after a
 * 429, a 503 or a network failure (an error that is not an OrkestrError),
 * with jittered exponential backoff and never sooner than Retry-After,
 * within the connection's retries and retry budget.
 */
export async function withRetries<T>(c: Connection, r: Request, attempt: () => Promise<T>): Promise<T> {
  const retry = idempotent(r) && r.stream === undefined && c.maxRetries > 0;
  const deadline = Date.now() + c.retryBudgetMs;
  for (let n = 0; ; n++) {
    r.signal?.throwIfAborted();
    let failure: OrkestrError;
    try {
      return await attempt();
    } catch (e) {
      if (e instanceof OrkestrError) {
        if (e.status !== 429 && e.status !== 503) throw e;
        failure = e;
      } else {
        if (r.signal?.aborted) throw r.signal.reason;
        failure = new OrkestrError({
          code: "connection_error",
          status: 0,
          message: `${r.method} /v1${r.path.split("?")[0]}: no answer from the API at ${c.baseUrl}: ${describe(e)}`,
          cause: e,
        });
      }
    }
    if (!retry || n >= c.maxRetries) throw failure;
    // Full jitter on the exponential step, but never less than Retry-After.
    const step = BACKOFF_MS * 2 ** n;
    const after = failure instanceof RateLimitError ? failure.retryAfterMs : (retryAfter.get(failure) ?? 0);
    const wait = Math.max(after, Math.floor(Math.random() * step) + 1);
    if (Date.now() + wait > deadline) throw failure;
    await sleep(wait, r.signal);
  }
}

function describe(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    const c = cause instanceof Error ? `: ${cause.message}` : "";
    return e.message + c;
  }
  return String(e);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Retry-After-Ms or Retry-After (seconds or an HTTP date) in ms; 0 if absent. */
export function retryAfterHeader(h: Headers): number {
  const ms = h.get("Retry-After-Ms");
  if (ms && /^\d+$/.test(ms)) return Number(ms);
  const v = h.get("Retry-After");
  if (!v) return 0;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? 0 : Math.max(0, t - Date.now());
}

/** The Retry-After of the 429 and 503 answers readError turned into errors. */
const retryAfter = new WeakMap<OrkestrError, number>();

/** Turns a non-2xx answer into the matching error class. */
export async function readError(resp: Response): Promise<OrkestrError> {
  const requestId = resp.headers.get("X-Request-Id") ?? undefined;
  let text = "";
  try {
    text = await readLimited(resp, 1 << 20);
  } catch {
    // The body broke off: the status still says what happened.
  }
  let code = "";
  let message = "";
  let details: Record<string, unknown> = {};
  try {
    const parsed: unknown = JSON.parse(text);
    const err = isObject(parsed) ? parsed["error"] : undefined;
    if (isObject(err) && typeof err["code"] === "string" && err["code"] !== "") {
      code = err["code"];
      message = typeof err["message"] === "string" ? err["message"] : "";
      if (isObject(err["details"])) details = err["details"];
    }
  } catch {
    // Not the API's error body (a proxy, a load balancer).
  }
  if (code === "") {
    code = `http_${resp.status}`;
    // Keep a short, printable excerpt of what answered.
    // eslint-disable-next-line no-control-regex
    const excerpt = text.slice(0, 200).replace(/[\u0000-\u001f\u007f]+/g, " ").trim();
    message = `HTTP ${resp.status} ${resp.statusText}`.trim() + (excerpt ? `: ${excerpt}` : "");
  }
  const err = classify({
    code,
    status: resp.status,
    message: requestId ? `${message} (request ${requestId})` : message,
    requestId,
    details,
    retryAfterMs: resp.status === 429 ? retryAfterHeader(resp.headers) : 0,
  });
  if (resp.status === 429 || resp.status === 503) retryAfter.set(err, retryAfterHeader(resp.headers));
  return err;
}

async function readLimited(resp: Response, limit: number): Promise<string> {
  if (!resp.body) return "";
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let out = "";
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    out += dec.decode(value, { stream: true });
    if (n > limit) {
      await reader.cancel().catch(() => {});
      break;
    }
  }
  return out + dec.decode();
}

/** Sends r and decodes a JSON answer (204 and empty bodies are undefined). */
export async function call(c: Connection, r: Request): Promise<unknown> {
  const resp = await send(c, r);
  return decodeAnswer(r, resp.status, resp.headers.get("X-Request-Id") ?? undefined, await resp.text());
}

/** The JSON of a 2xx answer to r (undefined when empty). */
export function decodeAnswer(r: Request, status: number, requestId: string | undefined, text: string): unknown {
  if (text === "") return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new OrkestrError({
      code: "invalid_response",
      status,
      requestId,
      message: `${r.method} /v1${r.path}: the API's answer is not JSON: ${describe(e)}`,
      cause: e,
    });
  }
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Keys whose values belong to the caller: passed through without any case change. */
const OPAQUE = new Set(["env", "metadata"]);

/** snake_case API fields to camelCase, recursively; values of env and metadata unchanged. */
export function camelize(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(camelize);
  if (!isObject(v)) return v;
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v)) {
    const ck = k.replace(/_([a-z0-9])/g, (_, ch: string) => ch.toUpperCase());
    // defineProperty: a key such as "__proto__" is an ordinary own field.
    Object.defineProperty(out, ck, {
      value: OPAQUE.has(k) ? copyOpaque(val) : camelize(val),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

/** camelCase fields to the API's snake_case, recursively; values of env and metadata unchanged. */
export function snakify(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(snakify);
  if (!isObject(v)) return v;
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v)) {
    if (val === undefined) continue;
    const sk = k.replace(/[A-Z]/g, (ch) => "_" + ch.toLowerCase());
    Object.defineProperty(out, sk, {
      value: OPAQUE.has(k) ? val : snakify(val),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

function copyOpaque(v: unknown): unknown {
  if (!isObject(v)) return v;
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v)) {
    Object.defineProperty(out, k, { value: val, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

export function toDate(v: unknown): Date | null {
  if (typeof v !== "string" || v === "") return null;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function segment(id: string, what: string): string {
  if (typeof id !== "string" || id === "") {
    throw new OrkestrError({ code: "invalid_argument", status: 0, message: `${what} must be a non-empty string` });
  }
  // Escaped, so that an id such as "../limits" names no other endpoint.
  return encodeURIComponent(id);
}
