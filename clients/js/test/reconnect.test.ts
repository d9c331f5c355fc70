// Reconnection through a TCP proxy (node:net) that the tests cut mid-run: resume by
// session id and last seq, every event exactly once, history_truncated,
// session_not_found, requests in flight, retries running out, close 1012.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { AgentgateError, connect, type AgentEvent, type Run, type Welcome } from "@agentgate/client";
import { sleep, startGateway, startProxy, until, type Gateway, type Proxy } from "./helpers.js";

const LONG_PROMPT = "one two three four five six seven eight nine ten eleven twelve";

/** Iterate a run in the background, recording events and the error it ends with. */
function follow(run: Run) {
  const events: AgentEvent[] = [];
  let error: unknown = null;
  let done = false;
  const finished = (async () => {
    try {
      for await (const ev of run) events.push(ev);
    } catch (e) {
      error = e;
    } finally {
      done = true;
    }
  })();
  return {
    events,
    finished,
    get error() {
      return error;
    },
    get done() {
      return done;
    },
  };
}

describe("reconnect and resume through a proxy that is cut", () => {
  let gw: Gateway;
  let proxy: Proxy;
  before(async () => {
    gw = await startGateway();
    proxy = await startProxy(gw.addr);
  });
  after(async () => {
    await proxy?.close();
    await gw?.stop();
  });

  test("a run iterated across two cuts yields every event exactly once, in order", async () => {
    const welcomes: Welcome[] = [];
    const closes: Array<AgentgateError | null> = [];
    const conn = await connect({
      url: proxy.url,
      token: gw.mint({ sub: "cut" }),
      on: { reconnect: (w) => welcomes.push(w), close: (e) => closes.push(e) },
    });
    const session = conn.sessionId;
    // The demo run has six events, 400 ms apart: cut after the second and after the fourth.
    const run = await conn.startRun("demo", { prompt: LONG_PROMPT, delay_ms: 400 });
    const f = follow(run);
    await until(() => f.events.length >= 2, 10_000, "two events");
    proxy.cut();
    await until(() => welcomes.length === 1 && f.events.length >= 4, 10_000, "a reconnection and two more events");
    proxy.cut();
    await f.finished;
    assert.equal(f.error, null, String(f.error));
    const seqs = f.events.map((e) => e.seq);
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `events not exactly once and in order: ${seqs.join(",")}`);
    assert.equal(f.events[0]?.type, "agent_started");
    assert.equal(f.events[f.events.length - 1]?.type, "agent_completed");
    assert.deepEqual(f.events[f.events.length - 1]?.data, { result: { words: 12 } });
    assert.equal(welcomes.length, 2);
    for (const w of welcomes) {
      assert.equal(w.type, "welcome");
      assert.equal(w.session_id, session);
      assert.equal(w.resumed, true);
    }
    assert.equal(conn.sessionId, session);
    assert.equal(conn.resumed, true);
    assert.equal(conn.resumeError, null);
    assert.equal(conn.lastSeq, seqs.length);
    assert.deepEqual(await run.result(), f.events[f.events.length - 1]);
    assert.deepEqual(closes, []);
    await conn.close();
    assert.deepEqual(closes, [null]);
  });

  test("a request in flight when the connection drops rejects with the drop's error; new ones wait for the reconnection", async () => {
    const welcomes: Welcome[] = [];
    const conn = await connect({ url: proxy.url, token: gw.mint({ sub: "inflight" }), on: { reconnect: (w) => welcomes.push(w) } });
    const run = await conn.startRun("demo", { prompt: "a b", delay_ms: 10 });
    await run.result();
    proxy.freeze();
    const inflight = conn.getRun(run.runId);
    await sleep(100);
    proxy.pause();
    proxy.cut();
    const e = await inflight.then(
      () => assert.fail("a request sent before the drop resolved"),
      (err: unknown) => err,
    );
    assert.ok(e instanceof AgentgateError);
    assert.equal(e.kind, "network");
    assert.equal(e.retryable, true);
    // During the reconnection a new request waits, and is answered once it completes.
    const waiting = conn.getRun(run.runId);
    await sleep(300);
    assert.equal(welcomes.length, 0);
    proxy.resume();
    const state = await waiting;
    assert.equal(state.status, "completed");
    assert.equal(welcomes.length, 1);
    await conn.close();
  });

  test("retries running out raise the last error everywhere and call close once", async () => {
    const closes: Array<AgentgateError | null> = [];
    const conn = await connect({ url: proxy.url, token: gw.mint({ sub: "out" }), maxRetries: 2, on: { close: (e) => closes.push(e) } });
    const run = await conn.startRun("demo", { prompt: LONG_PROMPT, delay_ms: 300 });
    const f = follow(run);
    await until(() => f.events.length >= 1, 5000, "an event");
    proxy.refuse(true);
    proxy.cut();
    try {
      await f.finished;
      assert.ok(f.error instanceof AgentgateError);
      assert.equal(f.error.kind, "network");
      await until(() => closes.length === 1, 5000, "the close listener");
      assert.equal(closes[0]?.kind, "network");
      const later = await conn.getRun(run.runId).then(
        () => assert.fail("a request after the end resolved"),
        (err: unknown) => err,
      );
      assert.ok(later instanceof AgentgateError);
      assert.equal(later.kind, "network");
      const res = await run.result().then(
        () => assert.fail("result() resolved"),
        (err: unknown) => err,
      );
      assert.equal((res as AgentgateError).kind, "network");
      assert.ok(proxy.connections >= 3, "two reconnection attempts were made");
      await sleep(200);
      assert.equal(closes.length, 1);
    } finally {
      proxy.refuse(false);
    }
  });
});

