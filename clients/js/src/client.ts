// The client core, shared by the Node and browser builds: connect, requests, runs as
// async iterables, reconnection with backoff and full jitter, resume by session id and
// last seq (every event exactly once and in order), auth.expiring answered from the
// token provider. See README.md for the behaviour, error kinds and choices.

import {
  AgentgateError,
  closedError,
  networkError,
  protocolError,
  replyError,
} from "./errors.js";
import type { CA, Platform, Sock } from "./platform.js";

/** How the credential travels (see the README). */
export type Transport = "header" | "subprotocol" | "query" | "first_message" | "ticket";

/** An agent event: `{ type, seq, runId, tsMs, data }`, `data` as the gateway sent it. */
export interface AgentEvent {
  type: string;
  seq: number;
  runId: string;
  tsMs: number | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  data: any;
}

/** The welcome message, as the gateway sent it. */
export interface Welcome {
  type: "welcome";
  protocol?: string;
  session_id: string;
  resumed: boolean;
  resume_error?: string;
  first_seq?: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  principal?: any;
  expires_at?: number | null;
  heartbeat_ms?: number;
  [key: string]: unknown;
}

/** The answer of `getRun`. */
export interface RunState {
  runId: string;
  status: string;
  terminal: AgentEvent | null;
}

export interface ExpiringInfo {
  /** Unix seconds, as the gateway sent them (null if it sent none). */
  expiresAt: number | null;
}

export type ExpiringListener = (info: ExpiringInfo) => void;
export type ReconnectListener = (welcome: Welcome) => void;
export type CloseListener = (error: AgentgateError | null) => void;

export interface Listeners {
  expiring?: ExpiringListener;
  reconnect?: ReconnectListener;
  close?: CloseListener;
}

export interface ConnectOptions {
  /** The `ws://` or `wss://` URL of the gateway's `/v1/ws`. */
  url: string;
  /** A bearer token (JWT or API key). */
  token?: string | null;
  /** Asked for a token on every connection and to answer `auth.expiring`. */
  tokenProvider?: (() => string | Promise<string>) | null;
  /** Default: "header" in Node, "subprotocol" in a browser. */
  transport?: Transport;
  /** Resume this session. */
  sessionId?: string | null;
  /** With `sessionId`: the highest seq already seen (default 0). */
  lastSeq?: number | null;
  /** Reconnect and resume after a network failure or close 1012/1013 (default true). */
  reconnect?: boolean;
  /** Reconnection attempts per outage (default 8). */
  maxRetries?: number;
  /** Each attempt (ticket, handshake, welcome) must complete within this (default 10000). */
  openTimeoutMs?: number;
  /** PEM certificate(s) that verify a `wss://` gateway and its ticket endpoint (Node only). */
  ca?: CA;
  /** Listeners that also see what happens during connect. */
  on?: Listeners;
}

const TERMINAL = new Set(["agent_completed", "agent_failed", "run_cancelled"]);
const BACKOFF_BASE_MS = 200;
const BACKOFF_CAP_MS = 10_000;
const MAX_OTHER_EVENTS = 10_000;
const TRANSPORTS: readonly Transport[] = ["header", "subprotocol", "query", "first_message", "ticket"];

type Json = Record<string, unknown>;

function toEvent(m: Json): AgentEvent {
  return {
    type: String(m["type"]),
    seq: m["seq"] as number,
    runId: typeof m["run_id"] === "string" ? m["run_id"] : "",
    tsMs: typeof m["ts_ms"] === "number" ? m["ts_ms"] : null,
    data: m["data"] === undefined ? null : m["data"],
  };
}

/** The outcome of a run's terminal event: the event, or the error result() rejects with. */
function outcome(ev: AgentEvent): AgentgateError | null {
  if (ev.type === "agent_failed") {
    const d = (ev.data ?? {}) as { code?: unknown; message?: unknown };
    const code = typeof d.code === "string" ? d.code : null;
    const msg = typeof d.message === "string" ? `: ${d.message}` : "";
    return new AgentgateError({
      kind: "run_failed",
      code,
      message: `the run ${ev.runId} failed${code ? ` (${code})` : ""}${msg}; the agent reported the failure, see the event's data`,
    });
  }
  if (ev.type === "run_cancelled") {
    return new AgentgateError({ kind: "run_cancelled", message: `the run ${ev.runId} was cancelled` });
  }
  return null;
}

