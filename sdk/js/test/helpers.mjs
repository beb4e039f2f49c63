// Starts a real orkestrd (real gVisor sandboxes) for the SDK's tests, the way
// e2e/api_helpers_test.go does, and makes accounts and keys with
// `orkestrd admin`. Needs root, the binaries of `make build` (bin/orkestrd,
// bin/orkestr-agent), runsc (ORKESTR_RUNSC, default bin/runsc) and the
// offline templates (ORKESTR_TEMPLATE_DIR, default /var/lib/orkestr/templates).

import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const sdkDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const repoDir = resolve(sdkDir, "../..");
const binDir = join(repoDir, "bin");
const runsc = process.env.ORKESTR_RUNSC || join(binDir, "runsc");
const templateDir = process.env.ORKESTR_TEMPLATE_DIR || "/var/lib/orkestr/templates";

/**
 * The template that stands in for the README's "python-3.12": that OCI
 * template is not built on machines without registry access, while the
 * offline python-3.11 template has `python` too.
 */
export const PYTHON = "python-3.11";

/** Why the tests cannot run here, or "" if they can. */
export function missingPrerequisite() {
  if (process.getuid?.() !== 0) return "these tests start real gVisor sandboxes and must run as root";
  for (const f of [join(binDir, "orkestrd"), join(binDir, "orkestr-agent")]) {
    if (!existsSync(f)) return `${f} is missing: run make build`;
  }
  if (!existsSync(runsc)) return `runsc not found at ${runsc}: set ORKESTR_RUNSC`;
  for (const t of [PYTHON, "debian-12", "node-22"]) {
    if (!existsSync(join(templateDir, t))) return `template ${t} is not built in ${templateDir}: run make setup`;
  }
  return "";
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** Processes whose command line mentions dir (runsc of this server's state dir). */
export function processesUnder(dir) {
  const out = [];
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (cmd.includes(dir)) out.push({ pid: Number(pid), cmd: cmd.replace(/\0/g, " ").trim() });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function mountsUnder(dir) {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4])
    .filter((m) => m && m.startsWith(dir + "/"));
}

/**
 * Starts orkestrd with config (YAML text) and resolves with
 * { url, key, admin(), newKey(), stop() }. key is the bootstrap key of the
 * account "default" (plan team).
 */
export async function startServer({ config = "", poolSize = 1 } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), "orksdkjs-data-"));
  const stateDir = mkdtempSync("/run/orksdkjs-");
  const cfgPath = join(dataDir, "config.yaml");
  writeFileSync(cfgPath, config || "{}\n", { mode: 0o600 });
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const logPath = join(dataDir, "orkestrd.log");
  const args = [
    "serve",
    "--listen", `127.0.0.1:${port}`,
    "--data-dir", dataDir,
    "--state-dir", stateDir,
    "--runsc", runsc,
    "--agent", join(binDir, "orkestr-agent"),
    "--template-dir", templateDir,
    `--pool-size=${poolSize}`,
    "--config", cfgPath,
  ];
  const child = spawn(join(binDir, "orkestrd"), args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let log = "";
  child.stdout.on("data", (b) => (stdout += b));
  child.stderr.on("data", (b) => (log += b));
  const exited = new Promise((res) => child.once("exit", (code, sig) => res({ code, sig })));
  let dead = false;
  exited.then(() => (dead = true));

  const deadline = Date.now() + 120_000;
  for (;;) {
    if (dead) throw new Error(`orkestrd exited at start:\n${log.slice(-4000)}`);
    try {
      const r = await fetch(url + "/healthz");
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`orkestrd did not answer /healthz in 2 minutes:\n${log.slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  // The bootstrap key is the last line of stdout.
  const key = stdout.trim().split("\n").pop()?.trim() ?? "";
  if (!/^ork_[0-9A-Za-z]{43}$/.test(key)) throw new Error(`no bootstrap key on orkestrd's stdout: ${JSON.stringify(stdout)}`);

  const admin = (...a) =>
    execFileSync(join(binDir, "orkestrd"), ["admin", ...a, "--data-dir", dataDir, "--config", cfgPath], {
      encoding: "utf8",
    });

  return {
    url,
    key,
    dataDir,
    stateDir,
    log: () => log,
    admin,
    /** Creates the account (on plan, if given) and a key for it. */
    newKey(account, { plan, scopes = "sandboxes:write" } = {}) {
      if (plan) admin("account", "create", account, "--plan", plan);
      const out = admin("key", "create", "--account", account, "--scopes", scopes).trim().split("\n");
      const k = out.pop()?.trim() ?? "";
      if (!/^ork_[0-9A-Za-z]{43}$/.test(k)) throw new Error(`key create printed no key: ${out.join("\n")}`);
      return k;
    },
    /**
     * SIGTERM, then checks that no runsc process of the state dir is left
     * (the tests terminate their sandboxes; the warm pool goes with the
     * server). Leftovers are removed and reported as an error.
     */
    async stop() {
      if (!dead) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 30_000);
        await exited;
        clearTimeout(t);
      }
      const left = processesUnder(stateDir);
      if (left.length > 0) {
        for (const e of readdirSync(join(stateDir, "sandboxes"), { withFileTypes: true })) {
          try {
            execFileSync(runsc, ["--root", join(stateDir, "runsc"), "delete", "--force", e.name], { stdio: "ignore" });
          } catch {
            // already gone
          }
        }
      }
      for (const m of mountsUnder(stateDir).reverse()) {
        try {
          execFileSync("umount", ["-l", m], { stdio: "ignore" });
        } catch {
          // already gone
        }
      }
      // The node's cgroup parent is /orkestr/<sha256(data dir)[:12]> (internal/node).
      const id = createHash("sha256").update(dataDir).digest("hex").slice(0, 12);
      const cgLeft = [];
      for (const ctl of existsSync("/sys/fs/cgroup") ? readdirSync("/sys/fs/cgroup") : []) {
        const dir = join("/sys/fs/cgroup", ctl, "orkestr", id);
        if (!existsSync(dir)) continue;
        for (const e of readdirSync(dir, { withFileTypes: true })) {
          if (!e.isDirectory()) continue;
          cgLeft.push(join(dir, e.name));
          try {
            rmdirSync(join(dir, e.name));
          } catch {
            // still busy
          }
        }
        try {
          rmdirSync(dir);
        } catch {
          // still busy
        }
      }
      rmSync(stateDir, { recursive: true, force: true });
      rmSync(dataDir, { recursive: true, force: true });
      if (cgLeft.length > 0) throw new Error(`sandbox cgroups were left after orkestrd stopped: ${cgLeft.join(", ")}`);
      if (left.length > 0) {
        throw new Error(`runsc processes of ${stateDir} were left after orkestrd stopped: ${left.map((p) => p.cmd).join("; ")}`);
      }
    },
  };
}