describe("resume failures", () => {
  test("history_truncated: raised at once in the open iterator and from result()", async () => {
    const gw = await startGateway("[sessions]\nbuffer_events = 2\n");
    const proxy = await startProxy(gw.addr);
    try {
      const welcomes: Welcome[] = [];
      const conn = await connect({ url: proxy.url, token: gw.mint({ sub: "trunc" }), on: { reconnect: (w) => welcomes.push(w) } });
      const run = await conn.startRun("demo", { prompt: LONG_PROMPT, delay_ms: 100 });
      const f = follow(run);
      await until(() => f.events.length >= 2, 5000, "two events");
      proxy.pause();
      proxy.cut();
      await sleep(800); // more than two events pass while the connection is down
      proxy.resume();
      await f.finished;
      assert.ok(f.error instanceof AgentgateError, `the iterator ended without an error: ${f.events.map((e) => e.type).join(",")}`);
      assert.equal(f.error.kind, "history_truncated");
      assert.equal(f.error.code, "history_truncated");
      assert.equal(f.error.retryable, false);
      const seqs = f.events.map((e) => e.seq);
      assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "only the events before the gap were yielded");
      const res = await run.result().then(
        () => assert.fail("result() resolved"),
        (err: unknown) => err,
      );
      assert.equal((res as AgentgateError).kind, "history_truncated");
      assert.equal(welcomes.length, 1);
      assert.equal(welcomes[0]?.resume_error, "history_truncated");
      assert.equal(conn.resumed, true);
      assert.equal(conn.resumeError, "history_truncated");
      // The connection goes on.
      const again = await conn.startRun("demo", { prompt: "a b" });
      assert.equal((await again.result()).type, "agent_completed");
      await conn.close();
    } finally {
      await proxy.close();
      await gw.stop();
    }
  });

  test("session_not_found on a reconnection: protocol error in open iterators, the connection goes on with the new session", async () => {
    const gw = await startGateway("[sessions]\nresume_window_s = 1\n");
    const proxy = await startProxy(gw.addr);
    try {
      const welcomes: Welcome[] = [];
      const conn = await connect({ url: proxy.url, token: gw.mint({ sub: "lost" }), on: { reconnect: (w) => welcomes.push(w) } });
      const oldSession = conn.sessionId;
      const run = await conn.startRun("demo", { prompt: LONG_PROMPT, delay_ms: 200 });
      const f = follow(run);
      await until(() => f.events.length >= 1, 5000, "an event");
      assert.ok(conn.lastSeq >= 1);
      proxy.pause();
      proxy.cut();
      await sleep(3000); // past the resume window
      proxy.resume();
      await f.finished;
      assert.ok(f.error instanceof AgentgateError, "the iterator ended without an error");
      assert.equal(f.error.kind, "protocol");
      assert.equal(f.error.code, "session_not_found");
      const res = await run.result().then(
        () => assert.fail("result() resolved"),
        (err: unknown) => err,
      );
      assert.equal((res as AgentgateError).code, "session_not_found");
      assert.equal(welcomes.length, 1);
      assert.equal(welcomes[0]?.resume_error, "session_not_found");
      assert.notEqual(conn.sessionId, oldSession);
      assert.equal(conn.sessionId, welcomes[0]?.session_id);
      assert.equal(conn.resumed, false);
      assert.equal(conn.resumeError, "session_not_found");
      assert.equal(conn.lastSeq, 0);
      const again = await conn.startRun("demo", { prompt: "a b" });
      const evs: AgentEvent[] = [];
      for await (const ev of again) evs.push(ev);
      assert.equal(evs[0]?.seq, 1);
      assert.equal(conn.lastSeq, evs.length);
      await conn.close();
    } finally {
      await proxy.close();
      await gw.stop();
    }
  });

  test("reconnection attempts refused with HTTP 429 are counted as failed attempts and retried", async () => {
    const gw = await startGateway("[limits]\nhandshakes_per_ip_per_s = 1\n");
    const proxy = await startProxy(gw.addr);
    try {
      const token = gw.mint({ sub: "busy" });
      const welcomes: Welcome[] = [];
      const closes: Array<AgentgateError | null> = [];
      const conn = await connect({ url: proxy.url, token, on: { reconnect: (w) => welcomes.push(w), close: (e) => closes.push(e) } });
      proxy.pause();
      proxy.cut();
      // Spend this address's handshake budget (burst 2), so that the held attempt is refused 429.
      let refused = 0;
      for (let i = 0; i < 4; i++) {
        const e = await connect({ url: gw.url }).then(
          () => null,
          (err: unknown) => err,
        );
        if (e instanceof AgentgateError && e.code === "rate_limited") {
          assert.equal(e.status, 429);
          assert.equal(e.kind, "unavailable");
          refused += 1;
        }
      }
      assert.ok(refused >= 1, "the handshake budget was not spent");
      const before = proxy.connections;
      proxy.resume();
      await until(() => welcomes.length === 1 || closes.length === 1, 15_000, "a reconnection");
      assert.deepEqual(closes, []);
      assert.ok(proxy.connections - before >= 1, "refused attempts were retried");
      assert.match(gw.log(), /rate_limited/);
      assert.equal(welcomes[0]?.resumed, true);
      const run = await conn.startRun("demo", { prompt: "x" });
      assert.equal((await run.result()).type, "agent_completed");
      await conn.close();
    } finally {
      await proxy.close();
      await gw.stop();
    }
  });

  test("close 1012 (SIGTERM) reconnects, here to a new gateway that answers session_not_found", async () => {
    const a = await startGateway();
    const b = await startGateway("", "");
    const proxy = await startProxy(a.addr);
    try {
      const welcomes: Welcome[] = [];
      const closes: Array<AgentgateError | null> = [];
      // Both gateways must accept the token: mint with a's secret for a, provider switches.
      let current = a;
      const conn = await connect({
        url: proxy.url,
        tokenProvider: () => current.mint({ sub: "restart" }),
        on: { reconnect: (w) => welcomes.push(w), close: (e) => closes.push(e) },
      });
      current = b;
      proxy.setUpstream(b.addr);
      await a.stop("SIGTERM");
      await until(() => welcomes.length === 1, 10_000, "a reconnection");
      assert.equal(welcomes[0]?.resume_error, "session_not_found");
      assert.deepEqual(closes, []);
      const run = await conn.startRun("demo", { prompt: "after restart" });
      assert.equal((await run.result()).type, "agent_completed");
      await conn.close();
    } finally {
      await proxy.close();
      await a.stop();
      await b.stop();
    }
  });
});
