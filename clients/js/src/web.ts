// The browser platform: the page's own WebSocket and fetch. A page cannot see the HTTP
// status of a refused handshake; the gateway (failure_mode "auto") upgrades and closes
// at once with the close code and a `{"code":...}` reason instead, which the core reads.

import { networkError, protocolError, rejectedError } from "./errors.js";
import type { OpenRequest, Platform, SocketHandlers, Sock, TicketRequest } from "./platform.js";

export const webPlatform: Platform = {
  name: "browser",
  canSetHeaders: false,

  open(req: OpenRequest, h: SocketHandlers): Sock {
    const WS = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (!WS) throw new TypeError("this environment has no WebSocket: use the Node build of @agentgate/client");
    let done = false;
    let errored = false;
    const ws = req.protocols.length ? new WS(req.url, req.protocols) : new WS(req.url);
    ws.onerror = () => {
      errored = true;
    };
    ws.onopen = () => {
      if (!done) h.opened();
    };
    ws.onmessage = (e: MessageEvent) => {
      if (done) return;
      if (typeof e.data === "string") h.message(e.data);
      else h.binary();
    };
    ws.onclose = (e: CloseEvent) => {
      if (done) return;
      done = true;
      h.closed(
        e.code,
        e.reason,
        errored
          ? "the browser reported a WebSocket error (it does not say which: refused, unreachable, TLS, or a handshake refused with an HTTP status)"
          : null,
      );
    };
    return {
      send(text: string) {
        if (ws.readyState === 1) ws.send(text);
      },
      close(code: number) {
        try {
          ws.close(code);
        } catch {
          ws.close();
        }
      },
      terminate() {
        done = true;
        try {
          ws.close();
        } catch {
          // already closed
        }
      },
    };
  },

  async postTicket(req: TicketRequest): Promise<string> {
    const headers: Record<string, string> = {};
    if (req.token !== null) headers["Authorization"] = `Bearer ${req.token}`;
    let resp: Response;
    try {
      resp = await fetch(req.url, { method: "POST", headers, signal: req.signal, credentials: "omit" });
    } catch (e) {
      const err = networkError(
        `cannot get a ticket from ${req.endpoint}: ${e instanceof Error ? e.message : String(e)} (the browser hides why: the gateway is unreachable, or it refused this page's origin, which then needs to be on server.allowed_origins)`,
      );
      (err as { corsOpaque?: boolean }).corsOpaque = true;
      throw err;
    }
    const body = await resp.text().catch(() => "");
    if (resp.status === 201 || resp.status === 200) {
      let ticket: unknown = null;
      try {
        ticket = (JSON.parse(body) as { ticket?: unknown }).ticket;
      } catch {
        ticket = null;
      }
      if (typeof ticket === "string" && ticket) return ticket;
      throw protocolError(`the ticket reply of ${req.endpoint} (HTTP ${resp.status}) holds no ticket`);
    }
    throw rejectedError(resp.status, body, (n) => resp.headers.get(n), req.endpoint, "the ticket request");
  },
};