/** One run: iterate it for its events (terminal last), or await `result()`. */
export class Run implements AsyncIterable<AgentEvent> {
  /** The gateway's id of the run (`r_...`). */
  readonly runId: string;
  private readonly events: AgentEvent[] = [];
  private terminal: AgentEvent | null = null;
  private error: AgentgateError | null = null;
  private wakers: Array<() => void> = [];

  /** @internal */
  constructor(runId: string) {
    this.runId = runId;
  }

  /** @internal An event of this run, in seq order. */
  _push(ev: AgentEvent): void {
    if (this.terminal || this.error) return;
    this.events.push(ev);
    if (TERMINAL.has(ev.type)) this.terminal = ev;
    this.wake();
  }

  /** @internal The run can no longer be followed: the error is raised at once in every iterator and by result(). */
  _fail(err: AgentgateError): void {
    if (this.terminal || this.error) return;
    this.error = err;
    this.wake();
  }

  private wake(): void {
    const w = this.wakers;
    this.wakers = [];
    for (const f of w) f();
  }

  private wait(): Promise<void> {
    return new Promise((resolve) => this.wakers.push(resolve));
  }

  [Symbol.asyncIterator](): AsyncIterator<AgentEvent> {
    let i = 0;
    let ended = false;
    return {
      next: async (): Promise<IteratorResult<AgentEvent>> => {
        for (;;) {
          if (ended) return { value: undefined, done: true };
          // An error is raised at once: events not yet read are not yielded after it.
          if (this.error) {
            ended = true;
            throw this.error;
          }
          const ev = this.events[i];
          if (ev) {
            i += 1;
            return { value: ev, done: false };
          }
          if (this.terminal) {
            ended = true;
            return { value: undefined, done: true };
          }
          await this.wait();
        }
      },
      return: async (): Promise<IteratorResult<AgentEvent>> => {
        ended = true;
        return { value: undefined, done: true };
      },
    };
  }

  /**
   * The terminal event: resolves on `agent_completed`, rejects with kind `run_failed`
   * (code = the event's `data.code`) or `run_cancelled`, or with the connection's error.
   */
  async result(): Promise<AgentEvent> {
    for (;;) {
      if (this.terminal) {
        const err = outcome(this.terminal);
        if (err) throw err;
        return this.terminal;
      }
      if (this.error) throw this.error;
      await this.wait();
    }
  }
}

interface Pending {
  /** What was asked, for messages. */
  what: string;
  resolve(v: unknown): void;
  reject(e: AgentgateError): void;
  /** run.start: the reply creates the Run. */
  start?: boolean;
  /** run.cancel: completes with the run's run_cancelled event. */
  cancelRunId?: string;
  /** run.get */
  get?: boolean;
}

interface Queued {
  frame: Json;
  pending: Pending;
}

/** One socket, from the attempt to its end. */
interface Link {
  sock: Sock | null;
  welcomed: boolean;
  dead: boolean;
  lastRx: number;
  hbTimer: ReturnType<typeof setInterval> | null;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** An open connection to the gateway: one session, kept across reconnections. */
export class Connection {
  /** The current session id (`s_...`). */
  sessionId: string | null = null;
  /** Whether the latest welcome resumed the session. */
  resumed = false;
  /** The latest welcome's `resume_error` (`history_truncated`, `session_not_found`), or null. */
  resumeError: string | null = null;
  /** The welcome's principal, as the gateway sent it. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  principal: any = null;
  /** The highest event seq received on this session (0 before any event). */
  lastSeq = 0;
  /** When the live credential expires (Unix seconds), or null. */
  expiresAt: number | null = null;

  private readonly opts: Required<Pick<ConnectOptions, "url" | "reconnect" | "maxRetries" | "openTimeoutMs">> & {
    token: string | null;
    tokenProvider: (() => string | Promise<string>) | null;
    transport: Transport;
    ca: CA | undefined;
  };
  private readonly wsUrl: URL;
  private readonly endpoint: string;
  private readonly platform: Platform;
  private readonly listeners = {
    expiring: new Set<ExpiringListener>(),
    reconnect: new Set<ReconnectListener>(),
    close: new Set<CloseListener>(),
  };
  private link: Link | null = null;
  private state: "connecting" | "open" | "reconnecting" | "closed" = "connecting";
  private readonly pending = new Map<string, Pending>();
  private queue: Queued[] = [];
  private readonly runs = new Map<string, Run>();
  /** Events of runs this connection did not start (a resumed session's replay), for `run(runId)`. */
  private readonly others = new Map<string, { events: AgentEvent[]; error: AgentgateError | null }>();
  private othersCount = 0;
  private nextRef = 0;
  private finalError: AgentgateError | null = null;
  private closeNotified = false;
  private readonly secrets = new Set<string>();
  private closedWaiters: Array<() => void> = [];

