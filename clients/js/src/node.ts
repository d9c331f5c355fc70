// The Node platform: the `ws` package (so that headers and `ca` work) and node:http(s)
// for the ticket request. A refused handshake arrives as `unexpected-response`: its
// status and JSON body are read so that the error carries the gateway's reason code.

import * as http from "node:http";
import * as https from "node:https";
import WebSocket from "ws";
import { networkError, protocolError, rejectedError } from "./errors.js";
import type { OpenRequest, Platform, SocketHandlers, Sock, TicketRequest } from "./platform.js";

const MAX_BODY = 64 * 1024;

function headerOf(headers: http.IncomingHttpHeaders): (name: string) => string | null {
  return (name) => {
    const v = headers[name.toLowerCase()];
    if (Array.isArray(v)) return v[0] ?? null;
    return v ?? null;
  };
}

/** A Node error's text without anything from the URL path or query. */
function describe(e: unknown): string {
  if (e && typeof e === "object") {
    const err = e as { code?: unknown; message?: unknown };
    const msg = typeof err.message === "string" ? err.message : String(e);
    return typeof err.code === "string" && !msg.includes(err.code) ? `${msg} (${err.code})` : msg;
  }
  return String(e);
}

function readBody(res: http.IncomingMessage, done: (body: string) => void): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    done(Buffer.concat(chunks).toString("utf8"));
  };
  res.on("data", (c: Buffer) => {
    if (size < MAX_BODY) {
      chunks.push(c);
      size += c.length;
    }
  });
  res.on("end", finish);
  res.on("error", finish);
  res.on("close", finish);
}

export const nodePlatform: Platform = {
  name: "node",
  canSetHeaders: true,

  open(req: OpenRequest, h: SocketHandlers): Sock {
    let done = false;
    let lastError: string | null = null;
    const finish = (f: () => void) => {
      if (done) return;
      done = true;
      f();
    };
    const ws = new WebSocket(req.url, req.protocols.length ? req.protocols : undefined, {
      headers: req.headers,
      ca: req.ca as https.RequestOptions["ca"],
      perMessageDeflate: false,
      followRedirects: false,
      maxPayload: 64 * 1024 * 1024,
    });
    ws.on("error", (e) => {
      lastError = describe(e);
    });
    ws.on("unexpected-response", (request, res) => {
      const status = res.statusCode ?? 0;
      readBody(res, (body) => {
        finish(() =>
          h.failed(rejectedError(status, body, headerOf(res.headers), req.endpoint, "the WebSocket handshake")),
        );
        request.destroy();
        ws.terminate();
      });
    });
    ws.on("open", () => {
      if (!done) h.opened();
    });
    ws.on("message", (data, isBinary) => {
      if (done) return;
      if (isBinary) {
        h.binary();
        return;
      }
      const text = Array.isArray(data) ? Buffer.concat(data).toString("utf8") : Buffer.from(data as ArrayBuffer).toString("utf8");
      h.message(text);
    });
    ws.on("close", (code, reason) => {
      finish(() => h.closed(code, reason.toString("utf8"), lastError));
    });
    return {
      send(text: string) {
        if (ws.readyState === WebSocket.OPEN) ws.send(text);
      },
      close(code: number) {
        try {
          if (ws.readyState === WebSocket.OPEN) ws.close(code);
          else ws.terminate();
        } catch {
          ws.terminate();
        }
      },
      terminate() {
        done = true;
        ws.terminate();
      },
    };
  },

  postTicket(req: TicketRequest): Promise<string> {
    return new Promise((resolve, reject) => {
      const u = new URL(req.url);
      const lib = u.protocol === "https:" ? https : http;
      const headers: Record<string, string> = { "Content-Length": "0" };
      if (req.token !== null) headers["Authorization"] = `Bearer ${req.token}`;
      const r = lib.request(
        u,
        { method: "POST", headers, ca: req.ca as https.RequestOptions["ca"], signal: req.signal },
        (res) => {
          const status = res.statusCode ?? 0;
          readBody(res, (body) => {
            if (status === 201 || status === 200) {
              let ticket: unknown = null;
              try {
                ticket = (JSON.parse(body) as { ticket?: unknown }).ticket;
              } catch {
                ticket = null;
              }
              if (typeof ticket === "string" && ticket) resolve(ticket);
              else reject(protocolError(`the ticket reply of ${req.endpoint} (HTTP ${status}) holds no ticket`));
            } else {
              reject(rejectedError(status, body, headerOf(res.headers), req.endpoint, "the ticket request"));
            }
          });
        },
      );
      r.on("error", (e) => reject(networkError(`cannot get a ticket from ${req.endpoint}: ${describe(e)}`)));
      r.end();
    });
  },
};
