// Every error kind from a real refusal of the real gateway (or a real network failure).

import assert from "node:assert/strict";
import * as http from "node:http";
import * as net from "node:net";
import { after, before, describe, test } from "node:test";
import { AgentgateError, connect, type AgentEvent, type Connection } from "@agentgate/client";
import { postJson, sleep, startGateway, until, type Gateway } from "./helpers.js";

async function rejection(p: Promise<unknown>): Promise<AgentgateError> {
  const e = await p.then(
    () => assert.fail("expected a rejection"),
    (err: unknown) => err,
  );
  assert.ok(e instanceof AgentgateError, `not an AgentgateError: ${String(e)}`);
  return e;
}

function expectError(
  e: AgentgateError,
  want: { kind: string; code: string | null; status?: number | null; closeCode?: number | null; retryable: boolean },
  secrets: string[] = [],
) {
  assert.equal(e.kind, want.kind, e.message);
  assert.equal(e.code, want.code, e.message);
  assert.equal(e.status, want.status ?? null, e.message);
  assert.equal(e.closeCode, want.closeCode ?? null, e.message);
  assert.equal(e.retryable, want.retryable, e.message);
  assert.ok(e.message.length > 20, e.message);
  for (const s of secrets) assert.ok(!e.message.includes(s), "an error message holds a credential");
  assert.ok(!String(e.stack).includes(secrets[0] ?? "\u0000"), "an error stack holds a credential");
}

