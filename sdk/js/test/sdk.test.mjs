// The SDK against a real orkestrd on real gVisor sandboxes: every call of the
// README, every error class provoked for real, streaming, pagination,
// retries, cancellation, hostile input, and the packed package used from
// `import` and `require` in a blank project, where every README code block
// runs as written. The README's "python-3.12" is replaced by python-3.11
// (helpers.PYTHON): the OCI template python-3.12 is not built on machines
// without registry access; the offline python-3.11 template has `python`.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createHash, randomFillSync } from "node:crypto";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PYTHON, missingPrerequisite, sdkDir, startServer } from "./helpers.mjs";
import {
  AuthError,
  ExecTimeout,
  NetworkPolicyError,
  OrkestrError,
  PlanLimitError,
  RateLimitError,
  Sandbox,
  SandboxNotFound,
  SandboxNotReady,
  SnapshotCapReached,
  Detached,
} from "../dist/esm/index.js";

const skip = missingPrerequisite() || (!existsSync(join(sdkDir, "dist/esm/index.js")) && "run npm run build first");
// make test-js sets ORKESTR_SDK_TEST_STRICT: there a missing prerequisite fails.
if (skip && process.env.ORKESTR_SDK_TEST_STRICT) throw new Error(`cannot run the SDK tests: ${skip}`);

const CONFIG = `
plans:
  tiny:
    allowed_sizes: [small]
    max_concurrent: 1
    snapshot_cap: 1
    rate_limit: {requests_per_second: 1, burst: 2}
  metered:
    allowed_sizes: [small]
    max_concurrent: 2
    snapshot_cap: 1
    usage_gb_hours_included: 0.0002
    usage_cpu_hours_included: 1
    rate_limit: {requests_per_second: 50, burst: 100}
`;

let S; // the server
let team; // connection options of the bootstrap account (plan team)
const keysUsed = [];

/** Connection options for key. */
function conn(key, extra = {}) {
  keysUsed.push(key);
  return { apiKey: key, baseUrl: S.url, ...extra };
}

/** Terminates every sandbox of the key's account that is not terminated yet. */
async function terminateAll(key) {
  for await (const sbx of Sandbox.list({ apiKey: key, baseUrl: S.url })) {
    if (sbx.status !== "terminated") await sbx.terminate();
  }
}