  /** @internal Use `connect()`. */
  constructor(platform: Platform, options: ConnectOptions, defaultTransport: Transport) {
    this.platform = platform;
    if (!options || typeof options.url !== "string") throw new TypeError("connect: options.url (the ws:// or wss:// URL of /v1/ws) is required");
    let u: URL;
    try {
      u = new URL(options.url);
    } catch {
      throw new TypeError("connect: options.url is not a valid URL; give the ws:// or wss:// URL of the gateway's /v1/ws");
    }
    if (u.protocol !== "ws:" && u.protocol !== "wss:") {
      throw new TypeError(`connect: options.url must start with ws:// or wss://, not ${u.protocol}//`);
    }
    this.wsUrl = u;
    this.endpoint = u.host;
    const transport = options.transport ?? defaultTransport;
    if (!TRANSPORTS.includes(transport)) {
      throw new TypeError(`connect: unknown transport ${JSON.stringify(transport)}; use one of ${TRANSPORTS.join(", ")}`);
    }
    if (transport === "header" && !platform.canSetHeaders) {
      throw new TypeError(
        'connect: a browser cannot set headers on a WebSocket; use transport "subprotocol" (the default) or "ticket"',
      );
    }
    if (options.token !== undefined && options.token !== null && typeof options.token !== "string") {
      throw new TypeError("connect: token must be a string");
    }
    if (options.ca !== undefined && platform.name === "browser") {
      throw new TypeError("connect: ca is for Node only; a browser verifies certificates against its own trust store");
    }
    this.opts = {
      url: options.url,
      token: options.token ?? null,
      tokenProvider: options.tokenProvider ?? null,
      transport,
      reconnect: options.reconnect ?? true,
      maxRetries: Math.max(0, Math.floor(options.maxRetries ?? 8)),
      openTimeoutMs: options.openTimeoutMs ?? 10_000,
      ca: options.ca,
    };
    if (options.on?.expiring) this.listeners.expiring.add(options.on.expiring);
    if (options.on?.reconnect) this.listeners.reconnect.add(options.on.reconnect);
    if (options.on?.close) this.listeners.close.add(options.on.close);
  }

  /** Add a listener; returns a function that removes it. */
  on(name: "expiring", cb: ExpiringListener): () => void;
  on(name: "reconnect", cb: ReconnectListener): () => void;
  on(name: "close", cb: CloseListener): () => void;
  on(name: "expiring" | "reconnect" | "close", cb: (arg: never) => void): () => void {
    const set = this.listeners[name] as Set<(arg: never) => void> | undefined;
    if (!set) throw new TypeError(`unknown event ${JSON.stringify(name)}: use expiring, reconnect or close`);
    set.add(cb);
    return () => set.delete(cb);
  }

  /** Remove a listener added with `on`. */
  off(name: "expiring" | "reconnect" | "close", cb: (arg: never) => void): void {
    (this.listeners[name] as Set<(arg: never) => void> | undefined)?.delete(cb);
  }

  private emit(name: "expiring", arg: ExpiringInfo): void;
  private emit(name: "reconnect", arg: Welcome): void;
  private emit(name: "close", arg: AgentgateError | null): void;
  private emit(name: "expiring" | "reconnect" | "close", arg: unknown): void {
    for (const cb of [...(this.listeners[name] as Set<(a: unknown) => void>)]) {
      try {
        cb(arg);
      } catch {
        // a listener's exception is its own business
      }
    }
  }

  // ---------------------------------------------------------------- connecting

  /** @internal The first connection: fails at once, without retrying. */
  async _start(sessionId: string | null, lastSeq: number | null): Promise<void> {
    if (sessionId !== null && typeof sessionId !== "string") throw new TypeError("connect: sessionId must be a string");
    if (lastSeq !== null && (!Number.isInteger(lastSeq) || lastSeq < 0)) {
      throw new TypeError("connect: lastSeq must be a non-negative integer");
    }
    await this.attempt(sessionId, lastSeq ?? 0, (w) => {
      this.adoptWelcome(w, sessionId !== null ? (lastSeq ?? 0) : 0, false);
      this.state = "open";
    });
  }