describe("error kinds from real refusals", () => {
  let gw: Gateway;
  before(async () => {
    gw = await startGateway(
      `[limits]
runs_per_principal = 1
connections_per_principal = 2

[[agents]]
name = "restricted"
kind = "demo"
scope = "other"
`,
    );
  });
  after(async () => {
    await gw?.stop();
  });

  test("unauthorized: an expired token is HTTP 401 token_expired", async () => {
    const token = gw.mint({ ttl: -120 });
    for (const transport of ["header", "subprotocol", "query", "ticket"] as const) {
      const e = await rejection(connect({ url: gw.url, token, transport }));
      expectError(e, { kind: "unauthorized", code: "token_expired", status: 401, retryable: false }, [token]);
      assert.match(e.message, /fresh/);
    }
  });

  test("unauthorized: a token of an unknown key is signature_invalid", async () => {
    const e = await rejection(connect({ url: gw.url, token: gw.mint().slice(0, -4) + "AAAA" }));
    expectError(e, { kind: "unauthorized", code: "signature_invalid", status: 401, retryable: false });
  });

  test("forbidden: a run of an agent the token has no scope for is scope_missing", async () => {
    const conn = await connect({ url: gw.url, token: gw.mint({ sub: "f1" }) });
    const e = await rejection(conn.startRun("restricted", { prompt: "x" }));
    expectError(e, { kind: "forbidden", code: "scope_missing", retryable: false });
    // An error reply never ends the connection.
    const run = await conn.startRun("demo", { prompt: "still here" });
    assert.equal((await run.result()).type, "agent_completed");
    await conn.close();
  });

  test("unavailable: a second concurrent run is too_many_runs, retryable, and does not reconnect", async () => {
    let reconnects = 0;
    const conn = await connect({ url: gw.url, token: gw.mint({ sub: "u1" }), on: { reconnect: () => (reconnects += 1) } });
    const first = await conn.startRun("demo", { prompt: "a b c", delay_ms: 300 });
    const e = await rejection(conn.startRun("demo", { prompt: "x" }));
    expectError(e, { kind: "unavailable", code: "too_many_runs", retryable: true });
    assert.equal((await first.result()).type, "agent_completed");
    assert.equal(reconnects, 0);
    await conn.close();
  });

  test("unavailable: the per-principal connection cap is HTTP 429 too_many_connections, without retry", async () => {
    const token = gw.mint({ sub: "u2" });
    const a = await connect({ url: gw.url, token });
    const b = await connect({ url: gw.url, token });
    const t0 = Date.now();
    const e = await rejection(connect({ url: gw.url, token }));
    expectError(e, { kind: "unavailable", code: "too_many_connections", status: 429, retryable: true }, [token]);
    assert.ok(Date.now() - t0 < 1000, "connect retried a refused first connection");
    await a.close();
    await b.close();
  });

  test("network: nothing listening fails at once", async () => {
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const port = (srv.address() as net.AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
    const t0 = Date.now();
    const e = await rejection(connect({ url: `ws://127.0.0.1:${port}/v1/ws`, token: gw.mint() }));
    expectError(e, { kind: "network", code: null, retryable: true });
    assert.match(e.message, /ECONNREFUSED/);
    assert.ok(Date.now() - t0 < 2000, "connect retried a refused first connection");
  });

  test("network: a server that never answers fails after the open timeout", async () => {
    const sockets: net.Socket[] = [];
    const srv = net.createServer((s) => sockets.push(s));
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const port = (srv.address() as net.AddressInfo).port;
    const t0 = Date.now();
    const e = await rejection(connect({ url: `ws://127.0.0.1:${port}/v1/ws`, token: gw.mint(), openTimeoutMs: 400 }));
    const took = Date.now() - t0;
    expectError(e, { kind: "network", code: null, retryable: true });
    assert.match(e.message, /400 ms/);
    assert.ok(took >= 390 && took < 2000, `took ${took} ms`);
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => srv.close(() => r()));
  });

  test("protocol: a URL that is not a gateway answers HTTP 404", async () => {
    const srv = http.createServer((_req, res) => {
      res.writeHead(404, { "Content-Type": "text/plain" });
      res.end("no such page");
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const port = (srv.address() as net.AddressInfo).port;
    const e = await rejection(connect({ url: `ws://127.0.0.1:${port}/v1/ws`, token: gw.mint() }));
    expectError(e, { kind: "protocol", code: null, status: 404, retryable: false });
    await new Promise<void>((r) => srv.close(() => r()));
  });

  test("request: an unknown agent, bad input and an unknown run", async () => {
    const conn = await connect({ url: gw.url, token: gw.mint({ sub: "r1" }) });
    expectError(await rejection(conn.startRun("nope", {})), { kind: "request", code: "agent_unknown", retryable: false });
    expectError(await rejection(conn.startRun("demo", { prompt: "x", delay_ms: 99999 })), {
      kind: "request",
      code: "protocol_error",
      retryable: false,
    });
    expectError(await rejection(conn.cancelRun("r_00000000000000000000000000")), {
      kind: "request",
      code: "run_not_found",
      retryable: false,
    });
    expectError(await rejection(conn.getRun("r_00000000000000000000000000")), {
      kind: "request",
      code: "run_not_found",
      retryable: false,
    });
    await conn.close();
  });

  test("run_failed: the demo agent's failure, its data.code as the code", async () => {
    const conn = await connect({ url: gw.url, token: gw.mint({ sub: "rf" }) });
    const run = await conn.startRun("demo", { prompt: "x y", fail: true });
    const events: AgentEvent[] = [];
    for await (const ev of run) events.push(ev);
    assert.equal(events[events.length - 1]?.type, "agent_failed");
    const e = await rejection(run.result());
    expectError(e, { kind: "run_failed", code: "demo_failure", retryable: false });
    const state = await conn.getRun(run.runId);
    assert.equal(state.status, "failed");
    assert.deepEqual(state.terminal, events[events.length - 1]);
    await conn.close();
  });

  test("run_cancelled: cancelRun completes with the run_cancelled event", async () => {
    const conn = await connect({ url: gw.url, token: gw.mint({ sub: "rc" }) });
    const run = await conn.startRun("demo", { prompt: "a b c d e f", delay_ms: 400 });
    const seen: AgentEvent[] = [];
    const iterating = (async () => {
      for await (const ev of run) seen.push(ev);
    })();
    await conn.cancelRun(run.runId);
    await iterating;
    assert.equal(seen[seen.length - 1]?.type, "run_cancelled");
    const e = await rejection(run.result());
    expectError(e, { kind: "run_cancelled", code: null, retryable: false });
    expectError(await rejection(conn.cancelRun(run.runId)), { kind: "request", code: "run_not_found", retryable: false });
    assert.equal((await conn.getRun(run.runId)).status, "cancelled");
    await conn.close();
  });

  test("an unknown sessionId at connect gives a new session and resumeError session_not_found", async () => {
    const conn = await connect({
      url: gw.url,
      token: gw.mint({ sub: "s1" }),
      sessionId: "s_0000000000000000000000000000",
      lastSeq: 3,
    });
    assert.match(conn.sessionId ?? "", /^s_/);
    assert.notEqual(conn.sessionId, "s_0000000000000000000000000000");
    assert.equal(conn.resumed, false);
    assert.equal(conn.resumeError, "session_not_found");
    assert.equal(conn.lastSeq, 0);
    await conn.close();
  });

  test("unavailable 4409: a session resumed elsewhere closes the first connection, never retried", async () => {
    const token = gw.mint({ sub: "taken" });
    let reconnects = 0;
    const closes: Array<AgentgateError | null> = [];
    const a = await connect({
      url: gw.url,
      token,
      on: { reconnect: () => (reconnects += 1), close: (e) => closes.push(e) },
    });
    const run = await a.startRun("demo", { prompt: "x", delay_ms: 50 });
    await run.result();
    const b = await connect({ url: gw.url, token, sessionId: a.sessionId, lastSeq: a.lastSeq });
    assert.equal(b.resumed, true);
    await until(() => closes.length > 0, 3000, "the close listener");
    const e = closes[0];
    assert.ok(e instanceof AgentgateError);
    expectError(e, { kind: "unavailable", code: "session_taken_over", closeCode: 4409, retryable: false });
    await sleep(300);
    assert.equal(reconnects, 0);
    assert.equal(closes.length, 1);
    const later = await rejection(a.getRun(run.runId));
    assert.equal(later.code, "session_taken_over");
    await b.close();
  });

  test("close() calls the close listener once with null and ends open runs", async () => {
    const closes: Array<AgentgateError | null> = [];
    const conn = await connect({ url: gw.url, token: gw.mint({ sub: "c1" }) });
    conn.on("close", (e) => closes.push(e));
    const run = await conn.startRun("demo", { prompt: "a b c", delay_ms: 300 });
    await conn.close();
    await conn.close();
    assert.deepEqual(closes, [null]);
    const e = await rejection(run.result());
    assert.equal(e.kind, "network");
    await rejection(conn.getRun(run.runId));
  });
});

describe("revocation and live expiry", () => {
  let gw: Gateway;
  before(async () => {
    gw = await startGateway(`[auth]\nleeway_s = 0\nexpiry_warning_s = 2\n`);
  });
  after(async () => {
    await gw?.stop();
  });

  test("a revoked token closes 4401 token_revoked within 1 s; open runs and requests get it", async () => {
    const jti = `revoke-me-${Date.now()}`;
    const token = gw.mint({ sub: "rv", jti });
    const closes: Array<AgentgateError | null> = [];
    const conn = await connect({ url: gw.url, token, on: { close: (e) => closes.push(e) } });
    const run = await conn.startRun("demo", { prompt: "a b c d e f g h", delay_ms: 1000 });
    const admin = gw.mint({ sub: "admin", scopes: ["admin"] });
    const t0 = Date.now();
    const r = await postJson(`${gw.httpUrl}/v1/admin/revoke`, admin, { jti });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const e = await rejection(run.result());
    assert.ok(Date.now() - t0 < 1500);
    expectError(e, { kind: "unauthorized", code: "token_revoked", closeCode: 4401, retryable: false }, [token]);
    await until(() => closes.length === 1, 1000, "the close listener");
    assert.equal(closes[0]?.code, "token_revoked");
    const later = await rejection(conn.getRun(run.runId));
    assert.equal(later.code, "token_revoked");
    // And the token is refused from now on.
    expectError(await rejection(connect({ url: gw.url, token })), {
      kind: "unauthorized",
      code: "token_revoked",
      status: 401,
      retryable: false,
    });
  });

  test("without a provider: expiring is reported, then the connection closes 4401 token_expired", async () => {
    const token = gw.mint({ sub: "ex", ttl: 3 });
    const expiring: Array<{ expiresAt: number | null }> = [];
    const closes: Array<AgentgateError | null> = [];
    const conn: Connection = await connect({
      url: gw.url,
      token,
      on: { expiring: (i) => expiring.push(i), close: (e) => closes.push(e) },
    });
    const expiresAt = conn.expiresAt;
    assert.equal(typeof expiresAt, "number");
    await until(() => closes.length === 1, 8000, "the expiry close");
    assert.deepEqual(expiring, [{ expiresAt }]);
    expectError(closes[0] as AgentgateError, { kind: "unauthorized", code: "token_expired", closeCode: 4401, retryable: false });
  });

  test("with a tokenProvider: auth.expiring is answered with auth.refresh and the connection lives on", async () => {
    let calls = 0;
    const expiring: Array<{ expiresAt: number | null }> = [];
    const closes: Array<AgentgateError | null> = [];
    const conn = await connect({
      url: gw.url,
      tokenProvider: () => {
        calls += 1;
        return gw.mint({ sub: "rf", ttl: calls === 1 ? 3 : 600 });
      },
      transport: "subprotocol",
      on: { expiring: (i) => expiring.push(i), close: (e) => closes.push(e) },
    });
    const first = conn.expiresAt as number;
    // Past the first token's expiry (leeway 0), the connection still runs agents.
    await until(() => Date.now() / 1000 > first + 1.2, 8000, "the first token's expiry");
    const run = await conn.startRun("demo", { prompt: "a b c d e f g h i j" });
    const events: AgentEvent[] = [];
    for await (const ev of run) events.push(ev);
    assert.equal(events[events.length - 1]?.type, "agent_completed");
    assert.equal(calls, 2);
    assert.deepEqual(expiring, [{ expiresAt: first }]);
    assert.ok((conn.expiresAt as number) > first + 500);
    assert.deepEqual(closes, []);
    await conn.close();
    assert.deepEqual(closes, [null]);
  });
});
