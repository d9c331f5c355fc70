// Headless Chromium (/usr/bin/chromium, driven by playwright-core; no browser is ever
// downloaded) against the real gateway: a page on another origin imports
// dist/browser.js, connects by subprotocol and by ticket, runs the demo agent, and
// gets the same error kinds and codes as Node for real refusals. Then the example page
// (examples/web) runs a live run; its screenshot is saved under target/screenshots/.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { chromium, type Browser, type Page } from "playwright-core";
import { PKG_DIR, REPO_DIR, sleep, startGateway, startProxy, type Gateway } from "./helpers.js";

const CHROMIUM = process.env["CHROMIUM"] || "/usr/bin/chromium";
export const SCREENSHOT = join(REPO_DIR, "target", "screenshots", "js-example-page.png");

const TEST_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>agentgate client test page</title></head>
<body><pre id="out">loading</pre>
<script type="module">
import * as ag from "/clients/js/dist/browser.js";
window.ag = ag;
document.getElementById("out").textContent = "ready";
</script></body></html>`;

/** Serves the test page, dist/browser.js and the example page, as a web server would. */
function startPageServer(): Promise<http.Server> {
  const files: Record<string, [string, string]> = {
    "/clients/js/dist/browser.js": [join(PKG_DIR, "dist", "browser.js"), "text/javascript"],
    "/examples/web/index.html": [join(REPO_DIR, "examples", "web", "index.html"), "text/html"],
  };
  const srv = http.createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/") {
      res.writeHead(200, { "Content-Type": "text/html" });
      res.end(TEST_PAGE);
      return;
    }
    const f = files[path];
    if (!f) {
      res.writeHead(404);
      res.end("not found");
      return;
    }
    res.writeHead(200, { "Content-Type": f[1] });
    res.end(readFileSync(f[0]));
  });
  return new Promise((resolve) => srv.listen(0, "127.0.0.1", () => resolve(srv)));
}

interface PageResult {
  ok: boolean;
  kind?: string;
  code?: string | null;
  status?: number | null;
  closeCode?: number | null;
  retryable?: boolean;
  message?: string;
  isAgentgateError?: boolean;
  name?: string;
  via?: string;
  types?: string[];
  seqs?: number[];
  final?: unknown;
  protocolErrorKind?: string;
}

/** In the page: connect with these options and run the demo agent, or report the error. */
async function inPage(page: Page, opts: Record<string, unknown>, run = true): Promise<PageResult> {
  return page.evaluate(
    async ({ opts, run }) => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const ag = (window as any).ag;
      try {
        const conn = await ag.connect(opts);
        const out: Record<string, unknown> = { ok: true, via: conn.principal.via };
        if (run) {
          const r = await conn.startRun("demo", { prompt: "four words in browser" });
          const evs: Array<{ type: string; seq: number }> = [];
          for await (const ev of r) evs.push(ev);
          out["types"] = evs.map((e) => e.type);
          out["seqs"] = evs.map((e) => e.seq);
          out["final"] = (await r.result()).data;
          try {
            await conn.startRun("no-such-agent", {});
          } catch (e) {
            out["protocolErrorKind"] = (e as { kind: string }).kind;
          }
        }
        await conn.close();
        return out;
      } catch (e) {
        const err = e as Record<string, unknown>;
        return {
          ok: false,
          isAgentgateError: e instanceof ag.AgentgateError,
          name: String(err["name"]),
          kind: err["kind"],
          code: err["code"],
          status: err["status"],
          closeCode: err["closeCode"],
          retryable: err["retryable"],
          message: String(err["message"]),
        };
      }
    },
    { opts, run },
  ) as unknown as Promise<PageResult>;
}

describe("headless Chromium", () => {
  let gw: Gateway;
  let pages: http.Server;
  let pagePort: number;
  let browser: Browser;
  let page: Page;
  let foreign: Page;

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`no Chromium at ${CHROMIUM}: install it (apt-get install chromium) or set CHROMIUM; this test never downloads a browser`);
    }
    if (!existsSync(join(PKG_DIR, "dist", "browser.js"))) throw new Error("dist/browser.js is missing: run npm run build");
    pages = await startPageServer();
    pagePort = (pages.address() as AddressInfo).port;
    gw = await startGateway("", `allowed_origins = ["http://127.0.0.1:${pagePort}"]`);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
    page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${pagePort}/`);
    await page.waitForFunction(() => document.getElementById("out")?.textContent === "ready");
    // The same server under another origin (localhost is not on allowed_origins).
    foreign = await browser.newPage();
    await foreign.goto(`http://localhost:${pagePort}/`);
    await foreign.waitForFunction(() => document.getElementById("out")?.textContent === "ready");
  });
  after(async () => {
    await browser?.close();
    await new Promise<void>((r) => (pages ? pages.close(() => r()) : r()));
    await gw?.stop();
  });

  test("dist/browser.js is one ES module without imports", () => {
    const text = readFileSync(join(PKG_DIR, "dist", "browser.js"), "utf8");
    assert.doesNotMatch(text, /^\s*import[\s{*"']/m);
    assert.doesNotMatch(text, /\brequire\s*\(/);
    assert.match(text, /export\s*{/);
  });

  test("subprotocol (the browser default) runs the demo agent", async () => {
    const r = await inPage(page, { url: gw.url, token: gw.mint({ sub: "page" }) });
    assert.equal(r.ok, true, r.message);
    assert.equal(r.via, "jwt:test");
    assert.deepEqual(r.types?.[0], "agent_started");
    assert.deepEqual(r.types?.[r.types.length - 1], "agent_completed");
    assert.deepEqual(r.seqs, r.seqs?.map((_, i) => i + 1));
    assert.deepEqual(r.final, { result: { words: 4 } });
    assert.equal(r.protocolErrorKind, "request");
  });

  test("ticket (fetched through CORS) runs the demo agent", async () => {
    const r = await inPage(page, { url: gw.url, token: gw.mint({ sub: "page" }), transport: "ticket" });
    assert.equal(r.ok, true, r.message);
    assert.equal(r.via, "ticket:jwt:test");
    assert.deepEqual(r.final, { result: { words: 4 } });
  });

  test("an expired token: unauthorized token_expired, close 4401 (subprotocol) or HTTP 401 (ticket)", async () => {
    const token = gw.mint({ ttl: -120 });
    const sub = await inPage(page, { url: gw.url, token }, false);
    assert.equal(sub.ok, false);
    assert.equal(sub.isAgentgateError, true);
    assert.equal(sub.kind, "unauthorized");
    assert.equal(sub.code, "token_expired");
    assert.equal(sub.closeCode, 4401);
    assert.equal(sub.status, null);
    assert.equal(sub.retryable, false);
    assert.ok(!sub.message?.includes(token));
    const ticket = await inPage(page, { url: gw.url, token, transport: "ticket" }, false);
    assert.equal(ticket.kind, "unauthorized");
    assert.equal(ticket.code, "token_expired");
    assert.equal(ticket.status, 401);
    assert.equal(ticket.closeCode, null);
  });

  test("no token: unauthorized token_missing, close 4401", async () => {
    const r = await inPage(page, { url: gw.url }, false);
    assert.equal(r.kind, "unauthorized");
    assert.equal(r.code, "token_missing");
    assert.equal(r.closeCode, 4401);
  });

  test("a page on an origin not allowed: forbidden origin_not_allowed, close 4403 (subprotocol and ticket)", async () => {
    for (const transport of ["subprotocol", "ticket"]) {
      const r = await inPage(foreign, { url: gw.url, token: gw.mint(), transport }, false);
      assert.equal(r.kind, "forbidden", `${transport}: ${r.message}`);
      assert.equal(r.code, "origin_not_allowed");
      assert.equal(r.closeCode, 4403);
      assert.match(r.message ?? "", /allowed_origins/);
    }
  });

  test("nothing listening: network", async () => {
    const r = await inPage(page, { url: "ws://127.0.0.1:9/v1/ws", token: gw.mint() }, false);
    assert.equal(r.kind, "network");
    assert.equal(r.retryable, true);
  });

  test("the header transport is refused in a browser with a TypeError", async () => {
    const r = await inPage(page, { url: gw.url, token: gw.mint(), transport: "header" }, false);
    assert.equal(r.ok, false);
    assert.equal(r.name, "TypeError");
    assert.match(r.message ?? "", /subprotocol/);
  });

  test("a run iterated in the page across a cut connection yields every event exactly once", async () => {
    const proxy = await startProxy(gw.addr);
    try {
      await page.evaluate(
        async ({ url, token }) => {
          // eslint-disable-next-line @typescript-eslint/no-explicit-any
          const w = window as any;
          w.cut = { events: [], reconnects: 0, error: null, done: false };
          const conn = await w.ag.connect({ url, token, on: { reconnect: () => (w.cut.reconnects += 1) } });
          const run = await conn.startRun("demo", { prompt: "cut me in the browser", delay_ms: 400 });
          (async () => {
            try {
              for await (const ev of run) w.cut.events.push({ seq: ev.seq, type: ev.type });
            } catch (e) {
              w.cut.error = String(e);
            }
            w.cut.done = true;
            await conn.close();
          })();
        },
        { url: proxy.url, token: gw.mint({ sub: "page-cut" }) },
      );
      type Cut = { events: Array<{ seq: number; type: string }>; reconnects: number; error: string | null; done: boolean };
      const state = () => page.evaluate(() => (window as unknown as { cut: Cut }).cut);
      const waitFor = async (cond: (c: Cut) => boolean, ms: number, what: string) => {
        const deadline = Date.now() + ms;
        for (;;) {
          const c = await state();
          if (cond(c)) return c;
          if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(c)}`);
          await sleep(50);
        }
      };
      await waitFor((c) => c.events.length >= 2, 10_000, "two events in the page");
      proxy.cut();
      const r = await waitFor((c) => c.done, 20_000, "the end of the run in the page");
      assert.equal(r.error, null);
      assert.equal(r.reconnects, 1);
      assert.deepEqual(r.events.map((e) => e.seq), [1, 2, 3, 4, 5, 6]);
      assert.equal(r.events[5]?.type, "agent_completed");
    } finally {
      await proxy.close();
    }
  });

  test("the example page shows a run's events live (screenshot in target/screenshots)", async (t) => {
    const example = await browser.newPage({ viewport: { width: 1000, height: 720 } });
    const token = gw.mint({ sub: "alice" });
    const q = new URLSearchParams({ gateway: gw.url, token, prompt: "count the words of this prompt please", delay_ms: "150", autorun: "1" });
    await example.goto(`http://127.0.0.1:${pagePort}/examples/web/index.html?${q}`);
    await example.waitForFunction(() => document.body.dataset["outcome"] !== undefined, undefined, { timeout: 20_000 });
    const outcome = await example.evaluate(() => document.body.dataset["outcome"]);
    const statusText = await example.locator("#status").innerText();
    assert.equal(outcome, "completed", statusText);
    assert.match(statusText, /completed: \{"words":7\}/);
    const rows = await example.locator("#events tbody tr").evaluateAll((trs) =>
      trs.map((tr) => ({
        seq: Number(tr.querySelector(".seq")?.textContent),
        type: tr.querySelector(".type")?.textContent,
        data: tr.querySelector(".data")?.textContent,
      })),
    );
    assert.deepEqual(
      rows.map((r) => r.type),
      ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_message", "agent_completed"],
    );
    assert.deepEqual(rows.map((r) => r.seq), [1, 2, 3, 4, 5, 6]);
    assert.equal(rows[5]?.data, '{"result":{"words":7}}');
    // The token left the address bar.
    assert.ok(!example.url().includes(token));
    mkdirSync(join(REPO_DIR, "target", "screenshots"), { recursive: true });
    await example.screenshot({ path: SCREENSHOT, fullPage: true });
    t.diagnostic(`screenshot: ${SCREENSHOT}`);
    assert.ok(existsSync(SCREENSHOT));
    await example.close();
  });
});
