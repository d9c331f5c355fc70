// wss:// with `ca`: the gateway behind TLS with a certificate of a CA made here with the
// openssl CLI. The gateway terminates TLS itself when the binary supports
// server.tls_cert_file; otherwise a node:tls proxy in front of it does.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { AgentgateError, connect } from "@agentgate/client";
import { makeCertificates, startGateway, type Gateway } from "./helpers.js";

describe("wss:// with ca", () => {
  let gw: Gateway;
  let dir: string;
  let certs: ReturnType<typeof makeCertificates>;
  let wssAddr: string;
  let how = "";
  let tlsProxy: tls.Server | null = null;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "agentgate-js-tls-"));
    certs = makeCertificates(dir);
    try {
      gw = await startGateway("", `tls_cert_file = "${certs.certFile}"\ntls_key_file = "${certs.keyFile}"\n`);
      wssAddr = gw.addr;
      how = "the gateway terminates TLS";
    } catch {
      gw = await startGateway();
      const upstream = gw.addr;
      const i = upstream.lastIndexOf(":");
      tlsProxy = tls.createServer({ cert: readFileSync(certs.certFile), key: readFileSync(certs.keyFile) }, (s) => {
        const b = net.connect(Number(upstream.slice(i + 1)), upstream.slice(0, i));
        s.on("error", () => b.destroy());
        b.on("error", () => s.destroy());
        s.pipe(b).pipe(s);
      });
      tlsProxy.on("tlsClientError", () => undefined);
      await new Promise<void>((r) => tlsProxy?.listen(0, "127.0.0.1", r));
      wssAddr = `127.0.0.1:${(tlsProxy.address() as net.AddressInfo).port}`;
      how = "a node:tls proxy terminates TLS (this binary has no server.tls_cert_file)";
    }
  });
  after(async () => {
    await new Promise<void>((r) => (tlsProxy ? tlsProxy.close(() => r()) : r()));
    await gw?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const transport of ["header", "ticket", "subprotocol"] as const) {
    test(`${transport} over wss:// verified against ca runs the demo agent`, async (t) => {
      t.diagnostic(how);
      const conn = await connect({ url: `wss://${wssAddr}/v1/ws`, token: gw.mint({ sub: "tls" }), transport, ca: certs.caPem });
      const run = await conn.startRun("demo", { prompt: "over tls" });
      assert.deepEqual((await run.result()).data, { result: { words: 2 } });
      await conn.close();
    });
  }

  test("a certificate the ca does not verify is a network error naming the TLS failure", async () => {
    for (const ca of [certs.otherCaPem, undefined]) {
      const token = gw.mint();
      const e = await connect({ url: `wss://${wssAddr}/v1/ws`, token, ...(ca ? { ca } : {}) }).then(
        () => assert.fail("connected to an unverified server"),
        (err: unknown) => err,
      );
      assert.ok(e instanceof AgentgateError);
      assert.equal(e.kind, "network");
      assert.equal(e.retryable, true);
      assert.match(e.message, /certificate/i);
      assert.ok(!e.message.includes(token));
    }
  });

  test("the ticket request over https also needs the ca", async () => {
    const e = await connect({ url: `wss://${wssAddr}/v1/ws`, token: gw.mint(), transport: "ticket", ca: certs.otherCaPem }).then(
      () => assert.fail("connected to an unverified server"),
      (err: unknown) => err,
    );
    assert.ok(e instanceof AgentgateError);
    assert.equal(e.kind, "network");
    assert.match(e.message, /ticket/);
    assert.match(e.message, /certificate/i);
  });
});
