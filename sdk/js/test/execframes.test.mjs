// The binary exec stream as Node reads it (its own HTTP/1.1 on node:net, not fetch) against a
// local HTTP server standing in for a broken proxy or a hostile endpoint:
// API errors, frames cut off, oversized frames, an endless error body, an
// abort in mid-stream, and the same through a fetch passed in the options.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { OrkestrError, Sandbox, SandboxNotFound } from "../dist/esm/index.js";

const ID = "sbx_01HXYZ0000000000000000ABCD";
const sandbox = {
  id: ID, status: "running", template: "debian-12", size: "small", cpu: 0.5, memory_mb: 512, network: "off",
  region: "fsn1", timeout_seconds: 600, expires_at: "2026-01-02T15:04:05.000Z", env_keys: [],
  metadata: {}, created_at: "2026-01-02T15:04:05.000Z", paused_at: null, terminated_at: null,
};
const FRAMES = "application/vnd.orkestr.exec-frames";

function frame(type, payload) {
  const p = typeof payload === "string" ? Buffer.from(payload) : Buffer.from(payload);
  const h = Buffer.alloc(5);
  h[0] = type;
  h.writeUInt32BE(p.length, 1);
  return Buffer.concat([h, p]);
}

describe("binary exec stream edge cases (local stand-in server)", () => {
  let server;
  let base;
  let handler = () => {};
  const accepts = [];
  const viaFetch = [];
  before(async () => {
    server = createServer((req, res) => {
      if (req.method === "GET") {
        res.writeHead(200, { "Content-Type": "application/json" });
        res.end(JSON.stringify(sandbox));
        return;
      }
      accepts.push(req.headers.accept);
      viaFetch.push(req.headers["sec-fetch-mode"] !== undefined); // undici's fetch sends it, node:http does not
      req.resume();
      handler(req, res);
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => server.close());

  const collect = async (sbx, opts = {}) => {
    const got = [];
    const st = sbx.execStream("x", opts);
    const err = await (async () => {
      for await (const c of st) got.push(...c.bytes);
    })().catch((e) => e);
    return { got, err, st };
  };

  for (const via of ["node:net", "a fetch passed in"]) {
    const opts = () => ({ apiKey: "ork_test", baseUrl: base, ...(via === "node:net" ? {} : { fetch: (u, i) => fetch(u, i) }) });

    test(`${via}: every byte value in frames cut anywhere, then the exit`, async () => {
      const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      handler = (req, res) => {
        res.writeHead(200, { "Content-Type": FRAMES, "X-Request-Id": "req_f" });
        const wire = Buffer.concat([frame(1, all.subarray(0, 3)), frame(1, all.subarray(3)), frame(2, "e"), frame(3, '{"exit_code":5,"duration_ms":1,"blocked_connections":[]}')]);
        // One byte per write: headers and payloads split everywhere.
        let i = 0;
        const next = () => (i < wire.length ? res.write(wire.subarray(i, ++i), next) : res.end());
        next();
      };
      const { got, err, st } = await collect(await Sandbox.get(ID, opts()));
      assert.equal(err, undefined, String(err));
      assert.deepEqual(Buffer.from(got), Buffer.concat([all, Buffer.from("e")]));
      assert.equal((await st.wait()).exitCode, 5);
      assert.ok(accepts.at(-1).startsWith(FRAMES));
      assert.equal(viaFetch.at(-1), via !== "node:net", "read through the wrong client");
    });

    test(`${via}: an API error answer is its error class, with the request id`, async () => {
      handler = (req, res) => {
        res.writeHead(404, { "Content-Type": "application/json", "X-Request-Id": "req_404" });
        res.end('{"error":{"code":"sandbox_not_found","message":"no such sandbox","details":{}}}');
      };
      const { err } = await collect(await Sandbox.get(ID, opts()));
      assert.ok(err instanceof SandboxNotFound, String(err));
      assert.equal(err.requestId, "req_404");
    });

    test(`${via}: an endless error body is cut, not read to the end`, async () => {
      handler = (req, res) => {
        res.writeHead(502, { "Content-Type": "text/html" });
        const chunk = Buffer.alloc(64 << 10, 60);
        const pump = () => {
          while (res.write(chunk));
          res.once("drain", pump);
        };
        res.on("close", () => res.removeAllListeners("drain"));
        pump();
      };
      const { err } = await collect(await Sandbox.get(ID, opts()));
      assert.ok(err instanceof OrkestrError && err.status === 502, String(err));
      assert.ok(err.message.length < 2000, `message of ${err.message.length} characters`);
    });

    test(`${via}: frames cut off, and a frame over 16 MiB, are errors`, async () => {
      handler = (req, res) => {
        res.writeHead(200, { "Content-Type": FRAMES });
        res.write(frame(1, "abc"));
        res.write(frame(1, "defgh").subarray(0, 7));
        setTimeout(() => res.destroy(), 50);
      };
      let r = await collect(await Sandbox.get(ID, opts()));
      assert.deepEqual(Buffer.from(r.got).toString(), "abcde".slice(0, r.got.length));
      assert.ok(r.err instanceof OrkestrError && ["stream_ended", "connection_error"].includes(r.err.code), String(r.err));

      handler = (req, res) => {
        res.writeHead(200, { "Content-Type": FRAMES });
        res.end(Buffer.from([1, 0xff, 0xff, 0xff, 0xff]));
      };
      r = await collect(await Sandbox.get(ID, opts()));
      assert.ok(r.err instanceof OrkestrError, String(r.err));
      assert.deepEqual(r.got, []);
    });

    test(`${via}: an abort in mid-stream ends the iteration with the abort`, async () => {
      let closed;
      const gone = new Promise((r) => (closed = r));
      handler = (req, res) => {
        res.writeHead(200, { "Content-Type": FRAMES });
        res.write(frame(1, "x"));
        res.on("close", closed);
      };
      const ac = new AbortController();
      const sbx = await Sandbox.get(ID, opts());
      const st = sbx.execStream("x", { signal: ac.signal });
      const got = [];
      const err = await (async () => {
        for await (const c of st) {
          got.push(c.data);
          ac.abort();
        }
      })().catch((e) => e);
      assert.deepEqual(got, ["x"]);
      assert.ok(err?.name === "AbortError", String(err));
      await gone; // the connection was released
    });
  }
});