  private scrub(e: unknown): AgentgateError {
    if (!(e instanceof AgentgateError)) {
      return new AgentgateError({ kind: "protocol", message: `unexpected failure: ${e instanceof Error ? e.message : String(e)}` });
    }
    let msg = e.message;
    for (const s of this.secrets) if (s && msg.includes(s)) msg = msg.split(s).join("[redacted]");
    if (msg === e.message) return e;
    return new AgentgateError({
      kind: e.kind,
      code: e.code,
      status: e.status,
      closeCode: e.closeCode,
      requestId: e.requestId,
      retryAfterS: e.retryAfterS,
      message: msg,
    });
  }

  private async getToken(): Promise<string | null> {
    if (this.opts.tokenProvider) {
      let t: unknown;
      try {
        t = await this.opts.tokenProvider();
      } catch (e) {
        throw new AgentgateError({
          kind: "unauthorized",
          message: `the tokenProvider failed: ${e instanceof Error ? e.message : String(e)}; fix the provider so that it returns a valid token`,
        });
      }
      if (typeof t !== "string" || !t) {
        throw new AgentgateError({
          kind: "unauthorized",
          message: "the tokenProvider returned no token (not a non-empty string); return the bearer token as a string",
        });
      }
      this.remember(t);
      return t;
    }
    if (this.opts.token) this.remember(this.opts.token);
    return this.opts.token;
  }

  /** Credentials this connection used lately, kept only to keep them out of error messages. */
  private remember(secret: string): void {
    this.secrets.delete(secret);
    this.secrets.add(secret);
    while (this.secrets.size > 16) {
      const oldest = this.secrets.values().next();
      if (oldest.done) break;
      this.secrets.delete(oldest.value);
    }
  }

  /** One attempt: token, ticket, handshake and welcome, within the open timeout. */
  private attempt(sessionId: string | null, lastSeq: number, onWelcome: (w: Welcome) => void): Promise<Welcome> {
    const link: Link = { sock: null, welcomed: false, dead: false, lastRx: Date.now(), hbTimer: null };
    this.link = link;
    const abort = new AbortController();
    return new Promise<Welcome>((resolve, reject) => {
      let settled = false;
      const settle = (err: AgentgateError | null, welcome?: Welcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          link.dead = true;
          abort.abort();
          link.sock?.terminate();
          reject(this.scrub(err));
        } else {
          resolve(welcome as Welcome);
        }
      };
      const timer = setTimeout(() => {
        settle(networkError(`the connection to ${this.endpoint} did not complete within ${this.opts.openTimeoutMs} ms (ticket, handshake and welcome)`));
      }, this.opts.openTimeoutMs);

      const run = async () => {
        const token = await this.getToken();
        if (settled) return;
        const u = new URL(this.wsUrl.href);
        const protocols: string[] = [];
        const headers: Record<string, string> = {};
        const transport = this.opts.transport;
        let firstFrame: Json | null = null;
        if (transport === "first_message") {
          firstFrame = { type: "auth" };
          if (token !== null) firstFrame["token"] = token;
          if (sessionId !== null) {
            firstFrame["session_id"] = sessionId;
            firstFrame["last_seq"] = lastSeq;
          }
        } else if (sessionId !== null) {
          u.searchParams.set("session_id", sessionId);
          u.searchParams.set("last_seq", String(lastSeq));
        }
        if (transport === "header") {
          if (token !== null) headers["Authorization"] = `Bearer ${token}`;
        } else if (transport === "subprotocol") {
          protocols.push("agentgate.v1");
          if (token !== null) protocols.push(`agentgate.bearer.${token}`);
        } else if (transport === "query") {
          if (token !== null) u.searchParams.set("access_token", token);
        } else if (transport === "ticket") {
          const httpUrl = new URL(this.wsUrl.href);
          httpUrl.protocol = this.wsUrl.protocol === "wss:" ? "https:" : "http:";
          httpUrl.pathname = "/v1/tickets";
          httpUrl.search = "";
          httpUrl.hash = "";
          let ticket: string;
          try {
            ticket = await this.platform.postTicket({
              url: httpUrl.href,
              token,
              ca: this.opts.ca,
              endpoint: this.endpoint,
              signal: abort.signal,
            });
          } catch (e) {
            if (settled) return;
            if (e instanceof AgentgateError && (e as { corsOpaque?: boolean }).corsOpaque) {
              // The browser hid the refusal: ask the WebSocket endpoint, which says.
              settle(await this.probeOrigin(e));
              return;
            }
            throw e;
          }
          this.remember(ticket);
          if (settled) return;
          u.searchParams.set("ticket", ticket);
        }
        if (settled) return;
        const sock = this.platform.open(
          { url: u.href, protocols, headers, ca: this.opts.ca, endpoint: this.endpoint },
          {
            opened: () => {
              if (firstFrame && !settled) sock.send(JSON.stringify(firstFrame));
            },
            message: (text) => {
              link.lastRx = Date.now();
              if (!link.welcomed) {
                let m: Json | null = null;
                try {
                  m = JSON.parse(text) as Json;
                } catch {
                  m = null;
                }
                if (!m || typeof m !== "object" || m["type"] !== "welcome" || typeof m["session_id"] !== "string") {
                  settle(protocolError(`${this.endpoint} sent something other than a welcome first`));
                  return;
                }
                link.welcomed = true;
                settle(null, m as unknown as Welcome);
                // Synchronously, before the replayed events that may follow in the same read.
                onWelcome(m as unknown as Welcome);
                return;
              }
              this.onText(link, text);
            },
            binary: () => {
              if (!link.welcomed) settle(protocolError(`${this.endpoint} sent a binary frame`));
              else this.linkLost(link, protocolError(`${this.endpoint} sent a binary frame`), true);
            },
            closed: (code, reason, detail) => {
              const err =
                code === 1006 || code === 1015
                  ? networkError(
                      `${link.welcomed ? "the connection to" : "cannot connect to"} ${this.endpoint}${
                        detail ? `: ${detail}` : code === 1015 ? ": TLS failed" : ": dropped without a close frame"
                      }`,
                    )
                  : code === 1000 || code === 1005
                    ? link.welcomed
                      ? null
                      : protocolError(`${this.endpoint} closed the connection (${code}) before the welcome`)
                    : closedError(code, reason, this.endpoint);
              if (!link.welcomed) settle(err ?? protocolError(`${this.endpoint} closed before the welcome`));
              else this.linkLost(link, err, false);
            },
            failed: (err) => {
              if (!link.welcomed) settle(err);
              else this.linkLost(link, err, false);
            },
          },
        );
        link.sock = sock;
        if (settled) sock.terminate();
      };
      run().catch((e: unknown) => settle(e instanceof AgentgateError ? e : this.scrub(e)));
    });
  }

