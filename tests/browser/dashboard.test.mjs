// Browser tests of the dashboard: Debian's chromium (/usr/bin/chromium) driven by
// playwright-core against the real broker binary (target/debug/squall, built by
// `cargo test`), each broker on 127.0.0.1 with ports chosen by the kernel and a
// temporary data directory. Tasks are published and consumed with the same binary's
// CLI. Run by .ci/run: `node --test tests/browser/`. Writes docs/dashboard.png.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const SQUALL = process.env.SQUALL_BIN || join(ROOT, "target/debug/squall");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT = 15_000;

/** Starts a broker; resolves with its addresses once it listens. */
async function startBroker(extra = []) {
  const dir = mkdtempSync(join(tmpdir(), "squall-browser-"));
  const child = spawn(
    SQUALL,
    ["serve", "--data-dir", join(dir, "data"), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", ...extra],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let log = "";
  const addrs = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("broker did not start:\n" + log)), WAIT);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const http = log.match(/at http:\/\/(127\.0\.0\.1:\d+)/);
      const listen = log.match(/squall is listening on (127\.0\.0\.1:\d+)/);
      if (http && listen) {
        clearTimeout(timer);
        ok({ http: http[1], listen: listen[1] });
      }
    });
    child.on("exit", (code) => fail(new Error(`broker exited ${code}:\n${log}`)));
  });
  return {
    ...addrs,
    url: (path = "/") => `http://${addrs.http}${path}`,
    cli: (args, input) =>
      execFileSync(SQUALL, args, {
        env: { ...process.env, SQUALL_SERVER: addrs.listen },
        input,
        stdio: ["pipe", "pipe", "pipe"],
      }).toString(),
    stop: () => {
      child.kill("SIGTERM");
      return new Promise((ok) => child.on("exit", () => { rmSync(dir, { recursive: true, force: true }); ok(); }));
    },
    dir,
  };
}

