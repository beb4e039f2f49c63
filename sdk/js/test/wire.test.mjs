// Answers a real orkestrd never gives, from a local HTTP server standing in
// for a broken proxy or a hostile endpoint: streams that break off or carry
// garbage, error bodies that are not the API's, Retry-After as an HTTP date,
// hostile JSON keys. Everything else is tested against the real server in
// sdk.test.mjs.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { OrkestrError, RateLimitError, Sandbox, SandboxNotReady } from "../dist/esm/index.js";

const ID = "sbx_01HXYZ0000000000000000ABCD";
const sandbox = {
  id: ID, status: "running", template: "debian-12", size: "small", cpu: 0.5, memory_mb: 512, network: "off",
  region: "fsn1", timeout_seconds: 600, expires_at: "2026-01-02T15:04:05.000Z", env_keys: [],
  metadata: {}, created_at: "2026-01-02T15:04:05.000Z", paused_at: null, terminated_at: null,
};

let server;
let base;
let handler = () => {};
const hits = [];

describe("wire edge cases (local stand-in server)", () => {
  before(async () => {
    server = createServer((req, res) => {
      hits.push(`${req.method} ${req.url}`);
      if (req.method === "GET" && req.url === `/v1/sandboxes/${ID}`) {
        res.writeHead(200, { "Content-Type": "application/json" });
        // Raw JSON text, so that "__proto__" really is a key on the wire.
        res.end(JSON.stringify(sandbox).replace('"metadata":{}', '"metadata":{"__proto__":{"polluted":true},"a_b":"c"}').replace('"region"', '"__proto__":{"polluted":true},"region"'));
        return;
      }
      handler(req, res);
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => server.close());

  const opts = () => ({ apiKey: "ork_test", baseUrl: base });
  const sbx = () => Sandbox.get(ID, opts());

  test("hostile JSON keys do not pollute prototypes; metadata keys unchanged", async () => {
    const s = await sbx();
    assert.equal({}.polluted, undefined);
    assert.equal(Object.getPrototypeOf(s), Sandbox.prototype);
    assert.equal(s.polluted, undefined);
    assert.equal(Object.getPrototypeOf(s.metadata), Object.prototype);
    assert.deepEqual(Object.keys(s.metadata).sort(), ["__proto__", "a_b"]);
    assert.equal(s.metadata.a_b, "c");
    assert.ok(s.expiresAt instanceof Date);
  });

  test("an exec stream that breaks off before its exit line", async () => {
    handler = (req, res) => {
      res.writeHead(200, { "Content-Type": "application/x-ndjson", "X-Request-Id": "req_1" });
      res.write('{"type":"stdout","data":"a"}\n');
      setTimeout(() => res.destroy(), 50);
    };
    const got = [];
    const err = await (async () => {
      for await (const c of (await sbx()).execStream("x")) got.push(c.data);
    })().catch((e) => e);
    assert.deepEqual(got, ["a"]);
    assert.ok(err instanceof OrkestrError, String(err));
    assert.ok(["stream_ended", "connection_error"].includes(err.code), err.code);
  });

  test("an exec stream with a garbage line, unknown events, split lines and an error event", async () => {
    handler = (req, res) => {
      res.writeHead(200, { "Content-Type": "application/x-ndjson", "X-Request-Id": "req_2" });
      res.write('{"type":"future_event","x":1}\n{"type":"std');
      res.write('out","data":"héllo"}\n');
      res.end('{"type":"error","error":{"code":"sandbox_not_ready","message":"paused","details":{"status":"paused"}}}\n');
    };
    const got = [];
    const err = await (async () => {
      for await (const c of (await sbx()).execStream("x")) got.push(c.data);
    })().catch((e) => e);
    assert.deepEqual(got, ["héllo"]);
    assert.ok(err instanceof SandboxNotReady, String(err));
    assert.deepEqual([err.status, err.sandboxStatus, err.requestId], [409, "paused", "req_2"]);

    handler = (req, res) => {
      res.writeHead(200, { "Content-Type": "application/x-ndjson" });
      res.end("<html>not json</html>\n");
    };
    await assert.rejects((async () => { for await (const _ of (await sbx()).execStream("x")); })(), (e) => e.code === "invalid_response");
  });

  test("an error body that is not the API's keeps a short, printable excerpt", async () => {
    handler = (req, res) => {
      res.writeHead(502, { "Content-Type": "text/html" });
      res.end("<html>\u001b[31mbad gateway</html>" + "x".repeat(5000));
    };
    const e = await (await sbx()).exec("x").catch((x) => x);
    assert.ok(e instanceof OrkestrError);
    assert.deepEqual([e.code, e.status], ["http_502", 502]);
    assert.ok(e.message.length < 300 && !e.message.includes("\u001b"), e.message);
  });

  test("Retry-After as an HTTP date is honoured; a 200 that is not JSON is an error", async () => {
    let n = 0;
    handler = (req, res) => {
      if (n++ === 0) {
        res.writeHead(429, { "Retry-After": new Date(Date.now() + 1500).toUTCString() });
        res.end();
        return;
      }
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end("{not json");
    };
    const t0 = Date.now();
    const e = await Sandbox.limits(opts()).catch((x) => x);
    assert.ok(Date.now() - t0 >= 400, "waited for the date");
    assert.equal(n, 2);
    assert.ok(e instanceof OrkestrError && e.code === "invalid_response", String(e));

    handler = (req, res) => {
      res.writeHead(429, { "Retry-After": "3" });
      res.end('{"error":{"code":"rate_limited","message":"slow down","details":{}}}');
    };
    const rl = await Sandbox.limits({ ...opts(), maxRetries: 0 }).catch((x) => x);
    assert.ok(rl instanceof RateLimitError);
    assert.equal(rl.retryAfterMs, 3000, "Retry-After when the body has no retry_after_ms");
  });

  test("the API key goes only into the Authorization header, never into errors", async () => {
    let auth;
    handler = (req, res) => {
      auth = req.headers.authorization;
      res.writeHead(401);
      res.end('{"error":{"code":"unauthenticated","message":"bad key","details":{}}}');
    };
    const key = "ork_" + "s".repeat(43);
    const e = await Sandbox.limits({ apiKey: key, baseUrl: `http://user:pw@127.0.0.1:${server.address().port}/v1` }).catch((x) => x);
    assert.equal(auth, "Bearer " + key);
    assert.ok(!JSON.stringify(e).includes(key) && !e.message.includes(key) && !String(e.stack).includes(key));
    assert.ok(!hits.some((h) => h.includes(key)));
  });
});