  /** In a browser a ticket request refused for the page's origin is opaque; the WebSocket endpoint tells. */
  private probeOrigin(fetchError: AgentgateError): Promise<AgentgateError> {
    return new Promise((resolve) => {
      let done = false;
      const finish = (e: AgentgateError) => {
        if (done) return;
        done = true;
        clearTimeout(t);
        resolve(e);
      };
      const t = setTimeout(() => finish(fetchError), 3000);
      const sock = this.platform.open(
        { url: this.wsUrl.href, protocols: ["agentgate.v1"], headers: {}, ca: undefined, endpoint: this.endpoint },
        {
          opened: () => undefined,
          message: () => undefined,
          binary: () => undefined,
          closed: (code, reason) => {
            const e = closedError(code, reason, this.endpoint);
            finish(e.code === "origin_not_allowed" ? e : fetchError);
          },
          failed: () => finish(fetchError),
        },
      );
      void sock;
    });
  }

  private adoptWelcome(w: Welcome, resumeFrom: number, reconnection: boolean): void {
    const newSession = w.session_id !== this.sessionId;
    this.sessionId = w.session_id;
    this.resumed = w.resumed === true;
    this.resumeError = typeof w.resume_error === "string" ? w.resume_error : null;
    this.principal = w.principal ?? null;
    this.expiresAt = typeof w.expires_at === "number" ? w.expires_at : null;
    if (!this.resumed) {
      this.lastSeq = 0;
    } else if (!reconnection) {
      this.lastSeq = resumeFrom;
    }
    if (reconnection) {
      if (!this.resumed || newSession) {
        const code = this.resumeError ?? "session_not_found";
        const err = protocolError(
          `the gateway no longer holds the session (resume answered ${code}); the connection goes on with the new session ${w.session_id}`,
          code,
        );
        for (const run of this.runs.values()) run._fail(err);
        this.runs.clear();
        this.others.clear();
        this.othersCount = 0;
      } else if (this.resumeError === "history_truncated") {
        const first = typeof w.first_seq === "number" ? ` (replay starts at seq ${w.first_seq}, after ${this.lastSeq})` : "";
        const err = new AgentgateError({
          kind: "history_truncated",
          code: "history_truncated",
          message: `events were lost while the connection to ${this.endpoint} was down${first}; ${
            "read the run's outcome with getRun(runId)"
          }`,
        });
        for (const run of this.runs.values()) run._fail(err);
        this.runs.clear();
        for (const o of this.others.values()) {
          const last = o.events[o.events.length - 1];
          if (!o.error && !(last && TERMINAL.has(last.type))) o.error = err;
        }
      }
    }
    const link = this.link;
    if (link) this.startHeartbeat(link, typeof w.heartbeat_ms === "number" && w.heartbeat_ms > 0 ? w.heartbeat_ms : 25_000);
  }

