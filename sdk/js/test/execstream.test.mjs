// Exec output streams of the TypeScript SDK against a real orkestrd and real
// gVisor sandboxes: every byte value byte-exact across chunk boundaries,
// output without a final newline, stdout/stderr order, the exit code, and a
// 0.5 GiB stream read slowly (back-pressure: the command waits, no memory
// piles up in the server or the agent).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { missingPrerequisite, processesUnder, sdkDir, startServer } from "./helpers.mjs";
import { Sandbox } from "../dist/esm/index.js";

const skip = missingPrerequisite() || (!existsSync(join(sdkDir, "dist/esm/index.js")) && "run npm run build first");
if (skip && process.env.ORKESTR_SDK_TEST_STRICT) throw new Error(`cannot run the SDK tests: ${skip}`);

/** A shell printf of these byte values, every one as an octal escape. */
function printf(values) {
  return "printf '" + values.map((b) => "\\" + b.toString(8).padStart(3, "0")).join("") + "'";
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

function rssMiB(status) {
  const m = /^VmRSS:\s+(\d+)/m.exec(status);
  assert.ok(m, `no VmRSS in ${status}`);
  return Math.floor(Number(m[1]) / 1024);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

describe("exec streams against a real orkestrd", { skip, timeout: 900_000 }, () => {
  let S;
  let sbx;
  before(async () => {
    S = await startServer({ poolSize: 0 });
    sbx = await Sandbox.create({ template: "debian-12", apiKey: S.key, baseUrl: S.url });
  });
  after(async () => {
    try {
      await sbx?.terminate();
    } finally {
      await S?.stop();
    }
  });

  test("every byte value, no final newline, stdout/stderr order, exit code", async () => {
    // All 256 values on stdout in three writes, reversed on stderr.
    let cmd = [range(0, 100), range(100, 195), range(195, 256)].map(printf).join("; sleep 0.3; ");
    cmd += "; " + printf(range(0, 256).reverse()) + " >&2";
    const out = [];
    const err = [];
    for await (const c of sbx.execStream(cmd)) (c.stream === "stdout" ? out : err).push(c.bytes);
    assert.deepEqual(concat(out), Uint8Array.from(range(0, 256)));
    assert.deepEqual(concat(err), Uint8Array.from(range(0, 256).reverse()));

    // 4 MiB of 0..255 repeated, written 1000 bytes at a time and cut
    // wherever the frames happen to fall.
    await sbx.exec(printf(range(0, 256)) + " > /tmp/b; for i in $(seq 14); do cat /tmp/b /tmp/b > /tmp/b2; mv /tmp/b2 /tmp/b; done");
    let n = 0;
    const st = sbx.execStream("dd if=/tmp/b bs=1000 status=none");
    for await (const c of st) {
      for (let i = 0; i < c.bytes.length; i++) if (c.bytes[i] !== (n + i) % 256) assert.fail(`byte ${n + i} is ${c.bytes[i]}`);
      n += c.bytes.length;
    }
    assert.equal(n, 4 << 20);
    assert.equal((await st.wait()).exitCode, 0);

    // No final newline, and the exit code of the command.
    const nl = sbx.execStream("printf 'no newline'; printf 'on stderr either' >&2; exit 7");
    let o = "";
    let e = "";
    for await (const c of nl) c.stream === "stdout" ? (o += c.data) : (e += c.data);
    assert.equal(o, "no newline");
    assert.equal(e, "on stderr either");
    assert.equal((await nl.wait()).exitCode, 7);
    assert.equal((await sbx.execStream("exit 3").wait()).exitCode, 3);

    // stdout and stderr in the order they were written.
    const order = [];
    for await (const c of sbx.execStream("for i in 1 2 3; do echo out$i; sleep 0.3; echo err$i >&2; sleep 0.3; done")) {
      const last = order[order.length - 1];
      if (last && last[0] === c.stream) last[1] += c.data;
      else order.push([c.stream, c.data]);
    }
    assert.deepEqual(order, [1, 2, 3].flatMap((i) => [["stdout", `out${i}\n`], ["stderr", `err${i}\n`]]));
  });

  test("a 0.5 GiB stream read slowly: the command waits, memory stays bounded, every byte arrives", async () => {
    const mib = 512;
    const pattern = new TextEncoder().encode("0123456789abcde\n");
    const server = processesUnder(S.stateDir).find((p) => / serve /.test(p.cmd));
    assert.ok(server, "orkestrd's process");
    const serverRSS = () => rssMiB(readFileSync(`/proc/${server.pid}/status`, "utf8"));
    const agentRSS = async () => rssMiB((await sbx.exec("cat /proc/1/status")).stdout);

    const st = sbx.execStream(
      `i=0; while [ $i -lt ${mib} ]; do yes 0123456789abcde | head -c 1048576; i=$((i+1)); echo $i > /tmp/progress; done`,
      { timeoutSeconds: 600 },
    );
    const it = st[Symbol.asyncIterator]();
    let n = 0;
    const check = (b) => {
      for (let i = 0; i < b.length; i++) {
        if (b[i] !== pattern[(n + i) % pattern.length]) assert.fail(`byte ${n + i} is ${b[i]}`);
      }
      n += b.length;
    };
    const first = await it.next();
    assert.ok(!first.done, "no output");
    check(first.value.bytes);
    const server0 = serverRSS();
    const agent0 = await agentRSS();

    // The reader stalls: the command must stall too, early. On a loaded
    // host the buffers in between may take a while to fill, so it is
    // stalled once two readings 2 s apart agree (30 s at most).
    await sleep(3000);
    let p1 = (await sbx.exec("cat /tmp/progress")).stdout;
    let p2;
    for (const deadline = Date.now() + 30_000; ; p1 = p2) {
      await sleep(2000);
      p2 = (await sbx.exec("cat /tmp/progress")).stdout;
      if (p1 === p2 || Date.now() > deadline) break;
    }
    assert.ok(p1 === p2 && Number(p2) < 128, `with the reader stalled the command went on: ${p1} then ${p2} MiB`);
    assert.ok(serverRSS() - server0 < 64, `orkestrd grew by ${serverRSS() - server0} MiB`);
    const agentGrew = (await agentRSS()) - agent0;
    assert.ok(agentGrew < 64, `the agent grew by ${agentGrew} MiB`);

    // Read the rest slowly: all of it arrives, byte-exact.
    for (;;) {
      const r = await it.next();
      if (r.done) break;
      check(r.value.bytes);
      await sleep(1);
    }
    assert.equal(n, mib << 20);
    assert.equal((await st.wait()).exitCode, 0);
  });
});
