// A server whose TLS certificate a private CA issued (made here with the
// openssl command): Node's fetch refuses it unless NODE_EXTRA_CA_CERTS
// names the CA, which is what the README tells self-hosters to do. The
// SDK runs in a child process, since Node reads the variable at start.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sdkDir } from "./helpers.mjs";

function openssl(cwd, ...args) {
  execFileSync("openssl", args, { cwd, stdio: "pipe" });
}

test("NODE_EXTRA_CA_CERTS makes a private CA's server reachable", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "orkestr-js-tls-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=orkestr test CA");
  openssl(dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1");
  writeFileSync(join(dir, "ext.cnf"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  openssl(dir, "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "srv.pem", "-days", "1", "-extfile", "ext.cnf");

  const server = createServer({ key: readFileSync(join(dir, "srv.key")), cert: readFileSync(join(dir, "srv.pem")) }, (req, res) => {
    res.writeHead(404, { "Content-Type": "application/json", "X-Request-Id": "req_TLS" });
    res.end(JSON.stringify({ error: { code: "not_found", message: "served over TLS", details: {} } }));
  });
  server.on("tlsClientError", () => {}); // the refused handshake is the point
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => server.close());
  const url = `https://127.0.0.1:${server.address().port}`;

  // The child asks for a sandbox and prints what came back: an API answer
  // (status 404) proves the TLS handshake succeeded, status 0 that it did not.
  const script = `
    const { Sandbox } = await import(${JSON.stringify(join(sdkDir, "dist/esm/index.js"))});
    try { await Sandbox.get("sbx_nope", { apiKey: "ork_${"K".repeat(43)}", baseUrl: ${JSON.stringify(url)}, maxRetries: 0 }); console.log("no error"); }
    catch (e) { console.log(JSON.stringify({ status: e.status, code: e.code, message: String(e.message) })); }`;
  // Asynchronously: the server runs in this process's event loop.
  const run = async (env) => {
    const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, ...env } });
    return JSON.parse(stdout.trim());
  };
  const without = await run({ NODE_EXTRA_CA_CERTS: "" });
  assert.equal(without.status, 0, `reached the server without the CA: ${JSON.stringify(without)}`);
  const withCA = await run({ NODE_EXTRA_CA_CERTS: join(dir, "ca.pem") });
  assert.equal(withCA.status, 404, JSON.stringify(withCA));
  assert.match(withCA.message, /served over TLS/);
});