  /** App-level pings keep a silent link honest: no traffic for two heartbeats is a network failure. */
  private startHeartbeat(link: Link, hbMs: number): void {
    if (link.hbTimer) clearInterval(link.hbTimer);
    const period = Math.max(1000, Math.floor(hbMs / 2));
    link.hbTimer = setInterval(() => {
      if (link.dead) {
        if (link.hbTimer) clearInterval(link.hbTimer);
        return;
      }
      const idle = Date.now() - link.lastRx;
      if (idle > 2 * hbMs + 5000) {
        this.linkLost(link, networkError(`no traffic from ${this.endpoint} for ${Math.round(idle / 1000)} s`), true);
      } else if (idle >= hbMs) {
        link.sock?.send(JSON.stringify({ type: "ping", ref: "heartbeat" }));
      }
    }, period);
    (link.hbTimer as { unref?: () => void }).unref?.();
  }

  // ---------------------------------------------------------------- steady state

  private onText(link: Link, text: string): void {
    if (link !== this.link || link.dead) return;
    let m: Json;
    try {
      const v: unknown = JSON.parse(text);
      if (!v || typeof v !== "object" || Array.isArray(v) || typeof (v as Json)["type"] !== "string") throw new Error("no type");
      m = v as Json;
    } catch {
      this.linkLost(link, protocolError(`${this.endpoint} sent a frame that is not a JSON object with a type`), true);
      return;
    }
    const type = m["type"] as string;
    const ref = typeof m["ref"] === "string" ? m["ref"] : null;
    if (typeof m["seq"] === "number" && typeof m["run_id"] === "string") {
      this.onEvent(toEvent(m));
      return;
    }
    switch (type) {
      case "run.accepted": {
        const p = ref ? this.pending.get(ref) : undefined;
        if (p && p.start && typeof m["run_id"] === "string") {
          this.pending.delete(ref as string);
          const run = new Run(m["run_id"]);
          this.runs.set(run.runId, run);
          p.resolve(run);
        }
        return;
      }
      case "run.state": {
        const p = ref ? this.pending.get(ref) : undefined;
        if (p && p.get) {
          this.pending.delete(ref as string);
          const t = m["terminal"];
          p.resolve({
            runId: typeof m["run_id"] === "string" ? m["run_id"] : "",
            status: String(m["status"]),
            terminal: t && typeof t === "object" ? toEvent(t as Json) : null,
          } satisfies RunState);
        }
        return;
      }
      case "error": {
        const p = ref ? this.pending.get(ref) : undefined;
        if (p) {
          this.pending.delete(ref as string);
          const code = typeof m["code"] === "string" ? m["code"] : "protocol_error";
          p.reject(replyError(p.what, code, typeof m["message"] === "string" ? m["message"] : null));
        }
        return;
      }
      case "auth.expiring": {
        const expiresAt = typeof m["expires_at"] === "number" ? m["expires_at"] : null;
        this.emit("expiring", { expiresAt });
        void this.refresh(link);
        return;
      }
      case "auth.refreshed":
        if (typeof m["expires_at"] === "number") this.expiresAt = m["expires_at"];
        return;
      default:
        return; // pong and messages of later protocol revisions
    }
  }

  private async refresh(link: Link): Promise<void> {
    if (!this.opts.tokenProvider) return;
    let token: string | null;
    try {
      token = await this.getToken();
    } catch {
      return; // the connection ends 4401 token_expired when the credential expires; that is reported
    }
    if (token && link === this.link && !link.dead) link.sock?.send(JSON.stringify({ type: "auth.refresh", token }));
  }

