// The exec stream's own HTTP/1.1 client (sdk/js/src/nodestream.ts, used on
// Node for http:// base URLs) against a raw TCP server that answers as a
// server, a proxy or something hostile might: chunked with extensions and
// trailers, Content-Length, read to the close, every answer cut into
// one-byte writes; and answers that are not HTTP, heads without end,
// broken chunk sizes. Each ends in the bytes or in an OrkestrError, and
// never hangs.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { OrkestrError, Sandbox } from "../dist/esm/index.js";

const ID = "sbx_01HXYZ0000000000000000ABCD";
const sandbox = JSON.stringify({
  id: ID, status: "running", template: "debian-12", size: "small", cpu: 0.5, memory_mb: 512, network: "off",
  region: "fsn1", timeout_seconds: 600, expires_at: "2026-01-02T15:04:05.000Z", env_keys: [],
  metadata: {}, created_at: "2026-01-02T15:04:05.000Z", paused_at: null, terminated_at: null,
});
const FRAMES = "application/vnd.orkestr.exec-frames";

function frame(type, payload) {
  const p = Buffer.from(payload);
  const h = Buffer.alloc(5);
  h[0] = type;
  h.writeUInt32BE(p.length, 1);
  return Buffer.concat([h, p]);
}

const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const body = Buffer.concat([frame(1, every), frame(2, "err"), frame(3, '{"exit_code":7,"duration_ms":1}')]);

function chunked(b, sizes) {
  const parts = [];
  let off = 0;
  for (const n of sizes) {
    const k = Math.min(n, b.length - off);
    if (k <= 0) break;
    parts.push(Buffer.from(`${k.toString(16)};ext=1\r\n`), b.subarray(off, off + k), Buffer.from("\r\n"));
    off += k;
  }
  if (off < b.length) parts.push(Buffer.from(`${(b.length - off).toString(16)}\r\n`), b.subarray(off), Buffer.from("\r\n"));
  parts.push(Buffer.from("0\r\nX-Trailer: t\r\n\r\n"));
  return Buffer.concat(parts);
}