/** The ```ts blocks of sdk/js/README.md with the heading above each. */
function readmeBlocks() {
  const readme = readFileSync(join(sdkDir, "README.md"), "utf8");
  const blocks = [];
  let heading = "";
  const re = /^(#+ .*)$|^```ts\n([\s\S]*?)^```$/gm;
  for (let m; (m = re.exec(readme)); ) {
    if (m[1]) heading = m[1].replace(/^#+ /, "");
    else blocks.push({ heading, code: m[2] });
  }
  assert.ok(blocks.length >= 11, `found ${blocks.length} blocks`);
  return blocks;
}

/** A fetch that counts the requests it sends, by "METHOD path". */
function countingFetch() {
  const calls = [];
  const f = (url, init) => {
    calls.push(`${init?.method ?? "GET"} ${new URL(url).pathname}`);
    return fetch(url, init);
  };
  return { fetch: f, calls };
}

describe("orkestr SDK against a real orkestrd", { skip, timeout: 600_000 }, () => {
  before(async () => {
    S = await startServer({ config: CONFIG, poolSize: 1 });
    team = conn(S.key);
  });

  after(async () => {
    if (!S) return;
    try {
      for (const k of new Set(keysUsed)) await terminateAll(k).catch(() => {});
    } finally {
      await S.stop();
    }
  });

  test("configuration: apiKey/ORKESTR_API_KEY, baseUrl/ORKESTR_BASE_URL, default base URL", async () => {
    const saved = { k: process.env.ORKESTR_API_KEY, u: process.env.ORKESTR_BASE_URL };
    try {
      delete process.env.ORKESTR_API_KEY;
      delete process.env.ORKESTR_BASE_URL;
      await assert.rejects(Sandbox.limits({ baseUrl: S.url }), (e) => e instanceof AuthError && e.code === "missing_api_key" && e.status === 0);
      // Without a base URL the SDK goes to https://api.orkestr.eu; the
      // fetch here answers for it, so nothing leaves this machine.
      const seen = [];
      const fake = async (url) => {
        seen.push(url);
        return new Response(JSON.stringify({ error: { code: "unauthenticated", message: "no" } }), { status: 401 });
      };
      await assert.rejects(Sandbox.limits({ apiKey: "ork_x", fetch: fake }), AuthError);
      assert.deepEqual(seen, ["https://api.orkestr.eu/v1/limits"]);

      process.env.ORKESTR_API_KEY = S.key;
      process.env.ORKESTR_BASE_URL = S.url + "/v1/";
      const l = await Sandbox.limits();
      assert.equal(l.plan, "team");
      // An explicit key wins over the environment.
      await assert.rejects(Sandbox.limits({ apiKey: "ork_" + "A".repeat(43) }), (e) => e instanceof AuthError && e.status === 401);
      await assert.rejects(Sandbox.limits({ baseUrl: "ftp://x" }), (e) => e instanceof OrkestrError && e.code === "invalid_base_url");
    } finally {
      for (const [k, v] of [["ORKESTR_API_KEY", saved.k], ["ORKESTR_BASE_URL", saved.u]]) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  test("limits and templates: camelCase fields, Date for times", async () => {
    const l = await Sandbox.limits(team);
    assert.equal(l.plan, "team");
    assert.deepEqual(l.allowedSizes, ["small", "medium", "large"]);
    assert.equal(l.maxConcurrent, 50);
    assert.equal(l.snapshotCap, 10);
    assert.equal(typeof l.usageGbHoursUsed, "number");
    assert.equal(l.usageGbHoursIncluded, 2000);
    assert.equal(l.usageCpuHoursIncluded, 500);
    assert.ok(l.usageResetsAt instanceof Date && l.usageResetsAt.getUTCDate() === 1 && l.usageResetsAt > new Date());
    assert.deepEqual(
      l.sizes.map((s) => [s.size, s.cpu, s.memoryMb, s.allowed]),
      [["small", 0.5, 512, true], ["medium", 2, 4096, true], ["large", 4, 8192, true]],
    );
    assert.ok(!("allowed_sizes" in l) && !("memory_mb" in l.sizes[0]));
    const free = await Sandbox.limits(conn(S.newKey("free1", { plan: "free" })));
    assert.deepEqual(free.allowedSizes, ["small"]);
    assert.equal(free.allowedSizes.includes("medium"), false);
    assert.equal(free.maxConcurrent, 1);
    const tmpls = await Sandbox.templates(team);
    assert.ok(tmpls.some((t) => t.name === PYTHON && t.built === true));
    assert.ok(tmpls.some((t) => t.name === "python-3.12" && t.default === true));
  });

  test("create: every option, env and metadata keys unchanged, Dates; withTemp terminates and rethrows", async () => {
    const sbx = await Sandbox.create({
      ...team,
      template: "debian-12",
      size: "small",
      network: "off",
      timeoutSeconds: 600,
      env: { OPENAI_API_KEY: "sk-test", snake_case_VAR: "v1", camelVar: "v2" },
      metadata: { agentRun: "r_123", snake_key: "s", ["__proto__"]: "p", "Mixed-Key": "m" },
      region: "fsn1",
    });
    try {
      assert.match(sbx.id, /^sbx_[0-9A-Z]{26}$/);
      assert.equal(sbx.status, "running");
      assert.equal(sbx.template, "debian-12");
      assert.equal(sbx.memoryMb, 512);
      assert.equal(sbx.cpu, 0.5);
      assert.equal(sbx.timeoutSeconds, 600);
      assert.equal(sbx.region, "fsn1");
      assert.deepEqual(sbx.envKeys, ["OPENAI_API_KEY", "camelVar", "snake_case_VAR"]);
      assert.deepEqual({ ...sbx.metadata }, { agentRun: "r_123", snake_key: "s", ["__proto__"]: "p", "Mixed-Key": "m" });
      assert.equal(Object.getPrototypeOf(sbx.metadata), Object.prototype, "a __proto__ key must not become the prototype");
      assert.ok(sbx.createdAt instanceof Date && sbx.expiresAt instanceof Date && sbx.pausedAt === null && sbx.terminatedAt === null);
      assert.ok(sbx.expiresAt.getTime() - sbx.createdAt.getTime() > 590_000);
      // The env reached the sandbox under its own names; values never come back.
      const r = await sbx.exec('printf "%s|%s|%s" "$OPENAI_API_KEY" "$snake_case_VAR" "$camelVar"');
      assert.equal(r.stdout, "sk-test|v1|v2");
      assert.ok(!JSON.stringify(sbx).includes("sk-test"));
      assert.ok(!JSON.stringify(sbx).includes(S.key), "a sandbox must not show its API key");
      // update: metadata replaced, keys unchanged; timeout counted from now.
      await sbx.update({ timeoutSeconds: 300, metadata: { newKey_x: "1" } });
      assert.deepEqual({ ...sbx.metadata }, { newKey_x: "1" });
      assert.equal(sbx.timeoutSeconds, 300);
      const again = await Sandbox.get(sbx.id, team);
      assert.equal(again.id, sbx.id);
      assert.deepEqual({ ...again.metadata }, { newKey_x: "1" });
    } finally {
      await sbx.terminate();
    }
    assert.equal(sbx.status, "terminated");
    assert.ok(sbx.terminatedAt instanceof Date);
    await sbx.terminate(); // idempotent

    let tempId;
    const out = await Sandbox.withTemp({ ...team, template: "debian-12" }, async (s) => {
      tempId = s.id;
      return (await s.exec("echo hi")).stdout;
    });
    assert.equal(out, "hi\n");
    assert.equal((await Sandbox.get(tempId, team)).status, "terminated");

    const boom = new Error("boom");
    await assert.rejects(
      Sandbox.withTemp({ ...team, template: "debian-12" }, async (s) => {
        tempId = s.id;
        throw boom;
      }),
      (e) => e === boom,
    );
    assert.equal((await Sandbox.get(tempId, team)).status, "terminated");
  });

  describe("with one sandbox", () => {
    let sbx;
    before(async () => {
      sbx = await Sandbox.create({ ...team, template: PYTHON });
    });
    after(async () => {
      await sbx?.terminate();
    });

    test("exec: result fields, exit codes, cwd, env, stdin", async () => {
      await sbx.files.write("/workspace/main.py", "print(sum(range(1_000_000)))");
      const r = await sbx.exec("python /workspace/main.py", { timeoutSeconds: 60 });
      assert.equal(r.stdout, "499999500000\n");
      assert.equal(r.stderr, "");
      assert.equal(r.exitCode, 0);
      assert.equal(typeof r.durationMs, "number");
      assert.deepEqual(r.blockedConnections, []);
      const f = await sbx.exec("echo err >&2; exit 3");
      assert.deepEqual([f.stdout, f.stderr, f.exitCode], ["", "err\n", 3]);
      const c = await sbx.exec("pwd; cat; echo $MY_VAR", { cwd: "/tmp", stdin: "from stdin\n", env: { MY_VAR: "x" } });
      assert.equal(c.stdout, "/tmp\nfrom stdin\nx\n");
      // Output that is not UTF-8 arrives, with replacement characters.
      const bin = await sbx.exec("printf 'a\\377b'");
      assert.equal(bin.exitCode, 0);
      assert.ok(bin.stdout.startsWith("a") && bin.stdout.endsWith("b"));
      await assert.rejects(sbx.exec("true", { stdin: "x".repeat((1 << 20) + 1) }), (e) => e instanceof OrkestrError && e.code === "invalid_argument");
      await assert.rejects(sbx.exec("true", { cwd: "/nonexistent" }), (e) => e instanceof OrkestrError && e.status === 400);
    });

    test("ExecTimeout carries the partial output (exec and execStream)", async () => {
      const err = await sbx.exec("echo partial; echo perr >&2; sleep 30", { timeoutSeconds: 1 }).catch((e) => e);
      assert.ok(err instanceof ExecTimeout, String(err));
      assert.ok(err instanceof OrkestrError);
      assert.equal(err.code, "exec_timeout");
      assert.equal(err.status, 408);
      assert.match(err.requestId, /^req_/);
      assert.equal(err.stdout, "partial\n");
      assert.equal(err.stderr, "perr\n");
      assert.ok(err.durationMs >= 1000, `durationMs ${err.durationMs}`);

      const chunks = [];
      const st = sbx.execStream("echo partial; sleep 30", { timeoutSeconds: 1 });
      await assert.rejects(
        (async () => {
          for await (const ch of st) chunks.push(ch);
        })(),
        (e) => e instanceof ExecTimeout && e.status === 408 && e.durationMs >= 1000 && typeof e.requestId === "string",
      );
      assert.deepEqual(chunks, [{ stream: "stdout", data: "partial\n" }]);
      await assert.rejects(st.wait(), ExecTimeout);
    });

    test("execStream: chunks arrive while the command runs; wait() gives the exit", async () => {
      const t0 = Date.now();
      const st = sbx.execStream("echo first; sleep 2; echo second >&2; exit 4");
      const seen = [];
      for await (const ch of st) seen.push({ ...ch, at: Date.now() - t0 });
      const exit = await st.wait();
      const end = Date.now() - t0;
      assert.deepEqual(seen.map((c) => [c.stream, c.data]), [["stdout", "first\n"], ["stderr", "second\n"]]);
      assert.equal(exit.exitCode, 4);
      assert.ok(exit.durationMs >= 2000);
      // The first chunk came while the command was still sleeping.
      assert.ok(end - seen[0].at >= 1500, `first chunk at ${seen[0].at} ms, end at ${end} ms`);

      // wait() without iterating discards the output.
      assert.equal((await sbx.execStream("echo x; exit 2").wait()).exitCode, 2);
      // Breaking out closes the stream; the sandbox goes on serving.
      for await (const ch of sbx.execStream("yes | head -c 10000000")) {
        assert.equal(ch.stream, "stdout");
        break;
      }
      assert.equal((await sbx.exec("echo ok")).stdout, "ok\n");
      // A large output arrives whole, in order.
      let n = 0;
      for await (const ch of sbx.execStream("head -c 3000000 /dev/zero | tr '\\0' a")) n += ch.data.length;
      assert.equal(n, 3_000_000);
    });

    test("data plane: exec bytes exact (not UTF-8, no newline), streamed files, archives, hostile archive", async () => {
      // Output that is not UTF-8 arrives byte-exact in chunk.bytes; data is its text.
      const got = [];
      let text = "";
      for await (const ch of sbx.execStream("printf '\\377\\376\\000abc\\303'; sleep 0.2; printf '\\342\\202'; sleep 0.2; printf '\\254 end'")) {
        got.push(...ch.bytes);
        text += ch.data;
      }
      assert.equal(Buffer.from(got).toString("hex"), "fffe00616263c3e282ac20656e64");
      assert.equal(text, "\ufffd\ufffd\u0000abc\ufffd\u20ac end");
      // 20 MB of output: every byte, in order.
      let n = 0;
      for await (const ch of sbx.execStream("head -c 20000000 /dev/zero | tr '\\0' a")) {
        n += ch.bytes.length;
        assert.ok(ch.bytes.every((b) => b === 97));
      }
      assert.equal(n, 20_000_000);
      // A streamed upload and download, byte-exact.
      const big = new Uint8Array(8 << 20).map((_, i) => (i * 7) & 255);
      await sbx.files.writeStream("/workspace/s.bin", new Blob([big]).stream());
      const parts = [];
      for await (const b of await sbx.files.readStream("/workspace/s.bin")) parts.push(b);
      assert.ok(Buffer.concat(parts).equals(Buffer.from(big)));
      // A directory up as tar.gz, down as tar.
      const src = mkdtempSync(join(tmpdir(), "orkestr-js-tree-"));
      try {
        execFileSync("sh", ["-c", `mkdir -p ${src}/d && printf hi > ${src}/d/a && chmod 750 ${src}/d/a && ln -s a ${src}/d/l`]);
        const tgz = execFileSync("tar", ["-C", src, "-cz", "d"]);
        const x = await sbx.files.writeArchive("/workspace/tree", new Uint8Array(tgz));
        assert.deepEqual([x.entries, x.bytes], [3, 2]);
        // Content read back, not stat's size: see the README's "What does not work yet".
        assert.equal((await sbx.exec("stat -c %a /workspace/tree/d/a; cat /workspace/tree/d/a; echo; readlink /workspace/tree/d/l")).stdout, "750\nhi\na\n");
        const back = [];
        for await (const b of await sbx.files.readArchive("/workspace/tree")) back.push(b);
        const listing = spawnSync("tar", ["-tv"], { input: Buffer.concat(back) }).stdout.toString();
        assert.match(listing, /d\/l -> a/);
      } finally {
        rmSync(src, { recursive: true, force: true });
      }
      // An archive that climbs out is refused with a clear 400.
      const evil = execFileSync("sh", ["-c", "cd /tmp && tar -cP --transform 's,^,../../,' -f - /etc/hostname 2>/dev/null || tar -cPf - /etc/hostname"]);
      await assert.rejects(
        sbx.files.writeArchive("/workspace/tree", new Uint8Array(evil)),
        (e) => e instanceof OrkestrError && e.code === "invalid_archive" && e.status === 400 && /absolute|climbs out/.test(e.message),
      );
    });

    test("files at size: 256 MiB of random bytes exact both ways, empty files, an upload cut by the caller leaves nothing", async () => {
      const size = 256 << 20;
      const big = new Uint8Array(size);
      randomFillSync(big);
      const want = createHash("sha256").update(big).digest("hex");
      let sent = 0;
      const up = new ReadableStream({
        pull(ctrl) {
          if (sent >= size) return ctrl.close();
          ctrl.enqueue(big.subarray(sent, sent + (1 << 20)));
          sent += 1 << 20;
        },
      });
      await sbx.files.writeStream("/workspace/big.bin", up);
      assert.equal((await sbx.exec("sha256sum /workspace/big.bin")).stdout.split(" ")[0], want);
      const h = createHash("sha256");
      let n = 0;
      for await (const b of await sbx.files.readStream("/workspace/big.bin")) {
        h.update(b);
        n += b.length;
      }
      assert.equal(n, size);
      assert.equal(h.digest("hex"), want);
      await sbx.files.writeBytes("/workspace/empty", new Uint8Array(0));
      await sbx.files.writeStream("/workspace/empty2", new Blob([]).stream());
      assert.equal((await sbx.files.readBytes("/workspace/empty")).length, 0);
      assert.equal((await sbx.exec("stat -c %s /workspace/empty /workspace/empty2")).stdout, "0\n0\n");
      // Cut by the caller after 32 MiB: neither the file nor a temporary one stays.
      const ac = new AbortController();
      let cutAt = 0;
      const cut = new ReadableStream({
        pull(ctrl) {
          if (cutAt >= 32 << 20) {
            ac.abort();
            return new Promise(() => {});
          }
          ctrl.enqueue(big.subarray(cutAt, cutAt + (1 << 20)));
          cutAt += 1 << 20;
        },
      });
      await assert.rejects(sbx.files.writeStream("/workspace/cut/cut.bin", cut, { signal: ac.signal }));
      let left = "?";
      for (let i = 0; i < 100 && left !== ""; i++) {
        left = (await sbx.exec("ls -A /workspace/cut 2>/dev/null; true")).stdout;
        if (left !== "") await new Promise((r) => setTimeout(r, 200));
      }
      assert.equal(left, "", "a cut upload left files behind");
      await sbx.exec("rm -f /workspace/big.bin");
    });

    test("files: write/writeBytes/read/readBytes/list/delete; hostile paths", async () => {
      await sbx.files.write("/workspace/data.json", '{"x": 1}');
      await sbx.files.writeBytes("/workspace/blob.bin", new Uint8Array([0, 1, 2]));
      assert.equal(await sbx.files.read("/workspace/data.json"), '{"x": 1}');
      const raw = await sbx.files.readBytes("/workspace/blob.bin");
      assert.ok(raw instanceof Uint8Array);
      assert.deepEqual([...raw], [0, 1, 2]);
      const all = new Uint8Array(256).map((_, i) => i);
      await sbx.files.writeBytes("/workspace/deep/er/all.bin", all);
      assert.deepEqual([...(await sbx.files.readBytes("/workspace/deep/er/all.bin"))], [...all]);
      await sbx.files.write("/workspace/ünï cødé.txt", "héllo ✓");
      assert.equal(await sbx.files.read("/workspace/ünï cødé.txt"), "héllo ✓");
      // Characters that mean something in a URL stay part of the path.
      const odd = "/workspace/a?b=c&d#e%2F..txt";
      await sbx.files.write(odd, "odd");
      assert.equal(await sbx.files.read(odd), "odd");
      assert.equal((await sbx.exec("cat '/workspace/a?b=c&d#e%2F..txt'")).stdout, "odd");

      const entries = await sbx.files.list("/workspace");
      const names = entries.map((e) => e.name);
      for (const n of ["blob.bin", "data.json", "deep", "a?b=c&d#e%2F..txt", "ünï cødé.txt"]) assert.ok(names.includes(n), n);
      const blob = entries.find((e) => e.name === "blob.bin");
      assert.deepEqual([blob.isDir, blob.size, blob.path, blob.mode], [false, 3, "/workspace/blob.bin", 0o644]);
      assert.ok(blob.modifiedAt instanceof Date && !Number.isNaN(blob.modifiedAt.getTime()));
      assert.equal(entries.find((e) => e.name === "deep").isDir, true);

      await sbx.files.delete("/workspace/blob.bin");
      await assert.rejects(sbx.files.read("/workspace/blob.bin"), (e) => e instanceof OrkestrError && e.code === "file_not_found" && e.status === 404);
      await sbx.files.delete("/workspace/deep");
      await assert.rejects(sbx.files.list("/workspace/deep"), (e) => e.code === "file_not_found" || e.code === "invalid_path");
      for (const bad of ["relative.txt", "/workspace/../../etc/passwd", "/a\0b"]) {
        await assert.rejects(sbx.files.read(bad), (e) => e instanceof OrkestrError && e.code === "invalid_path" && e.status === 400, bad);
      }
      await assert.rejects(sbx.files.delete("/"), (e) => e.code === "invalid_path");
      await assert.rejects(sbx.files.read(""), (e) => e.code === "invalid_argument");
    });

    test("metrics: live reading, samples as Dates, since", async () => {
      await sbx.exec("timeout 2 sh -c 'while :; do :; done'; true");
      const m = await sbx.metrics();
      assert.equal(m.sandboxId, sbx.id);
      assert.equal(m.sandboxStatus, "running");
      assert.equal(m.sampleIntervalSeconds, 1);
      for (const k of ["cores", "usageCores", "usagePercent"]) assert.equal(typeof m.cpu[k], "number", k);
      for (const k of ["limitBytes", "usageBytes", "usagePercent"]) assert.equal(typeof m.memory[k], "number", k);
      assert.equal(m.memory.limitBytes, 512 * 1024 * 1024);
      assert.equal(typeof m.lifetime.cpuSeconds, "number");
      assert.equal(typeof m.lifetime.memMbSeconds, "number");
      assert.equal(typeof m.lifetime.runningSeconds, "number");
      assert.ok(m.samples.length > 0);
      for (const s of m.samples) assert.ok(s.t instanceof Date && typeof s.cpuPercent === "number" && typeof s.memBytes === "number");
      assert.ok(Math.max(...m.samples.map((s) => s.cpuPercent)) > 30, "the busy loop shows in the samples");
      const last = m.samples[m.samples.length - 1].t;
      const later = await sbx.metrics({ since: last });
      assert.ok(later.samples.every((s) => s.t > last));
      assert.ok(later.samples.length < m.samples.length);
    });
  });

  test("pause + resume; SandboxNotReady on a paused and a terminated sandbox", async () => {
    const sbx = await Sandbox.create({ ...team, template: "node-22" });
    await sbx.files.write("/workspace/keep.txt", "kept");
    const id = await sbx.pause();
    assert.equal(id, sbx.id);
    assert.equal(sbx.status, "paused");
    const nr = await sbx.exec("true").catch((e) => e);
    assert.ok(nr instanceof SandboxNotReady, String(nr));
    assert.deepEqual([nr.code, nr.status, nr.sandboxStatus], ["sandbox_not_ready", 409, "paused"]);
    const paused = await sbx.metrics();
    assert.equal(paused.sandboxStatus, "paused");
    assert.equal(paused.cpu, null);
    assert.equal(paused.memory, null);
    assert.deepEqual(paused.samples, []);
    assert.equal(typeof paused.lifetime.cpuSeconds, "number");

    const resumed = await Sandbox.resume(id, team);
    assert.equal(resumed.status, "running");
    assert.equal(await resumed.files.read("/workspace/keep.txt"), "kept");
    assert.match((await resumed.exec("node -e 'console.log(6*7)'")).stdout, /^42/);
    await resumed.terminate();
    const gone = await resumed.files.read("/workspace/keep.txt").catch((e) => e);
    assert.ok(gone instanceof SandboxNotReady && gone.sandboxStatus === "terminated", String(gone));
  });

  test("fork(n): clones with the parent's memory and files that then diverge; limits", async () => {
    const sbx = await Sandbox.create({ ...team, template: "node-22" });
    try {
      await sbx.files.write("/workspace/keep.txt", "parent");
      // A value that lives only in a process's memory, served by it.
      await sbx.exec("node -e 'const v=Math.random().toString(36).slice(2); setInterval(()=>require(\"fs\").writeFileSync(\"/workspace/v\", v), 50)' >/dev/null 2>&1 &");
      let v = "";
      for (let i = 0; i < 100 && v === ""; i++) {
        v = await sbx.files.read("/workspace/v").catch(() => "");
        if (v === "") await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(v.length > 0);
      const clones = await sbx.fork(2);
      assert.equal(clones.length, 2);
      assert.notEqual(clones[0].id, clones[1].id);
      for (const c of clones) {
        assert.ok(c instanceof Sandbox);
        assert.equal(c.status, "running");
        assert.notEqual(c.id, sbx.id);
        // The clone's copy of the process writes the same value again.
        await c.files.delete("/workspace/v");
        let cv = "";
        for (let i = 0; i < 100 && cv === ""; i++) {
          cv = await c.files.read("/workspace/v").catch(() => "");
          if (cv === "") await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(cv, v);
        await c.files.write("/workspace/keep.txt", c.id);
      }
      assert.equal(await clones[0].files.read("/workspace/keep.txt"), clones[0].id);
      assert.equal(await sbx.files.read("/workspace/keep.txt"), "parent");
      assert.equal((await Sandbox.limits(team)).maxFork, 10);
      const over = await sbx.fork(11).catch((e) => e);
      assert.ok(over instanceof PlanLimitError && over.code === "fork_limit", String(over));
      await Promise.all(clones.map((c) => c.terminate()));
    } finally {
      await sbx.terminate();
    }
  });

  test("processes and watches: Detached at a pause, the pid kept across it, AbortSignal, process_not_found", async () => {
    const sbx = await Sandbox.create({ ...team, template: "debian-12" });
    try {
      const proc = await sbx.processes.start("echo started; sleep 600");
      const seen = [];
      const attached = (async () => {
        for await (const c of proc.output({ replay: true })) seen.push(c.data);
      })().catch((e) => e);
      const watch = await sbx.files.watch("/workspace");
      const watching = (async () => {
        for await (const _ of watch) {
          // nothing changes
        }
      })().catch((e) => e);
      // The pause is to cut a live attach, not to race the first line.
      for (const until = Date.now() + 10000; seen.length === 0 && Date.now() < until; ) {
        await new Promise((r) => setTimeout(r, 20));
      }
      await sbx.pause();
      const [a, w] = await Promise.all([attached, watching]);
      assert.ok(a instanceof Detached && a.code === "detached", String(a));
      assert.ok(w instanceof Detached, String(w));
      assert.deepEqual(seen, ["started\n"]);
      const resumed = await Sandbox.resume(sbx.id, team);
      const again = await resumed.processes.get(proc.pid);
      assert.equal(again.running, true);
      // An aborted output loop detaches; the process goes on.
      const ac = new AbortController();
      const aborted = (async () => {
        for await (const _ of again.output({ signal: ac.signal })) {
          // nothing
        }
      })().catch((e) => e);
      ac.abort();
      assert.equal((await aborted)?.name, "AbortError");
      assert.equal((await again.refresh()).running, true);
      await again.kill(9);
      await again.wait();
      assert.deepEqual([again.running, again.exitCode, again.signal], [false, 137, 9]);
      const missing = await resumed.processes.get(1).catch((e) => e);
      assert.ok(missing instanceof OrkestrError && missing.code === "process_not_found" && missing.status === 404, String(missing));
      const bin = await resumed.processes.start("cat");
      await bin.sendStdin(new Uint8Array([104, 105, 0, 10]));
      await bin.closeStdin();
      let out = "";
      for await (const c of bin.output({ replay: true })) out += c.data;
      assert.equal(out, "hi\u0000\n");
      const closed = await bin.sendStdin("late").catch((e) => e);
      assert.equal(closed.code, "process_stdin_closed");
      await resumed.terminate();
    } finally {
      await terminateAll(S.key);
    }
  });

  test("SandboxNotFound: unknown ids, hostile ids, another account's sandbox", async () => {
    for (const id of ["sbx_00000000000000000000000000", "../limits", "sbx_01/../../limits", "%2e%2e", "sbx_ü"]) {
      const e = await Sandbox.resume(id, team).catch((x) => x);
      assert.ok(e instanceof SandboxNotFound, `${id}: ${e}`);
      assert.deepEqual([e.code, e.status], ["sandbox_not_found", 404]);
      assert.match(e.requestId, /^req_[0-9A-Z]{26}$/);
    }
    await assert.rejects(Sandbox.get("", team), (e) => e.code === "invalid_argument");
    // A sandbox of another account is indistinguishable from a missing one.
    const other = conn(S.newKey("other", { plan: "pro" }));
    const mine = await Sandbox.create({ ...other, template: "debian-12" });
    try {
      await assert.rejects(Sandbox.get(mine.id, team), SandboxNotFound);
    } finally {
      await mine.terminate();
    }
  });

  test("AuthError: invalid key, read-only key (insufficient_scope)", async () => {
    const bad = await Sandbox.limits({ apiKey: "ork_" + "B".repeat(43), baseUrl: S.url }).catch((e) => e);
    assert.ok(bad instanceof AuthError, String(bad));
    assert.deepEqual([bad.code, bad.status], ["unauthenticated", 401]);
    assert.ok(!bad.message.includes("BBBB"), "the key is not echoed");
    const ro = conn(S.newKey("default", { scopes: "sandboxes:read" }));
    assert.equal((await Sandbox.limits(ro)).plan, "team");
    const scope = await Sandbox.create({ ...ro, template: "debian-12" }).catch((e) => e);
    assert.ok(scope instanceof AuthError, String(scope));
    assert.deepEqual([scope.code, scope.status, scope.requiredScope], ["insufficient_scope", 403, "sandboxes:write"]);
  });

  test("PlanLimitError: size_not_allowed, concurrency_limit; SnapshotCapReached", async () => {
    const free = conn(S.newKey("free2", { plan: "free" }));
    const size = await Sandbox.create({ ...free, template: "debian-12", size: "medium" }).catch((e) => e);
    assert.ok(size instanceof PlanLimitError && !(size instanceof SnapshotCapReached), String(size));
    assert.deepEqual([size.code, size.status, size.details.allowed_sizes], ["size_not_allowed", 402, ["small"]]);

    const a = await Sandbox.create({ ...free, template: "debian-12" });
    const conc = await Sandbox.create({ ...free, template: "debian-12" }).catch((e) => e);
    assert.ok(conc instanceof PlanLimitError, String(conc));
    assert.deepEqual([conc.code, conc.status], ["concurrency_limit", 402]);

    // free keeps one snapshot: the second pause is over the cap.
    await a.pause();
    const b = await Sandbox.create({ ...free, template: "debian-12" });
    const cap = await b.pause().catch((e) => e);
    assert.ok(cap instanceof SnapshotCapReached, String(cap));
    assert.ok(cap instanceof PlanLimitError && cap instanceof OrkestrError);
    assert.deepEqual([cap.code, cap.status, cap.cap], ["snapshot_cap_reached", 402, 1]);
    assert.equal(b.status, "running");
    // Resuming a while b runs is over max_concurrent.
    await assert.rejects(Sandbox.resume(a.id, free), (e) => e instanceof PlanLimitError && e.code === "concurrency_limit");
    await b.terminate();
    await a.terminate();
  });

  test("RateLimitError with retryAfterMs; idempotent calls retry after Retry-After", async () => {
    const key = S.newKey("tiny1", { plan: "tiny" });
    // Without retries the limit shows.
    let rl;
    for (let i = 0; i < 5 && !rl; i++) {
      rl = await Sandbox.limits(conn(key, { maxRetries: 0 })).then(() => undefined, (e) => e);
    }
    assert.ok(rl instanceof RateLimitError, String(rl));
    assert.deepEqual([rl.code, rl.status], ["rate_limited", 429]);
    assert.ok(rl.retryAfterMs > 0 && rl.retryAfterMs <= 1000, `retryAfterMs ${rl.retryAfterMs}`);
    assert.match(rl.requestId, /^req_/);
    // The bucket is empty now; a GET with retries waits and succeeds.
    const { fetch: f, calls } = countingFetch();
    const t0 = Date.now();
    const l = await Sandbox.limits(conn(key, { fetch: f }));
    assert.equal(l.plan, "tiny");
    assert.ok(calls.length >= 2, `calls: ${calls}`);
    assert.ok(Date.now() - t0 >= 300, "waited for Retry-After");
    // Not idempotent: create is not retried.
    const { fetch: f2, calls: c2 } = countingFetch();
    await new Promise((r) => setTimeout(r, 2100)); // refill the bucket
    await Sandbox.limits(conn(key));
    await Sandbox.limits(conn(key));
    const e = await Sandbox.create({ ...conn(key, { fetch: f2 }), template: "debian-12" }).catch((x) => x);
    assert.ok(e instanceof RateLimitError, String(e));
    assert.deepEqual(c2, ["POST /v1/sandboxes"]);
    // A retry budget shorter than Retry-After ends the retries at once.
    const { fetch: f3, calls: c3 } = countingFetch();
    await assert.rejects(Sandbox.limits(conn(key, { fetch: f3, retryBudgetMs: 10 })), RateLimitError);
    assert.equal(c3.length, 1);
  });

  test("network failures: bounded retries for reads, none for create; connection_error", async () => {
    const { fetch: f, calls } = countingFetch();
    const dead = `http://127.0.0.1:1`;
    const e = await Sandbox.limits({ apiKey: S.key, baseUrl: dead, fetch: f, maxRetries: 2 }).catch((x) => x);
    assert.ok(e instanceof OrkestrError, String(e));
    assert.deepEqual([e.code, e.status], ["connection_error", 0]);
    assert.ok(!e.message.includes(S.key));
    assert.equal(calls.length, 3);
    const { fetch: f2, calls: c2 } = countingFetch();
    await assert.rejects(Sandbox.create({ apiKey: S.key, baseUrl: dead, fetch: f2, template: "x" }), (x) => x.code === "connection_error");
    assert.equal(c2.length, 1);
  });

  test("503 answers are retried on reads (a proxy that fails once)", async () => {
    // A 503 from orkestrd cannot be provoked on a GET; this proxy in front of
    // the real server answers the first request with 503 + Retry-After.
    let n = 0;
    const proxy = createServer(async (req, res) => {
      n++;
      if (n === 1) {
        res.writeHead(503, { "Retry-After": "0", "Content-Type": "text/html" });
        res.end("<html>upstream busy</html>");
        return;
      }
      const r = await fetch(S.url + req.url, { headers: { authorization: req.headers.authorization } });
      res.writeHead(r.status, { "Content-Type": r.headers.get("content-type") ?? "" });
      res.end(Buffer.from(await r.arrayBuffer()));
    });
    await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
    try {
      const base = `http://127.0.0.1:${proxy.address().port}`;
      assert.equal((await Sandbox.limits({ apiKey: S.key, baseUrl: base })).plan, "team");
      assert.equal(n, 2);
      n = 0;
      const e = await Sandbox.limits({ apiKey: S.key, baseUrl: base, maxRetries: 0 }).catch((x) => x);
      assert.ok(e instanceof OrkestrError);
      assert.deepEqual([e.code, e.status], ["http_503", 503]);
      assert.match(e.message, /upstream busy/);
    } finally {
      proxy.close();
    }
  });

  test("signal: aborts exec, execStream, reads and retry waits", async () => {
    const sbx = await Sandbox.create({ ...team, template: "debian-12" });
    try {
      const t0 = Date.now();
      await assert.rejects(sbx.exec("sleep 20", { signal: AbortSignal.timeout(300) }), (e) => e.name === "TimeoutError");
      assert.ok(Date.now() - t0 < 5000);
      const ac = new AbortController();
      const chunks = [];
      await assert.rejects(
        (async () => {
          for await (const ch of sbx.execStream("echo a; sleep 20", { signal: ac.signal })) {
            chunks.push(ch);
            ac.abort();
          }
        })(),
        (e) => e.name === "AbortError",
      );
      assert.equal(chunks.length, 1);
      const pre = new AbortController();
      pre.abort();
      await assert.rejects(Sandbox.limits({ ...team, signal: pre.signal }), (e) => e.name === "AbortError");
      await assert.rejects(sbx.files.read("/etc/hostname", { signal: pre.signal }), (e) => e.name === "AbortError");
      // Aborting while waiting to retry.
      const t1 = Date.now();
      await assert.rejects(
        Sandbox.limits({ apiKey: S.key, baseUrl: "http://127.0.0.1:1", maxRetries: 10, retryBudgetMs: 60_000, signal: AbortSignal.timeout(400) }),
        (e) => e.name === "TimeoutError",
      );
      assert.ok(Date.now() - t1 < 5000);
      assert.equal((await sbx.exec("echo alive")).stdout, "alive\n");
    } finally {
      await sbx.terminate();
    }
  });

  test("OrkestrError for other API errors: unknown_template, unavailable, invalid_request", async () => {
    const ut = await Sandbox.create({ ...team, template: "no-such-template" }).catch((e) => e);
    assert.ok(ut instanceof OrkestrError && ut.constructor === OrkestrError, String(ut));
    assert.deepEqual([ut.code, ut.status], ["unknown_template", 400]);
    // The README's python-3.12 is in the catalog but not built on this machine.
    const tmpls = await Sandbox.templates(team);
    if (tmpls.find((t) => t.name === "python-3.12")?.built === false) {
      const un = await Sandbox.create({ ...team, template: "python-3.12" }).catch((e) => e);
      assert.deepEqual([un.constructor, un.code, un.status], [OrkestrError, "unavailable", 503]);
    }
    const inv = await Sandbox.create({ ...team, template: "debian-12", size: "huge" }).catch((e) => e);
    assert.deepEqual([inv.code, inv.status], ["invalid_request", 400]);
    const reg = await Sandbox.create({ ...team, template: "debian-12", region: "mars1" }).catch((e) => e);
    assert.deepEqual([reg.code, reg.status], ["unknown_region", 400]);
    await assert.rejects(Sandbox.create({ ...team }), (e) => e.code === "invalid_argument");
  });

  test("list iterates over every page (newest first) and filters by status", async () => {
    const key = S.newKey("lister", { plan: "pro" });
    const ids = [];
    for (let i = 0; i < 5; i++) {
      const s = await Sandbox.create({ ...conn(key), template: "debian-12" });
      ids.push(s.id);
      if (i < 3) await s.terminate();
    }
    const { fetch: f, calls } = countingFetch();
    const all = [];
    for await (const s of Sandbox.list(conn(key, { fetch: f, pageSize: 2 }))) all.push(s);
    assert.deepEqual(all.map((s) => s.id), [...ids].reverse());
    assert.equal(calls.filter((c) => c === "GET /v1/sandboxes").length, 3);
    assert.ok(all.every((s) => s.createdAt instanceof Date && typeof s.template === "string"));
    const running = [];
    for await (const s of Sandbox.list({ ...conn(key), status: "running", pageSize: 1 })) running.push(s.id);
    assert.deepEqual(running, [ids[4], ids[3]]);
    // Sandboxes from list are full handles.
    for await (const s of Sandbox.list({ ...conn(key), status: "running" })) await s.terminate();
    for await (const _ of Sandbox.list({ ...conn(key), status: "running" })) assert.fail("still running");
  });

  test("NetworkPolicyError: a blocked connection of a failed command (needs network \"restricted\")", async (t) => {
    let sbx;
    try {
      sbx = await Sandbox.create({ ...team, template: PYTHON, network: "restricted" });
    } catch (e) {
      if (e instanceof OrkestrError && e.code === "invalid_request" && e.details.field === "network") {
        t.skip(`this server does not offer network "restricted" yet (${e.message})`);
        return;
      }
      throw e;
    }
    try {
      // The sandbox's gateway is the host end of its own link on this
      // machine: a restricted policy blocks it, and nothing leaves the host.
      const script = [
        "import socket, struct, sys",
        "gw = None",
        "for line in open('/proc/net/route').read().splitlines()[1:]:",
        "    f = line.split()",
        "    if f[1] == '00000000': gw = socket.inet_ntoa(struct.pack('<L', int(f[2], 16)))",
        "if gw is None: sys.exit('no default route')",
        "print(gw, flush=True)",
        "s = socket.socket(); s.settimeout(3)",
        "try: s.connect((gw, 80))",
        "except OSError as e: sys.exit('blocked: %s' % e)",
      ].join("\n");
      await sbx.files.write("/workspace/reach.py", script);
      const err = await sbx.exec("python /workspace/reach.py").catch((e) => e);
      assert.ok(err instanceof NetworkPolicyError, `expected NetworkPolicyError, got ${err instanceof Error ? err : JSON.stringify(err)}`);
      assert.ok(err instanceof OrkestrError);
      assert.notEqual(err.result.exitCode, 0);
      assert.ok(err.blockedConnections.length > 0 && err.blockedConnections[0].port === 80);
      assert.deepEqual(err.result.blockedConnections, err.blockedConnections);
      assert.match(err.result.stdout, /^\d+\.\d+\.\d+\.\d+/);
      // The same from a stream.
      const st = sbx.execStream("python /workspace/reach.py");
      await assert.rejects((async () => { for await (const _ of st); })(), NetworkPolicyError);
      // A command that succeeds despite a blocked connection is no error.
      const ok = await sbx.exec("python /workspace/reach.py; true");
      assert.equal(ok.exitCode, 0);
    } finally {
      await sbx.terminate();
    }
  });

  test("PlanLimitError usage_exhausted with resetsAt (needs usage metering)", async (t) => {
    const m = conn(S.newKey("metered1", { plan: "metered" }));
    // 0.0002 GB-h is 720 MB-s: a small (512 MB) sandbox uses it up in ~1.5 s.
    const sbx = await Sandbox.create({ ...m, template: "debian-12" });
    await sbx.exec("sleep 3");
    await sbx.terminate();
    let limits;
    for (let i = 0; i < 20; i++) {
      limits = await Sandbox.limits(m);
      if (limits.usageGbHoursUsed >= limits.usageGbHoursIncluded) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    if (limits.usageGbHoursUsed === 0) {
      t.skip("this server does not meter usage yet (usageGbHoursUsed stays 0)");
      return;
    }
    assert.ok(limits.usageGbHoursUsed >= limits.usageGbHoursIncluded, `used ${limits.usageGbHoursUsed} of ${limits.usageGbHoursIncluded}`);
    const e = await Sandbox.create({ ...m, template: "debian-12" }).catch((x) => x);
    assert.ok(e instanceof PlanLimitError, String(e));
    assert.deepEqual([e.code, e.status], ["usage_exhausted", 402]);
    assert.ok(e.resetsAt instanceof Date);
    assert.equal(e.resetsAt.getTime(), limits.usageResetsAt.getTime());
  });

  describe("the packed package in a blank project", () => {
    let proj;
    before(() => {
      proj = mkdtempSync(join(tmpdir(), "orksdkjs-proj-"));
      const tgz = execFileSync("npm", ["pack", "--silent", "--pack-destination", proj], { cwd: sdkDir, encoding: "utf8" }).trim().split("\n").pop();
      writeFileSync(join(proj, "package.json"), JSON.stringify({ name: "blank", version: "1.0.0", private: true }));
      execFileSync("npm", ["install", "--no-audit", "--no-fund", "--offline", join(proj, tgz)], { cwd: proj, stdio: "pipe" });
    });
    after(() => {
      if (proj) rmSync(proj, { recursive: true, force: true });
    });

    const run = (file, code, env = {}) => {
      writeFileSync(join(proj, file), code);
      const r = spawnSync(process.execPath, [file], {
        cwd: proj,
        encoding: "utf8",
        timeout: 180_000,
        env: { ...process.env, ORKESTR_API_KEY: S.key, ORKESTR_BASE_URL: S.url, ...env },
      });
      return { code: r.status, out: r.stdout, err: r.stderr };
    };

    test("the tarball holds only the builds, README, licence and package.json; no runtime dependencies", () => {
      const pkg = JSON.parse(readFileSync(join(proj, "node_modules/orkestr/package.json"), "utf8"));
      assert.equal(pkg.dependencies, undefined);
      assert.equal(pkg.license, "Apache-2.0");
      for (const f of ["dist/esm/index.js", "dist/esm/index.d.ts", "dist/cjs/index.js", "dist/cjs/index.d.ts", "dist/cjs/package.json", "README.md", "LICENSE", "NOTICE"]) {
        assert.ok(existsSync(join(proj, "node_modules/orkestr", f)), f);
      }
      // The licence text is the repository's, unchanged.
      assert.equal(readFileSync(join(proj, "node_modules/orkestr/LICENSE"), "utf8"), readFileSync(join(sdkDir, "../../LICENSE"), "utf8"));
      assert.ok(!existsSync(join(proj, "node_modules/orkestr/src")) && !existsSync(join(proj, "node_modules/orkestr/test")));
      // The core imports no Node module.
      for (const f of ["esm/index.js", "esm/http.js", "esm/sandbox.js", "esm/errors.js"]) {
        const src = readFileSync(join(proj, "node_modules/orkestr/dist", f), "utf8");
        assert.ok(!/from\s+["']node:|require\(["']node:|from\s+["'](fs|http|https|net|stream|buffer|crypto)["']/.test(src), f);
      }
    });

    test("import (ESM) and require (CJS)", () => {
      const esm = run(
        "use.mjs",
        `import { Sandbox, OrkestrError, PlanLimitError, SnapshotCapReached } from "orkestr";
const l = await Sandbox.limits();
console.log(JSON.stringify({ plan: l.plan, date: l.usageResetsAt instanceof Date, sub: new SnapshotCapReached({ code: "x", status: 402, message: "m" }) instanceof PlanLimitError && SnapshotCapReached.prototype instanceof OrkestrError }));
`,
      );
      assert.equal(esm.code, 0, esm.err);
      assert.deepEqual(JSON.parse(esm.out), { plan: "team", date: true, sub: true });
      const cjs = run(
        "use.cjs",
        `const { Sandbox, AuthError } = require("orkestr");
(async () => {
  await Sandbox.withTemp({ template: "debian-12" }, async (sbx) => {
    const r = await sbx.exec("echo cjs");
    const e = await Sandbox.limits({ apiKey: "ork_" + "C".repeat(43) }).catch((x) => x);
    console.log(JSON.stringify({ out: r.stdout, auth: e instanceof AuthError }));
  });
})().catch((e) => { console.error(e); process.exit(1); });
`,
      );
      assert.equal(cjs.code, 0, cjs.err);
      assert.deepEqual(JSON.parse(cjs.out), { out: "cjs\n", auth: true });
    });

    test("the README's code blocks type-check in strict TypeScript", () => {
      const blocks = readmeBlocks();
      const src = [
        `import { Sandbox, PlanLimitError, SandboxNotFound } from "orkestr";`,
        // The blank project has no @types/node: the little of process the README uses.
        `declare const process: { env: Record<string, string | undefined>; stdout: { write(s: string): boolean }; stderr: { write(s: string): boolean } };`,
        ...blocks.map((b, i) => `export async function block${i + 1}(sbx: Sandbox) {\n{\n${b.code.replace(/^import .* from "orkestr";$/gm, "")}\n}\n}`),
      ].join("\n");
      writeFileSync(join(proj, "readme.mts"), src);
      writeFileSync(
        join(proj, "tsconfig.readme.json"),
        JSON.stringify({
          compilerOptions: { strict: true, noEmit: true, target: "es2022", module: "nodenext", moduleResolution: "nodenext", lib: ["es2022", "dom", "dom.iterable"], types: [] },
          files: ["readme.mts"],
        }),
      );
      const r = spawnSync(process.execPath, [join(sdkDir, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.readme.json", "--pretty", "false"], { cwd: proj, encoding: "utf8" });
      // The metrics block reads m.cpu and m.memory, which are null unless the
      // sandbox runs (as the README says): strict TypeScript wants a check
      // there, and that is the only complaint allowed.
      const errors = r.stdout.split("\n").filter((l) => l.includes("error TS"));
      const other = errors.filter((l) => !/error TS18047: 'm\.(cpu|memory)' is possibly 'null'/.test(l));
      assert.deepEqual(other, [], src);
      assert.ok(blocks.length >= 11);
    });

    test("the type declarations work for a strict TypeScript consumer (import and require)", () => {
      writeFileSync(
        join(proj, "check.mts"),
        `import { Sandbox, PlanLimitError, type ExecResult, type Limits } from "orkestr";
const l: Limits = await Sandbox.limits({ signal: AbortSignal.timeout(1000) });
const d: Date = l.usageResetsAt;
const sbx = await Sandbox.create({ template: "x", size: "small", network: "off", env: { A: "b" } });
const r: ExecResult = await sbx.exec("ls", { timeoutSeconds: 1 });
const n: number = r.exitCode + r.durationMs;
for await (const c of sbx.execStream("ls")) { const s: "stdout" | "stderr" = c.stream; }
const b: Uint8Array = await sbx.files.readBytes("/x");
const m = await sbx.metrics({ since: new Date() });
const t: Date | undefined = m.samples[0]?.t;
for await (const s of Sandbox.list({ status: "running" })) { const id: string = s.id; }
const e: unknown = null;
if (e instanceof PlanLimitError) { const c: string = e.code; const ra: Date | undefined = e.resetsAt; }
export { d, n, b, t };
`,
      );
      writeFileSync(
        join(proj, "check.cts"),
        `import orkestr = require("orkestr");
const p: Promise<orkestr.Limits> = orkestr.Sandbox.limits();
export = p;
`,
      );
      writeFileSync(
        join(proj, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: { strict: true, noEmit: true, target: "es2022", module: "nodenext", moduleResolution: "nodenext", lib: ["es2022", "dom", "dom.iterable"], types: [] },
          files: ["check.mts", "check.cts"],
        }),
      );
      const tsc = join(sdkDir, "node_modules/typescript/bin/tsc");
      const r = spawnSync(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: proj, encoding: "utf8" });
      assert.equal(r.status, 0, r.stdout + r.stderr);
    });

    test("every code block of sdk/js/README.md runs as written", async (t) => {
      const blocks = readmeBlocks();
      const prelude = `const sbx = await Sandbox.create({ template: "${PYTHON}" });
await sbx.files.write("/workspace/main.py", "print(sum(range(1_000_000)))");
await sbx.files.write("/workspace/long_task.py", "import sys, time\\nfor i in range(3):\\n    print('step', i, flush=True)\\n    time.sleep(0.3)\\nprint('warn', file=sys.stderr)\\n");
await sbx.files.write("/workspace/out.txt", "out");
await sbx.exec("timeout 1 sh -c 'while :; do :; done'; true");
`;
      for (const [i, b] of blocks.entries()) {
        await t.test(`${i + 1}: ${b.heading}`, async (st) => {
          // The only change: python-3.12 is not built here (see the top of this file).
          const code = b.code.replaceAll('"python-3.12"', `"${PYTHON}"`).replace(/^import .* from "orkestr";$/gm, "");
          const needsSbx = /\bsbx\b/.test(code) && !/const sbx\b|\(sbx\)/.test(code);
          const body = needsSbx ? `${prelude}try {\n${code}\n} finally {\n  await sbx.terminate();\n}\n` : `{\n${code}\n}\n`;
          const src = `import { Sandbox, PlanLimitError, SandboxNotFound } from "orkestr";\n${body}`;
          const r = run(`block${i + 1}.mjs`, src);
          await terminateAll(S.key);
          if (r.code !== 0 && /network: "restricted"/.test(code) && /invalid_request/.test(r.err) && /network/.test(r.err)) {
            st.skip(`this server does not offer network "restricted" yet:\n${r.err.split("\n").find((l) => /Error: /.test(l)) ?? ""}`);
            return;
          }
          assert.equal(r.code, 0, `block ${i + 1} (${b.heading}) failed:\n${src}\n--- stderr:\n${r.err}`);
          if (b.heading === "Quick start") assert.match(r.out, /^499999500000\n\n\d+\n$/);
          if (b.heading === "Create a sandbox") assert.match(r.out, /^sbx_[0-9A-Z]{26}\nrunning\n$/);
          if (b.heading === "Stream a long command") {
            assert.equal(r.out, "step 0\nstep 1\nstep 2\n");
            assert.equal(r.err, "warn\n");
          }
          if (b.heading === "Errors") assert.match(r.out, /^gone: sandbox_not_found 404 req_/);
        });
      }
    });
  });
});