  private onEvent(ev: AgentEvent): void {
    if (!Number.isFinite(ev.seq) || ev.seq <= this.lastSeq) return; // never twice
    this.lastSeq = ev.seq;
    const run = this.runs.get(ev.runId);
    if (run) run._push(ev);
    else this.keepOther(ev);
    if (TERMINAL.has(ev.type)) {
      this.runs.delete(ev.runId);
      for (const [ref, p] of this.pending) {
        if (p.cancelRunId === ev.runId) {
          this.pending.delete(ref);
          if (ev.type === "run_cancelled") p.resolve(undefined);
          else p.reject(replyError(p.what, "run_not_found", `the run ended ${ev.type} before the cancel took effect`));
        }
      }
    }
  }

  /** Keep an event of a run this connection did not start (bounded: the oldest runs go first). */
  private keepOther(ev: AgentEvent): void {
    let o = this.others.get(ev.runId);
    if (!o) {
      o = { events: [], error: null };
      this.others.set(ev.runId, o);
    }
    if (o.error) return;
    o.events.push(ev);
    this.othersCount += 1;
    while (this.othersCount > MAX_OTHER_EVENTS) {
      const oldest = this.others.keys().next();
      if (oldest.done) break;
      this.othersCount -= this.others.get(oldest.value)?.events.length ?? 0;
      this.others.delete(oldest.value);
    }
  }

  /**
   * Follow a run this connection did not start, typically one of a session resumed with
   * `connect({ sessionId, lastSeq })` after a page reload: the returned Run yields the
   * run's events received on this connection (the replay after `lastSeq`) and the ones
   * that follow. It knows nothing of events at or before `lastSeq`; `getRun` tells how
   * a run ended.
   */
  run(runId: string): Run {
    if (typeof runId !== "string" || !runId) throw new TypeError("run: runId must be a non-empty string");
    const known = this.runs.get(runId);
    if (known) return known;
    const run = new Run(runId);
    const o = this.others.get(runId);
    if (o) {
      this.others.delete(runId);
      this.othersCount -= o.events.length;
      for (const ev of o.events) run._push(ev);
      if (o.error) run._fail(o.error);
    }
    if (this.finalError) run._fail(this.finalError);
    else if (this.state === "closed") run._fail(this.closedByCaller());
    const last = o?.events[o.events.length - 1];
    if (!(last && TERMINAL.has(last.type)) && !o?.error && this.state !== "closed") this.runs.set(runId, run);
    return run;
  }

  /** The link ended (after its welcome): reconnect, or fail for good. */
  private linkLost(link: Link, err: AgentgateError | null, terminate: boolean): void {
    if (link.dead || link !== this.link) return;
    link.dead = true;
    if (link.hbTimer) clearInterval(link.hbTimer);
    if (terminate) link.sock?.terminate();
    if (this.state === "closed") {
      this.notifyClosed();
      return;
    }
    const error = this.scrub(err ?? protocolError(`${this.endpoint} closed the connection (1000) unexpectedly`));
    // Requests already sent get the drop's error: a reply is not replayed, a request is never sent twice.
    for (const [ref, p] of this.pending) {
      this.pending.delete(ref);
      p.reject(error);
    }
    const reconnectable =
      this.opts.reconnect &&
      this.opts.maxRetries > 0 &&
      (error.kind === "network" || error.closeCode === 1012 || error.closeCode === 1013);
    if (!reconnectable) {
      this.fail(error);
      return;
    }
    this.state = "reconnecting";
    void this.reconnectLoop(error);
  }

