// Browser test of the orkestr console against a real orkestrd, driven by
// e2e/console_test.go (which starts the server, makes the member and
// cleans up). Environment:
//   ORKESTR_URL     the server, e.g. http://127.0.0.1:41234
//   SETUP_LINK      the one-time password-setup link `orkestrd admin user create` printed
//   MEMBER_EMAIL    that member's email
//   ARTIFACTS       directory for screenshots
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
// Exits non-zero with a message on the first failed check.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.env.ORKESTR_URL;
const artifacts = process.env.ARTIFACTS;
const email = process.env.MEMBER_EMAIL;
const password = "a long test password 42";
const evil = "<img src=x onerror=alert(1)>";
mkdirSync(artifacts, { recursive: true });

function check(cond, msg) {
  if (!cond) throw new Error("check failed: " + msg);
}
function log(msg) {
  console.log(new Date().toISOString().slice(11, 23), msg);
}
async function api(method, path, key, body) {
  const res = await fetch(base + path, {
    method,
    headers: { Authorization: "Bearer " + key, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}
async function until(what, fn, timeoutMs = 30000, everyMs = 200) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a container: Chromium's own sandbox needs user namespaces.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let sandboxId = null, key = null, failPage = null;
const alerts = [], cspViolations = [], pageErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  failPage = page;
  page.setDefaultTimeout(30000);
  page.on("dialog", async (d) => {
    if (d.type() === "confirm") return d.accept();
    alerts.push(d.type() + ": " + d.message());
    return d.dismiss();
  });
  page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()); });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  const metricsAt = [];
  page.on("request", (r) => { if (r.url().includes("/metrics")) metricsAt.push(Date.now()); });
  const shot = (name, p = page) => p.screenshot({ path: join(artifacts, name + ".png"), fullPage: true });

  // 1. The one-time setup link: choose a password, which signs in.
  await page.goto(process.env.SETUP_LINK);
  await page.fill("#password", password);
  await page.fill("#confirm", password);
  await shot("01-setup");
  await page.click("button[type=submit]");
  await page.waitForURL("**/console/sandboxes");
  log("password set, signed in");

  // 2. Sign out, then sign in with email and password, by keyboard.
  await page.click(".who button");
  await page.waitForURL("**/console/login");
  await page.focus("#email");
  await page.keyboard.type(email);
  await page.keyboard.press("Tab");
  await page.keyboard.type(password);
  await shot("02-login");
  await page.keyboard.press("Enter");
  await page.waitForURL("**/console/sandboxes");
  check((await page.textContent("header")).includes(email), "header names the member");
  // The first Tab stop is the skip link.
  await page.keyboard.press("Tab");
  check((await page.evaluate(() => document.activeElement.textContent)) === "Skip to content", "skip link is the first tab stop");
  const cookies = await context.cookies();
  const sc = cookies.find((c) => c.name === "orkestr_session");
  check(sc && sc.httpOnly && sc.sameSite === "Strict", "session cookie is HttpOnly and SameSite=Strict");
  check(!(await page.evaluate(() => document.cookie)).includes("orkestr_session"), "scripts cannot read the session cookie");
  log("signed in with the form");

  // 3. Mint a token: sandboxes:write, 30 days.
  await page.click("nav >> text=API tokens");
  await page.waitForURL("**/console/tokens");
  await page.selectOption("#expires", "30");
  await page.click("#mint");
  await page.waitForSelector("#new-token");
  key = await page.inputValue("#new-token");
  check(/^ork_[0-9A-Za-z]{43}$/.test(key), "a token is shown: " + key.slice(0, 12));
  await page.click("#copy-token");
  await until("the copy button to answer", async () => (await page.textContent("#copy-status")) !== "");
  await shot("03-token-minted");
  await page.reload();
  check(!(await page.content()).includes(key), "the token is not shown a second time");
  const prefix = key.slice(0, 12);
  check((await page.textContent("#tokens")).includes(prefix), "the token is listed by prefix");
  log("token minted: " + prefix);

  // 4. Use the token with the API: a sandbox with hostile metadata.
  const created = await api("POST", "/v1/sandboxes", key, { template: "debian-12", metadata: { note: evil, run: "e2e" } });
  check(created.status === 201, "create with the minted token: " + created.status + " " + created.text);
  sandboxId = created.json.id;
  log("created " + sandboxId);
  // Some CPU work so the sparkline has something to show.
  api("POST", `/v1/sandboxes/${sandboxId}/exec`, key, { command: "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done", timeout_seconds: 60 }).catch(() => {});

  // 5. It appears on the sandboxes page (the list refreshes itself).
  await page.click("nav >> text=Sandboxes");
  await page.waitForSelector(`tr[data-id="${sandboxId}"]`, { timeout: 15000 });
  const metaText = await page.textContent(`tr[data-id="${sandboxId}"] .meta`);
  check(metaText.includes(evil), "the metadata is shown as text: " + metaText);
  check((await page.$$("#sandboxes img")).length === 0, "no <img> element came out of the metadata");
  await shot("04-sandboxes");
  // The same on a phone.
  const phone = await context.newPage();
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(base + "/console/sandboxes");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 1, "the page fits a phone's width (overflow " + overflow + "px)");
  await shot("05-sandboxes-phone", phone);
  await phone.close();

  // 6. Its detail page: the sparkline moves.
  await page.click(`a[href="/console/sandboxes/${sandboxId}"]`);
  await page.waitForURL(`**/console/sandboxes/${sandboxId}`);
  const points = () => page.getAttribute("#cpu-spark polyline", "points");
  const first = await until("a sparkline with two samples", async () => {
    const p = await points();
    return p && p.split(" ").length >= 2 ? p : null;
  });
  const moved = await until("the sparkline to move", async () => {
    const p = await points();
    return p !== first ? p : null;
  }, 15000);
  check(moved.split(" ").length >= 2, "sparkline has points");
  check((await page.getAttribute("#mem-spark polyline", "points")).split(" ").length >= 2, "memory sparkline has points");
  check((await page.textContent("#cpu-now")).includes("%"), "current CPU shown");
  check((await page.textContent(".facts")).includes(evil), "detail shows the metadata as text");
  check((await page.$$("img")).length === 0, "no <img> element on the detail page");
  await shot("06-sandbox-live");
  // Polled no faster than the sample interval (1 s), allowing for timer
  // jitter: three polls at least (the sparkline may move after two).
  await until("a third metrics poll", async () => metricsAt.length >= 3, 10000);
  const gaps = metricsAt.slice(1).map((t, i) => t - metricsAt[i]);
  check(gaps.length >= 2 && Math.min(...gaps) >= 900, "metrics polled at most once a second: gaps " + gaps.join(","));
  log("sparkline moves; metrics polled every " + gaps.join(",") + " ms");

  // 6b. The terminal: a login shell in the sandbox, typed into in the page.
  const rowsText = async () => ((await page.textContent("#term .xterm-rows")) || "").replace(/\u00a0/g, " ");
  await page.click("#term-open");
  await until("the terminal to connect", async () => (await page.textContent("#term-state")).startsWith("Connected"));
  await until("a shell prompt", async () => (await rowsText()).includes("/workspace#"));
  await page.click("#term .xterm-screen");
  await page.keyboard.type("echo hello-$((6*7)) $TERM; printf '\\033[32mgreen\\033[0m\\n'");
  await page.keyboard.press("Enter");
  await until("the command's output in the terminal", async () => (await rowsText()).includes("hello-42 xterm-256color"));
  // The escape sequence was rendered, not printed: "green" is drawn in
  // the theme's green, which needs xterm.js's computed styles to apply
  // under the console's CSP.
  const colours = await until("the coloured word", () => page.$$eval("#term .xterm-rows span", (spans) => {
    const green = spans.find((s) => s.textContent === "green");
    const plain = spans.find((s) => s.textContent.includes("hello-42"));
    return green && plain ? [getComputedStyle(green).color, getComputedStyle(plain).color, green.className] : null;
  }));
  check(colours && colours[0] !== colours[1], "the terminal renders colours: " + JSON.stringify(colours));
  await shot("06b-terminal");
  await page.keyboard.type("exit 3");
  await page.keyboard.press("Enter");
  await until("the exit status on the page", async () => (await page.textContent("#term-state")).includes("status 3"));
  log("terminal: typed a command, saw its coloured output, exit status 3");

  // 7. Pause from the page, then terminate.
  await page.click("#pause");
  await page.waitForSelector("#resume", { timeout: 90000 });
  check((await page.textContent("#status")) === "paused", "status paused on the page");
  let got = await api("GET", `/v1/sandboxes/${sandboxId}`, key);
  check(got.json.status === "paused", "API says paused: " + got.json.status);
  await shot("07-sandbox-paused");
  await page.click("#terminate");
  await page.waitForSelector(".notice");
  check((await page.textContent("#status")) === "terminated", "status terminated on the page");
  got = await api("GET", `/v1/sandboxes/${sandboxId}`, key);
  check(got.json.status === "terminated", "API says terminated: " + got.json.status);
  await shot("08-sandbox-terminated");
  log("paused and terminated from the page");

  // 8. Usage and members pages.
  await page.click("nav >> text=Usage");
  await page.waitForURL("**/console/usage");
  check((await page.$$("#gb-meter")).length === 1 && (await page.$$("#gb-chart")).length === 1, "usage meters and chart");
  const regions = await page.textContent("#regions tbody");
  check(/fsn1 \(default\)/.test(regions) && /available/.test(regions) && /1 of 1/.test(regions), "the regions table shows the server's region and its node: " + regions);
  // The member's account is the operator's (operator_accounts): the nodes
  // are listed too, the one box's node in process.
  check((await page.$$("#nodes tbody tr[data-node]")).length === 1, "one node row on the usage page");
  const nodeRow = await page.textContent("#nodes tbody tr[data-node]");
  check(/fsn1/.test(nodeRow) && /in process/.test(nodeRow) && /alive/.test(nodeRow) && /\d+ \/ \d+/.test(nodeRow) && / MB/.test(nodeRow) && /s ago/.test(nodeRow),
    "the node row shows region, address, state, slots, memory and heartbeat: " + nodeRow);
  const apiNodes = await api("GET", "/v1/nodes", key);
  check(apiNodes.status === 200 && apiNodes.json.data.length === 1 && apiNodes.json.data[0].state === "alive", "GET /v1/nodes for the operator: " + apiNodes.text);
  check((await page.textContent("#resets")).includes("UTC"), "reset date shown");
  await shot("09-usage");
  await page.click("nav >> text=Members");
  await page.waitForURL("**/console/members");
  await page.fill("#invite-email", "grace@example.com");
  await page.click("form.card button");
  await page.waitForSelector("#invite-link");
  check((await page.inputValue("#invite-link")).includes("/console/setup/"), "an invitation link");
  await shot("10-members");

  // 9. Revoke the token; the API refuses it.
  await page.click("nav >> text=API tokens");
  await page.click(`tr[data-prefix="${prefix}"] button`);
  await page.waitForSelector(".notice");
  check((await page.textContent(`tr[data-prefix="${prefix}"] .state`)) === "revoked", "listed as revoked");
  await shot("11-token-revoked");
  await until("the API to refuse the revoked token", async () => (await api("GET", "/v1/sandboxes", key)).status === 401, 10000);
  log("revoked token refused by the API");

  check(alerts.length === 0, "no alert ran: " + alerts.join("; "));
  check(pageErrors.length === 0, "no script errors: " + pageErrors.join("; "));
  check(cspViolations.length === 0, "no CSP violations: " + cspViolations.join("; "));
  await context.close();
  log("all console checks passed");
} catch (e) {
  console.error(e.stack || String(e));
  if (failPage) {
    await failPage.screenshot({ path: join(artifacts, "failure.png"), fullPage: true }).catch(() => {});
    console.error("page at failure: " + failPage.url() + "\n" + (await failPage.textContent("main").catch(() => "")));
  }
  process.exitCode = 1;
} finally {
  if (sandboxId && key) {
    await api("DELETE", `/v1/sandboxes/${sandboxId}`, key).catch(() => {});
  }
  await browser.close();
}
