// Every credential transport against the real gateway, each running the demo agent.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { AgentgateError, connect, type AgentEvent, type Transport } from "@agentgate/client";
import { startGateway, type Gateway } from "./helpers.js";

async function runDemo(gw: Gateway, transport: Transport, token: string | null) {
  const conn = await connect({ url: gw.url, token, transport });
  try {
    assert.match(conn.sessionId ?? "", /^s_/);
    assert.equal(conn.resumed, false);
    assert.equal(conn.resumeError, null);
    assert.equal(conn.lastSeq, 0);
    const run = await conn.startRun("demo", { prompt: "count these four words" });
    assert.match(run.runId, /^r_/);
    const events: AgentEvent[] = [];
    for await (const ev of run) events.push(ev);
    assert.equal(events[0]?.type, "agent_started");
    const last = events[events.length - 1];
    assert.equal(last?.type, "agent_completed");
    assert.deepEqual(last?.data, { result: { words: 4 } });
    assert.deepEqual(
      events.map((e) => e.seq),
      events.map((_, i) => i + 1),
    );
    for (const e of events) {
      assert.equal(e.runId, run.runId);
      assert.equal(typeof e.tsMs, "number");
    }
    const final = await run.result();
    assert.deepEqual(final, last);
    assert.equal(conn.lastSeq, events.length);
    const state = await conn.getRun(run.runId);
    assert.deepEqual(state, { runId: run.runId, status: "completed", terminal: last });
    return conn.principal as { subject: string; via: string };
  } finally {
    await conn.close();
  }
}

describe("credential transports", () => {
  let gw: Gateway;
  let fm: Gateway;
  before(async () => {
    [gw, fm] = await Promise.all([
      startGateway(),
      startGateway("[auth]\nfirst_message = true\nfirst_message_timeout_ms = 3000\n"),
    ]);
  });
  after(async () => {
    await gw?.stop();
    await fm?.stop();
  });

  for (const transport of ["header", "subprotocol", "query", "ticket"] as const) {
    test(`${transport} runs the demo agent`, async () => {
      const principal = await runDemo(gw, transport, gw.mint({ sub: "alice" }));
      assert.equal(principal.subject, "alice");
      assert.equal(principal.via, transport === "ticket" ? "ticket:jwt:test" : "jwt:test");
    });
  }

  test("first_message runs the demo agent (auth.first_message = true)", async () => {
    const principal = await runDemo(fm, "first_message", fm.mint({ sub: "bob" }));
    assert.equal(principal.subject, "bob");
  });

  test("first_message resumes with the session fields in the auth frame", async () => {
    const token = fm.mint({ sub: "dora" });
    const a = await connect({ url: fm.url, token, transport: "first_message" });
    const run = await a.startRun("demo", { prompt: "a b c" });
    await run.result();
    const sessionId = a.sessionId;
    await a.close();
    const b = await connect({ url: fm.url, token, transport: "first_message", sessionId, lastSeq: 2 });
    assert.equal(b.sessionId, sessionId);
    assert.equal(b.resumed, true);
    assert.equal(b.resumeError, null);
    // Events 3.. are replayed; run(runId) follows a run this connection did not start.
    const again: AgentEvent[] = [];
    for await (const ev of b.run(run.runId)) again.push(ev);
    assert.deepEqual(
      again.map((e) => e.seq),
      [3, 4, 5, 6],
    );
    assert.equal(again[3]?.type, "agent_completed");
    assert.equal(b.lastSeq, 6);
    const state = await b.getRun(run.runId);
    assert.equal(state.status, "completed");
    await b.close();
  });

  test("the default transport in Node is the header", async () => {
    const conn = await connect({ url: gw.url, token: gw.mint() });
    assert.equal((conn.principal as { via: string }).via, "jwt:test");
    await conn.close();
  });

  test("a tokenProvider is asked for every connection", async () => {
    let calls = 0;
    const conn = await connect({
      url: gw.url,
      transport: "ticket",
      tokenProvider: async () => {
        calls += 1;
        return gw.mint({ sub: "carol" });
      },
    });
    assert.equal(calls, 1);
    assert.equal((conn.principal as { subject: string }).subject, "carol");
    await conn.close();
  });

  for (const transport of ["header", "subprotocol", "query", "ticket"] as const) {
    test(`${transport} without a token is refused token_missing`, async () => {
      const err = await connect({ url: gw.url, transport }).then(
        () => assert.fail("connected without a token"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof AgentgateError);
      assert.equal(err.kind, "unauthorized");
      assert.equal(err.code, "token_missing");
      assert.equal(err.status, 401);
      assert.equal(err.closeCode, null);
      assert.equal(err.retryable, false);
    });
  }

  test("first_message without a token is refused token_missing with close 4401", async () => {
    const err = await connect({ url: fm.url, transport: "first_message" }).then(
      () => assert.fail("connected without a token"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof AgentgateError);
    assert.equal(err.kind, "unauthorized");
    assert.equal(err.code, "token_missing");
    assert.equal(err.status, null);
    assert.equal(err.closeCode, 4401);
  });
});