  private async reconnectLoop(first: AgentgateError): Promise<void> {
    let last = first;
    for (let attempt = 1; attempt <= this.opts.maxRetries; attempt++) {
      const delay = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1));
      await sleep(delay);
      if (this.isClosed()) return;
      try {
        await this.attempt(this.sessionId, this.lastSeq, (w) => {
          if (this.isClosed()) {
            this.link?.sock?.close(1000);
            return;
          }
          this.adoptWelcome(w, this.lastSeq, true);
          this.state = "open";
          this.emit("reconnect", w);
          this.flushQueue();
        });
        return;
      } catch (e) {
        if (this.isClosed()) return;
        last = this.scrub(e);
        if (!last.retryable) {
          this.fail(last);
          return;
        }
      }
    }
    this.fail(last);
  }

  /** Closed for good with an error: raised in every open run, pending and later request. */
  private fail(err: AgentgateError): void {
    if (this.isClosed()) return;
    this.state = "closed";
    this.finalError = err;
    if (this.link) {
      this.link.dead = true;
      if (this.link.hbTimer) clearInterval(this.link.hbTimer);
      this.link.sock?.terminate();
    }
    for (const [ref, p] of this.pending) {
      this.pending.delete(ref);
      p.reject(err);
    }
    for (const q of this.queue) q.pending.reject(err);
    this.queue = [];
    for (const run of this.runs.values()) run._fail(err);
    this.runs.clear();
    if (!this.closeNotified) {
      this.closeNotified = true;
      this.emit("close", err);
    }
    this.notifyClosed();
  }

  private isClosed(): boolean {
    return this.state === "closed";
  }

  private notifyClosed(): void {
    const w = this.closedWaiters;
    this.closedWaiters = [];
    for (const f of w) f();
  }

  // ---------------------------------------------------------------- requests

  private request(frame: Json, pending: Omit<Pending, "resolve" | "reject">): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const p: Pending = { ...pending, resolve, reject };
      if (this.finalError) {
        reject(this.finalError);
        return;
      }
      if (this.state === "closed") {
        reject(this.closedByCaller());
        return;
      }
      if (this.state === "open") this.sendRequest(frame, p);
      else this.queue.push({ frame, pending: p });
    });
  }

  private sendRequest(frame: Json, p: Pending): void {
    const ref = `c${++this.nextRef}`;
    this.pending.set(ref, p);
    this.link?.sock?.send(JSON.stringify({ ...frame, ref }));
  }

  private flushQueue(): void {
    const q = this.queue;
    this.queue = [];
    for (const item of q) this.sendRequest(item.frame, item.pending);
  }

  private closedByCaller(): AgentgateError {
    return new AgentgateError({
      kind: "network",
      message: "the connection was closed by close(); connect again (with sessionId and lastSeq to resume the session)",
    });
  }

  /** Start a run of `agent`; rejects with kind forbidden (scope_missing), unavailable (too_many_runs) or request. */
  async startRun(agent: string, input: Record<string, unknown> = {}): Promise<Run> {
    if (typeof agent !== "string" || !agent) throw new TypeError("startRun: agent must be a non-empty string");
    return (await this.request({ type: "run.start", agent, input }, { what: `run.start of agent ${JSON.stringify(agent)}`, start: true })) as Run;
  }

  /** Cancel a run; completes when its run_cancelled event arrives (kind request, run_not_found, for an unknown or finished run). */
  async cancelRun(runId: string): Promise<void> {
    if (typeof runId !== "string" || !runId) throw new TypeError("cancelRun: runId must be a non-empty string");
    await this.request({ type: "run.cancel", run_id: runId }, { what: `run.cancel of ${runId}`, cancelRunId: runId });
  }

  /** The state of a run: `{ runId, status, terminal }`. */
  async getRun(runId: string): Promise<RunState> {
    if (typeof runId !== "string" || !runId) throw new TypeError("getRun: runId must be a non-empty string");
    return (await this.request({ type: "run.get", run_id: runId }, { what: `run.get of ${runId}`, get: true })) as RunState;
  }

  /** Close the connection (1000). Open runs and pending requests reject; `close` listeners get null. */
  async close(): Promise<void> {
    if (this.isClosed()) return;
    this.state = "closed";
    const err = this.closedByCaller();
    for (const [ref, p] of this.pending) {
      this.pending.delete(ref);
      p.reject(err);
    }
    for (const q of this.queue) q.pending.reject(err);
    this.queue = [];
    for (const run of this.runs.values()) run._fail(err);
    this.runs.clear();
    const link = this.link;
    if (!this.closeNotified) {
      this.closeNotified = true;
      this.emit("close", null);
    }
    if (link && !link.dead && link.sock) {
      if (link.hbTimer) clearInterval(link.hbTimer);
      const closed = new Promise<void>((resolve) => this.closedWaiters.push(resolve));
      link.sock.close(1000);
      await Promise.race([closed, sleep(2000)]);
      link.dead = true;
      link.sock.terminate();
    }
  }
}

/** Connect, get the welcome, and return the connection; rejects at once (no retry) if that fails. */
export async function connectWith(platform: Platform, options: ConnectOptions, defaultTransport: Transport): Promise<Connection> {
  const conn = new Connection(platform, options, defaultTransport);
  await conn._start(options.sessionId ?? null, options.lastSeq ?? null);
  return conn;
}