/** A fresh browser profile with the flags CI needs. */
async function browser() {
  const profile = mkdtempSync(join(tmpdir(), "squall-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return {
    context,
    page: context.pages()[0] || (await context.newPage()),
    close: async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

function publish(broker, queue, ...payloads) {
  for (const p of payloads) broker.cli(["publish", queue, p]);
}

const cell = (queue, field) => `tr[data-queue="${queue}"] td[data-field="${field}"]`;

let open;
let b;

before(async () => {
  open = await startBroker();
  b = await browser();
});

after(async () => {
  if (b) await b.close();
  if (open) await open.stop();
});

test("the queues table shows the counts and follows new publishes without a reload", async () => {
  const { page } = b;
  publish(open, "emails", "a", "b", "c");
  publish(open, "reports", "r1");
  await page.goto(open.url("/"));
  assert.equal((await page.textContent(cell("emails", "ready"))).trim(), "3");
  assert.equal((await page.textContent(cell("reports", "ready"))).trim(), "1");
  await page.evaluate(() => { window.__sameDocument = true; });
  publish(open, "emails", "d", "e");
  publish(open, "invoices", "i1");
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent.trim() === "5",
    cell("emails", "ready"),
    { timeout: WAIT },
  );
  await page.waitForSelector(cell("invoices", "ready"), { timeout: WAIT });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, "no reload happened");
  // Sorting by ready, largest first.
  await page.click('th[data-sort="ready"]');
  const first = await page.getAttribute("#queues tbody tr:first-child", "data-queue");
  assert.equal(first, "emails");
});

test("a <script> payload is shown as text and never runs", async () => {
  const { page } = b;
  const evil = "<script>window.pwned=1</script>";
  publish(open, "xss", evil);
  await page.goto(open.url("/queues/xss"));
  const shown = await page.textContent("#tasks pre.payload");
  assert.equal(shown, evil);
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  const scripts = await page.evaluate(() =>
    Array.from(document.scripts).filter((s) => s.textContent.includes("pwned")).length,
  );
  assert.equal(scripts, 0, "the payload did not become a script element");
});

test("purging from the queue page asks first, then empties the queue", async () => {
  const { page } = b;
  publish(open, "trash", "1", "2", "3", "4");
  await page.goto(open.url("/queues/trash"));
  assert.equal((await page.textContent("#q-ready")).trim(), "4");
  // Declined: nothing happens.
  let asked = "";
  page.once("dialog", (d) => { asked = d.message(); d.dismiss(); });
  await page.click('button[data-action="purge"]');
  assert.match(asked, /Remove every task of trash/);
  assert.match(open.cli(["queue", "trash", "--json"]), /"ready":\s*4/);
  // Confirmed: the queue is emptied, and the page shows it.
  page.once("dialog", (d) => d.accept());
  await Promise.all([page.waitForEvent("load", { timeout: WAIT }), page.click('button[data-action="purge"]')]);
  await page.waitForSelector("#no-tasks", { timeout: WAIT });
  assert.equal((await page.textContent("#q-ready")).trim(), "0");
  assert.match(open.cli(["queue", "trash", "--json"]), /"ready":\s*0/);
});

test("the configuration form sets the flow control, its checkbox included", async () => {
  const { page } = b;
  publish(open, "flow", "x");
  const config = () => page.evaluate(async () => (await (await fetch("/api/v1/queues/flow")).json()).config);
  const save = async () => {
    await page.evaluate(() => { document.getElementById("action-result").textContent = ""; });
    await page.click('#config button[type="submit"]');
    await page.waitForFunction(
      () => document.getElementById("action-result").textContent === "configuration saved",
      null,
      { timeout: WAIT },
    );
  };
  await page.goto(open.url("/queues/flow"));
  await page.fill('#config input[name="max_in_flight"]', "3");
  await page.fill('#config input[name="rate_limit"]', "20");
  await page.check('#config input[name="drop_expired"]');
  await page.check('#config input[name="keep_acked"]');
  await save();
  let c = await config();
  assert.deepEqual(
    [c.max_in_flight, c.rate_limit, c.rate_burst, c.drop_expired, c.keep_acked],
    [3, 20, 0, true, true],
  );
  await page.goto(open.url("/queues/flow"));
  assert.equal(await page.isChecked('#config input[name="drop_expired"]'), true, "shown as saved");
  assert.equal(await page.isChecked('#config input[name="keep_acked"]'), true, "shown as saved");
  await page.uncheck('#config input[name="drop_expired"]');
  await save();
  c = await config();
  assert.deepEqual([c.max_in_flight, c.drop_expired], [3, false]);
});

test("screenshot of the dashboard for the README (docs/dashboard.png)", async () => {
  const { page } = b;
  publish(open, "payments", "p1", "p2", "p3");
  open.cli(["consume", "payments", "--count", "2", "--fail", "card declined"]);
  publish(open, "thumbnails", ...Array.from({ length: 12 }, (_, i) => `img-${i}`));
  await page.goto(open.url("/"));
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent.trim() === "2",
    cell("payments", "dead"),
    { timeout: WAIT },
  );
  // A few live updates so that the charts have something to draw.
  await page.waitForTimeout(3500);
  const cls = await page.getAttribute('tr[data-queue="payments"]', "class");
  assert.match(cls, /warn-dead/, "a queue with dead tasks stands out");
  await page.screenshot({ path: join(ROOT, "docs/dashboard.png"), fullPage: true });
});

test("with tokens configured the page asks for one and refuses a wrong one", async () => {
  const hash = execFileSync(SQUALL, ["token", "hash", "--name", "ops", "--role", "admin", "right-token"]).toString();
  const dir = mkdtempSync(join(tmpdir(), "squall-auth-"));
  const config = join(dir, "squall.toml");
  writeFileSync(config, hash);
  const guarded = await startBroker(["--config", config]);
  const { context, page, close } = await browser();
  try {
    await page.goto(guarded.url("/"));
    await page.waitForSelector("#token");
    assert.equal(await page.locator("#queues").count(), 0, "no queues before a token");
    await page.fill("#token", "wrong-token");
    await page.click("#login");
    await page.waitForSelector("#login-error");
    assert.match(await page.textContent("#login-error"), /refused/);
    assert.equal(await page.locator("#queues").count(), 0);
    await page.fill("#token", "right-token");
    await page.click("#login");
    await page.waitForSelector("#queues", { timeout: WAIT });
    const cookie = (await context.cookies()).find((c) => c.name === "squall_token");
    assert.ok(cookie, "the token is kept in a cookie");
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, "Strict");
    assert.equal(await page.evaluate(() => document.cookie), "", "scripts cannot read it");
  } finally {
    await close();
    await guarded.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
