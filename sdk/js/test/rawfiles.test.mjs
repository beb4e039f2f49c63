// Downloads and streamed uploads (files.readStream, readArchive,
// writeStream, writeArchive) through the SDK's own HTTP/1.1 client on Node
// for http:// base URLs, against a stand-in server: the bytes arrive whole
// and in order both ways, the query is sent, a 503 is retried after its
// Retry-After, errors keep their class, a body cut short or cancelled ends
// the stream instead of hanging it, and an upload the server refuses early
// ends in the server's error.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import { OrkestrError, Sandbox } from "../dist/esm/index.js";

const ID = "sbx_01HXYZ0000000000000000ABCD";
const sandbox = JSON.stringify({
  id: ID, status: "running", template: "debian-12", size: "small", cpu: 0.5, memory_mb: 512, network: "off",
  region: "fsn1", timeout_seconds: 600, expires_at: "2026-01-02T15:04:05.000Z", env_keys: [],
  metadata: {}, created_at: "2026-01-02T15:04:05.000Z", paused_at: null, terminated_at: null,
});
const big = randomBytes(8 << 20);

async function readAll(stream) {
  const parts = [];
  for await (const p of stream) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

describe("file downloads on the SDK's HTTP/1.1 client (stand-in server)", () => {
  let server;
  let base;
  const seen = [];
  let busy = 0;
  let cancelled;
  let received;
  before(async () => {
    server = createServer((req, res) => {
      const u = new URL(req.url, "http://x");
      seen.push({ method: req.method, path: u.pathname, query: Object.fromEntries(u.searchParams), headers: req.headers });
      const error = (status, code, extra = {}) => {
        res.writeHead(status, { "Content-Type": "application/json", "X-Request-Id": "req_1", ...extra });
        res.end(JSON.stringify({ error: { code, message: `${code} here`, details: {} } }));
      };
      if (req.method === "PUT") {
        if (u.searchParams.get("path") === "/refused") return error(403, "permission_denied");
        if (u.searchParams.get("path") === "/notjson") {
          req.resume();
          req.on("end", () => res.end("not json"));
          return;
        }
        const parts = [];
        req.on("data", (d) => parts.push(d));
        req.on("end", () => {
          received = Buffer.concat(parts);
          res.writeHead(200, { "Content-Type": "application/json" });
          res.end(JSON.stringify(u.pathname.endsWith("/archive")
            ? { path: u.searchParams.get("path"), entries: 3, bytes: received.length }
            : { path: u.searchParams.get("path"), size: received.length }));
        });
        return;
      }
      if (u.pathname === `/v1/sandboxes/${ID}`) {
        res.writeHead(200, { "Content-Type": "application/json" });
        return res.end(sandbox);
      }
      if (u.pathname === `/v1/sandboxes/${ID}/files/archive`) {
        res.writeHead(200, { "Content-Type": "application/x-tar" });
        return res.end(`archive of ${u.searchParams.get("path")} as ${u.searchParams.get("compression")}`);
      }
      switch (u.searchParams.get("path")) {
        case "/big": {
          // In pieces of different sizes, as a socket delivers them.
          res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": big.length });
          let off = 0;
          const next = () => {
            if (off >= big.length) return res.end();
            const k = Math.min(1 + ((off * 7919) % 300000), big.length - off);
            const ok = res.write(big.subarray(off, off + k));
            off += k;
            if (ok) setImmediate(next);
            else res.once("drain", next);
          };
          return next();
        }
        case "/busy":
          if (busy++ === 0) return error(503, "node_unavailable", { "Retry-After": "0" });
          res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": 2 });
          return res.end("ok");
        case "/cut":
          res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": 1000 });
          res.write(Buffer.alloc(500, 1));
          return setTimeout(() => res.socket.destroy(), 20);
        case "/endless":
          res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": 1 << 30 });
          cancelled = new Promise((resolve) => res.on("close", resolve));
          res.write(Buffer.alloc(64 << 10));
          return;
        default:
          return error(404, "file_not_found");
      }
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => server.close());

  const sbx = () => Sandbox.get(ID, { apiKey: "ork_test", baseUrl: base });

  test("a file comes back byte for byte, with its path in the query", async () => {
    const s = await sbx();
    const got = await readAll(await s.files.readStream("/big"));
    assert.equal(got.length, big.length);
    assert.ok(got.equals(big));
    const req = seen.findLast((r) => r.query.path === "/big");
    assert.equal(req.path, `/v1/sandboxes/${ID}/files`);
    assert.equal(req.headers.authorization, "Bearer ork_test");
    assert.equal(req.headers.connection, undefined);
  });

  test("a 503 is retried after its Retry-After", async () => {
    const s = await sbx();
    const got = await readAll(await s.files.readStream("/busy"));
    assert.equal(got.toString(), "ok");
    assert.equal(seen.filter((r) => r.query.path === "/busy").length, 2);
  });

  test("an error keeps its code, status and request id", async () => {
    const s = await sbx();
    await assert.rejects(s.files.readStream("/nope"), (e) => {
      assert.ok(e instanceof OrkestrError);
      assert.equal(e.code, "file_not_found");
      assert.equal(e.status, 404);
      assert.equal(e.requestId, "req_1");
      return true;
    });
  });

  test("a body cut short fails the stream", async () => {
    const s = await sbx();
    await assert.rejects(readAll(await s.files.readStream("/cut")));
  });

  test("cancelling the stream closes the connection", async () => {
    const s = await sbx();
    const stream = await s.files.readStream("/endless");
    const reader = stream.getReader();
    const first = await reader.read();
    assert.equal(first.done, false);
    await reader.cancel();
    await cancelled;
  });

  test("an archive is asked for with its compression", async () => {
    const s = await sbx();
    const got = await readAll(await s.files.readArchive("/workspace/d", { compression: "zstd" }));
    assert.equal(got.toString(), "archive of /workspace/d as zstd");
  });

  // A stream yielding data in uneven pieces, as a file or a network would.
  const source = (data) => {
    let off = 0;
    return new ReadableStream({
      pull(ctrl) {
        if (off >= data.length) return ctrl.close();
        const k = Math.min(1 + ((off * 104729) % (1 << 20)), data.length - off);
        ctrl.enqueue(new Uint8Array(data.subarray(off, off + k)));
        off += k;
      },
    });
  };

  test("a streamed upload arrives byte for byte, chunked", async () => {
    const s = await sbx();
    await s.files.writeStream("/workspace/up.bin", source(big));
    assert.ok(received.equals(big));
    const req = seen.findLast((r) => r.method === "PUT");
    assert.equal(req.headers["transfer-encoding"], "chunked");
    assert.equal(req.headers.connection, undefined); // the SDK's own client, not fetch
    assert.equal(req.headers["content-type"], "application/octet-stream");
    assert.equal(req.query.path, "/workspace/up.bin");
  });

  test("a streamed archive upload returns what was extracted", async () => {
    const s = await sbx();
    const out = await s.files.writeArchive("/workspace/d", source(big.subarray(0, 100000)));
    assert.deepEqual(out, { path: "/workspace/d", entries: 3, bytes: 100000 });
    assert.equal(seen.findLast((r) => r.method === "PUT").headers["content-type"], "application/x-tar");
  });

  test("an upload refused before its body is read ends in the server's error", async () => {
    const s = await sbx();
    await assert.rejects(s.files.writeStream("/refused", source(big)), (e) => {
      assert.ok(e instanceof OrkestrError);
      assert.equal(e.code, "permission_denied");
      assert.equal(e.status, 403);
      return true;
    });
  });

  test("an upload's answer that is not JSON is invalid_response", async () => {
    const s = await sbx();
    await assert.rejects(s.files.writeStream("/notjson", source(big.subarray(0, 1000))), (e) => {
      assert.ok(e instanceof OrkestrError);
      assert.equal(e.code, "invalid_response");
      return true;
    });
  });

  test("a source stream that fails fails the upload", async () => {
    const s = await sbx();
    let sent = false;
    const failing = new ReadableStream({
      pull(ctrl) {
        if (!sent) {
          sent = true;
          return ctrl.enqueue(new Uint8Array(1000));
        }
        ctrl.error(new Error("disk gone"));
      },
    });
    await assert.rejects(s.files.writeStream("/workspace/x", failing), OrkestrError);
  });
});
