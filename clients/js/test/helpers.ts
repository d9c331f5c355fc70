// Test support: the real gateway binary on 127.0.0.1:0, real HS256 tokens, and a TCP
// proxy (node:net) that a test can cut, pause and resume. Nothing here stands in for
// the gateway; a missing binary fails the test that needs it.

import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const PKG_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const REPO_DIR = join(PKG_DIR, "..", "..");

/** The gateway binary: $AGENTGATE_BIN, else <repo>/target/debug/agentgate. Missing is an error. */
export function gatewayBin(): string {
  const bin = process.env["AGENTGATE_BIN"] || join(REPO_DIR, "target", "debug", "agentgate");
  if (!existsSync(bin)) {
    throw new Error(
      `the agentgate binary is missing at ${bin}: set AGENTGATE_BIN, or run cargo build -p agentgate (clients/js/ci.sh does)`,
    );
  }
  return bin;
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString("base64url");
}

export interface MintOptions {
  sub?: string;
  ttl?: number;
  scopes?: string[];
  jti?: string;
  claims?: Record<string, unknown>;
}

/** A real HS256 JWT signed with `secret`. */
export function mintToken(secret: string, o: MintOptions = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    sub: o.sub ?? "alice",
    iat: now,
    exp: now + (o.ttl ?? 900),
    jti: o.jti ?? randomBytes(12).toString("hex"),
    scope: (o.scopes ?? ["agents:run"]).join(" "),
    ...o.claims,
  };
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(payload));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

export interface Gateway {
  addr: string;
  url: string;
  httpUrl: string;
  secret: string;
  dir: string;
  proc: ChildProcess;
  mint(o?: MintOptions): string;
  log(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Start `agentgate serve --config F` with one HS256 issuer `test` and `extra` TOML appended. */
export async function startGateway(extra = "", server = ""): Promise<Gateway> {
  const bin = gatewayBin();
  const dir = mkdtempSync(join(tmpdir(), "agentgate-js-"));
  const secret = randomBytes(32).toString("hex");
  writeFileSync(join(dir, "secret"), secret, { mode: 0o600 });
  const addrFile = join(dir, "addr");
  const config = `[server]
listen = "127.0.0.1:0"
addr_file = "${addrFile}"
${server}

[[auth.jwt]]
name = "test"
algorithms = ["HS256"]
secret_file = "${join(dir, "secret")}"

${extra}
`;
  writeFileSync(join(dir, "config.toml"), config);
  let logText = "";
  const proc = spawn(bin, ["serve", "--config", join(dir, "config.toml")], { stdio: ["ignore", "pipe", "pipe"] });
  proc.stdout?.on("data", (d: Buffer) => (logText += d.toString()));
  proc.stderr?.on("data", (d: Buffer) => (logText += d.toString()));
  let exited: number | null = null;
  proc.on("exit", (code) => (exited = code ?? -1));
  const deadline = Date.now() + 20_000;
  let addr = "";
  while (!addr) {
    if (exited !== null) throw new Error(`the gateway exited (${exited}) at start:\n${logText}`);
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`the gateway did not write ${addrFile} within 20 s:\n${logText}`);
    }
    if (existsSync(addrFile)) addr = readFileSync(addrFile, "utf8").trim();
    if (!addr) await sleep(25);
  }
  const gw: Gateway = {
    addr,
    url: `ws://${addr}/v1/ws`,
    httpUrl: `http://${addr}`,
    secret,
    dir,
    proc,
    mint: (o) => mintToken(secret, o),
    log: () => logText,
    stop: async (signal = "SIGTERM") => {
      if (exited === null) {
        const done = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
        proc.kill(signal);
        const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
        await done;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return gw;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Wait until `cond()` holds, or fail after `ms`. */
export async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * A TCP proxy in front of the gateway. `cut()` destroys every open pair (the client sees
 * the connection drop without a close frame); `pause()` holds new connections (they
 * neither connect upstream nor fail) until `resume()`; `freeze()` stops forwarding
 * bytes on open pairs (what is sent is swallowed).
 */
export interface Proxy {
  port: number;
  url: string;
  httpUrl: string;
  connections: number;
  cut(): void;
  pause(): void;
  resume(): void;
  freeze(): void;
  refuse(on: boolean): void;
  setUpstream(addr: string): void;
  close(): Promise<void>;
}

export async function startProxy(upstream: string): Promise<Proxy> {
  let target = upstream;
  const pairs = new Set<{ a: net.Socket; b: net.Socket | null; frozen: boolean }>();
  let paused = false;
  let refusing = false;
  const held: Array<() => void> = [];
  let count = 0;
  const server = net.createServer((a) => {
    count += 1;
    if (refusing) {
      a.destroy();
      return;
    }
    const pair = { a, b: null as net.Socket | null, frozen: false };
    pairs.add(pair);
    a.on("error", () => undefined);
    a.on("close", () => {
      pair.b?.destroy();
      pairs.delete(pair);
    });
    a.pause();
    const go = () => {
      if (a.destroyed) return;
      const i = target.lastIndexOf(":");
      const b = net.connect(Number(target.slice(i + 1)), target.slice(0, i));
      pair.b = b;
      b.on("error", () => a.destroy());
      b.on("close", () => a.destroy());
      a.on("data", (d) => {
        if (!pair.frozen) b.write(d);
      });
      b.on("data", (d) => {
        if (!pair.frozen) a.write(d);
      });
      a.resume();
    };
    if (paused) held.push(go);
    else go();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const p: Proxy = {
    port,
    url: `ws://127.0.0.1:${port}/v1/ws`,
    httpUrl: `http://127.0.0.1:${port}`,
    get connections() {
      return count;
    },
    cut() {
      for (const pair of pairs) {
        pair.a.destroy();
        pair.b?.destroy();
      }
      pairs.clear();
    },
    pause() {
      paused = true;
    },
    resume() {
      paused = false;
      for (const go of held.splice(0)) go();
    },
    freeze() {
      for (const pair of pairs) pair.frozen = true;
    },
    refuse(on: boolean) {
      refusing = on;
    },
    setUpstream(addr: string) {
      target = addr;
    },
    close: async () => {
      p.cut();
      for (const go of held.splice(0)) void go;
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return p;
}

/** A CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI. */
export function makeCertificates(dir: string): { caPem: string; certFile: string; keyFile: string; otherCaPem: string } {
  const run = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
  run(["req", "-x509", ...ec, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=agentgate test CA"]);
  run(["req", "-x509", ...ec, "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=another CA"]);
  run(["req", ...ec, "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
  writeFileSync(join(dir, "ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  run(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]);
  return {
    caPem: readFileSync(join(dir, "ca.pem"), "utf8"),
    otherCaPem: readFileSync(join(dir, "other.pem"), "utf8"),
    certFile: join(dir, "server.pem"),
    keyFile: join(dir, "server.key"),
  };
}

/** POST JSON with a bearer token; returns status and parsed body. */
export async function postJson(url: string, token: string, body: unknown): Promise<{ status: number; body: unknown }> {
  const resp = await fetch(url, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await resp.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return { status: resp.status, body: parsed };
}
