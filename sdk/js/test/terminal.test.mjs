// Terminals (sandbox.terminal) against a real orkestrd on real gVisor
// sandboxes: size, resize, typed input, exit status, byte-exact output,
// back-pressure, refusals as error classes, AbortSignal.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { missingPrerequisite, sdkDir, startServer } from "./helpers.mjs";
import { Sandbox, SandboxNotReady, OrkestrError, Terminal } from "../dist/esm/index.js";

const skip = missingPrerequisite() || (!existsSync(join(sdkDir, "dist/esm/index.js")) && "run npm run build first");
if (skip && process.env.ORKESTR_SDK_TEST_STRICT) throw new Error(`cannot run the terminal tests: ${skip}`);

const dec = new TextDecoder();

/** Collects a terminal's output in the background. */
function collect(term) {
  const c = { text: "", bytes: [], done: null };
  c.done = (async () => {
    for await (const chunk of term) {
      c.bytes.push(chunk);
      c.text += dec.decode(chunk, { stream: true });
    }
  })();
  c.until = async (want, ms = 30000) => {
    const end = Date.now() + ms;
    while (!c.text.includes(want)) {
      if (Date.now() > end) throw new Error(`never saw ${JSON.stringify(want)} in ${JSON.stringify(c.text)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return c;
}

describe("terminals against a real orkestrd", { skip, timeout: 300_000 }, () => {
  let S, sbx, opts;
  before(async () => {
    S = await startServer({ poolSize: 0 });
    opts = { apiKey: S.key, baseUrl: S.url };
    sbx = await Sandbox.create({ ...opts, template: "debian-12" });
  });
  after(async () => {
    await sbx?.terminate().catch(() => {});
    await S?.stop();
  });

  test("as user: its uid, HOME and permissions; files too", async () => {
    await sbx.files.write("/root/only-root", "secret");
    const term = await sbx.terminal({ user: "user", command: 'echo "id=$(id -u) home=$HOME"; cat /root/only-root || echo cannot-read' });
    const out = collect(term);
    await out.done;
    assert.match(out.text, /id=1000 home=\/home\/user\r\n/);
    assert.match(out.text, /cannot-read/);
    assert.doesNotMatch(out.text, /secret/);
    await assert.rejects(sbx.files.read("/root/only-root", { user: "user" }), (e) => e instanceof OrkestrError && e.code === "permission_denied");
    await assert.rejects(sbx.files.write("/etc/evil", "x", { user: "user" }), (e) => e instanceof OrkestrError && e.code === "permission_denied");
    await sbx.files.write("/home/user/ts/f.txt", "mine", { user: "user" });
    assert.equal((await sbx.files.stat("/home/user/ts/f.txt")).uid, 1000);
    assert.equal(await sbx.files.read("/home/user/ts/f.txt", { user: "user" }), "mine");
    assert.deepEqual((await sbx.files.list("/home/user/ts", { user: "user" })).map((e) => e.name), ["f.txt"]);
    await assert.rejects(sbx.files.delete("/root/only-root", { user: "user" }), (e) => e instanceof OrkestrError && e.code === "permission_denied");
    await sbx.files.delete("/home/user/ts", { user: "user" });
    assert.equal(await sbx.files.exists("/home/user/ts"), false);
  });

  test("size, resize, typed input and the exit status", async () => {
    const term = await sbx.terminal({ command: 'stty size; read l; stty size; echo "got $l $V"; exit 7', rows: 12, cols: 34, env: { V: "v1" } });
    assert.ok(term instanceof Terminal);
    assert.ok(term.pid > 1);
    const out = collect(term);
    await out.until("12 34\r\n");
    await term.resize(40, 120);
    await term.write("line\r");
    await out.done;
    assert.match(out.text, /40 120\r\ngot line v1/);
    assert.deepEqual(term.exit?.exitCode, 7);
    assert.equal((await term.wait()).exitCode, 7);
  });

  test("a login shell by default; Ctrl-C reaches the remote job", async () => {
    const term = await sbx.terminal();
    const out = collect(term);
    await term.write("pwd; sleep 100\r");
    await out.until("/workspace\r\n");
    await new Promise((r) => setTimeout(r, 300));
    await term.write("\x03echo rc-$?\r");
    await out.until("rc-130");
    await term.write("exit 5\r");
    assert.equal((await term.wait()).exitCode, 5);
  });

  test("output is byte-exact: escape sequences and bytes that are not UTF-8", async () => {
    const want = new Uint8Array([0x1b, 0x5b, 0x33, 0x31, 0x6d, 0x72, 0x1b, 0x5b, 0x30, 0x6d, 0xff, 0xfe, 0x00, 0x07, 0x1b, 0x5d, 0x30, 0x3b, 0x74, 0x07]);
    const octal = [...want].map((b) => "\\" + b.toString(8).padStart(3, "0")).join("");
    const term = await sbx.terminal({ command: `stty raw -echo; printf '${octal}'` });
    const out = collect(term);
    await out.done;
    const got = Buffer.concat(out.bytes);
    assert.deepEqual([...got], [...want]);
  });

  test("a terminal nobody reads stalls its program; reading resumes it", async () => {
    const term = await sbx.terminal({ command: "yes 0123456789abcdef" });
    await new Promise((r) => setTimeout(r, 2000));
    const heapBefore = process.memoryUsage().heapUsed;
    await new Promise((r) => setTimeout(r, 2000));
    const grew = process.memoryUsage().heapUsed - heapBefore;
    assert.ok(grew < 16 << 20, `heap grew by ${grew} bytes while nobody read`);
    let n = 0;
    for await (const chunk of term) {
      n += chunk.length;
      if (n > 4 << 20) break;
    }
    assert.ok(n > 4 << 20);
    term.close();
  });

  test("refusals are the SDK's error classes; an aborted signal hangs up", async () => {
    const gone = await Sandbox.create({ ...opts, template: "debian-12" });
    await gone.terminate();
    await assert.rejects(gone.terminal(), SandboxNotReady);
    await assert.rejects(sbx.terminal({ cwd: "/no/such/dir" }), (e) => e instanceof OrkestrError && e.code === "invalid_request");
    await assert.rejects(sbx.terminal({ rows: 0 }), (e) => e instanceof OrkestrError && e.code === "invalid_argument");
    const ac = new AbortController();
    const term = await sbx.terminal({ command: "echo up; sleep 777", signal: ac.signal });
    const out = collect(term);
    await out.until("up");
    ac.abort(new Error("stop"));
    await assert.rejects(out.done, /stop/);
    const end = Date.now() + 20000;
    for (;;) {
      const r = await sbx.exec("cat /proc/[0-9]*/cmdline | tr '\\0' ' '");
      if (!r.stdout.includes("sleep 777")) break;
      assert.ok(Date.now() < end, "the program outlived the aborted signal");
      await new Promise((r) => setTimeout(r, 100));
    }
  });
});