describe("the exec stream's HTTP/1.1 client on node:net (raw stand-in server)", () => {
  let server;
  let base;
  let answer = () => Buffer.alloc(0); // what the exec stream request gets
  let closeAfter = false;
  let bytewise = true;
  const requests = [];
  before(async () => {
    server = createServer((sock) => {
      let got = Buffer.alloc(0);
      sock.on("error", () => {});
      sock.on("data", (d) => {
        got = Buffer.concat([got, d]);
        const end = got.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = got.subarray(0, end).toString("latin1");
        const len = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (got.length < end + 4 + len) return;
        const req = { head, body: got.subarray(end + 4, end + 4 + len).toString() };
        got = got.subarray(end + 4 + len);
        if (head.startsWith("GET ")) {
          sock.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(sandbox)}\r\n\r\n${sandbox}`);
          return;
        }
        requests.push(req);
        const wire = answer();
        if (!bytewise) {
          sock.write(wire);
          if (closeAfter) sock.end();
          return;
        }
        let i = 0;
        const next = () => {
          if (sock.destroyed) return;
          if (i < wire.length) sock.write(wire.subarray(i, ++i), next);
          else if (closeAfter) sock.end();
        };
        next();
      });
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${server.address().port}`;
  });
  after(() => server.close());

  const collect = async (opts = {}) => {
    const sbx = await Sandbox.get(ID, { apiKey: "ork_test", baseUrl: base });
    const got = { stdout: [], stderr: [] };
    const st = sbx.execStream("echo hi", opts);
    const err = await (async () => {
      for await (const c of st) got[c.stream].push(...c.bytes);
    })().catch((e) => e);
    return { got, err, st };
  };
  const okHead = (extra) => `HTTP/1.1 200 OK\r\nContent-Type: ${FRAMES}\r\nX-Request-Id: req_raw\r\n${extra}\r\n`;

  for (const [name, make, close] of [
    ["chunked, with chunk extensions and trailers", () => Buffer.concat([Buffer.from(okHead("Transfer-Encoding: chunked\r\n")), chunked(body, [1, 2, 3, 200, 7])]), false],
    ["Content-Length", () => Buffer.concat([Buffer.from(okHead(`Content-Length: ${body.length}\r\n`)), body]), false],
    ["read to the connection's close (no length)", () => Buffer.concat([Buffer.from(okHead("Connection: close\r\n")), body]), true],
  ]) {
    test(`${name}, one byte per write: every byte, the exit code`, async () => {
      answer = make;
      closeAfter = close;
      bytewise = true;
      const { got, err, st } = await collect();
      assert.equal(err, undefined, String(err));
      assert.deepEqual(Buffer.from(got.stdout), every);
      assert.equal(Buffer.from(got.stderr).toString(), "err");
      assert.equal((await st.wait()).exitCode, 7);
      const req = requests.at(-1);
      assert.match(req.head, /^POST \/v1\/sandboxes\/sbx_01HXYZ0000000000000000ABCD\/exec\/stream HTTP\/1\.1\r\n/);
      assert.match(req.head, new RegExp(`\r\nHost: 127\\.0\\.0\\.1:${server.address().port}\r\n`));
      assert.match(req.head, /\r\nAuthorization: Bearer ork_test\r\n/);
      assert.match(req.head, new RegExp(`\r\nAccept: ${FRAMES}`));
      assert.equal(JSON.parse(req.body).command, "echo hi");
      // Its own client, which never asks the server to close first (a server
      // closing with an unread request body resets the connection, and the
      // reset loses the answer's end); node:http would say keep-alive.
      assert.doesNotMatch(req.head, /\r\nConnection:/i);
    });
  }

  test("streams read at once each keep their own bytes", async () => {
    // Distinct payloads, large enough for many reads of each stream to
    // interleave and for each to go through several read slabs, every
    // chunk kept to the end: a read landing in memory another stream, or
    // a chunk still held, uses would show up as wrong bytes.
    const payload = (k) => {
      const b = Buffer.allocUnsafe(3 << 20);
      for (let i = 0; i < b.length; i++) b[i] = (i * 31 + (i >> 12) + k * 101) & 255;
      return b;
    };
    let k = 0;
    answer = () => {
      const b = Buffer.concat([frame(1, payload(k++)), frame(3, '{"exit_code":0,"duration_ms":1}')]);
      return Buffer.concat([Buffer.from(okHead(`Content-Length: ${b.length}\r\n`)), b]);
    };
    closeAfter = false;
    bytewise = false;
    const sbx = await Sandbox.get(ID, { apiKey: "ork_test", baseUrl: base });
    const read = async () => {
      const chunks = [];
      for await (const c of sbx.execStream("x")) chunks.push(c.bytes);
      return Buffer.concat(chunks);
    };
    const got = await Promise.all([read(), read(), read()]);
    const matched = new Set();
    for (const b of got) {
      const j = [0, 1, 2].find((i) => b.equals(payload(i)));
      assert.ok(j !== undefined, "a stream's bytes are not any one payload");
      matched.add(j);
    }
    assert.equal(matched.size, 3);
  });

  test("an error answer with Content-Length is its error class with the request id", async () => {
    const e = '{"error":{"code":"sandbox_not_running","message":"The sandbox is paused","details":{}}}';
    answer = () => Buffer.from(`HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nX-Request-Id: req_409\r\nContent-Length: ${e.length}\r\n\r\n${e}`);
    closeAfter = false;
    bytewise = true;
    const { err } = await collect();
    assert.ok(err instanceof OrkestrError && err.status === 409 && err.code === "sandbox_not_running", String(err));
    assert.equal(err.requestId, "req_409");
  });

  for (const [name, wire, close] of [
    ["an answer that is not HTTP", "SSH-2.0-OpenSSH_9.2\r\n\r\n", true],
    ["a head that never ends", "HTTP/1.1 200 OK\r\nX-A: " + "a".repeat(200 << 10), false],
    ["a chunk size that is not hex", okHead("Transfer-Encoding: chunked\r\n") + "zz\r\nabc\r\n", false],
    ["a chunk not followed by CRLF", okHead("Transfer-Encoding: chunked\r\n") + "3\r\nabcXY", false],
    ["a Content-Length that is not a number", okHead("Content-Length: -1\r\n"), false],
    ["a connection closed inside the head", "HTTP/1.1 200 OK\r\nContent-", true],
    ["a 204 without a body (the connection kept open)", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false],
    ["a connection closed inside a chunk", okHead("Transfer-Encoding: chunked\r\n") + "ff\r\nabc", true],
  ]) {
    test(`${name} is an OrkestrError, not a hang`, async () => {
      answer = () => Buffer.from(wire);
      closeAfter = close;
      bytewise = false;
      const { err } = await collect();
      assert.ok(err instanceof OrkestrError, `${name}: ${err}`);
    });
  }

  test("an abort before the answer's head ends the call with the abort", async () => {
    answer = () => Buffer.alloc(0);
    closeAfter = false;
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error("stop")), 50);
    const { err } = await collect({ signal: ac.signal });
    assert.ok(err !== undefined);
  });
});
