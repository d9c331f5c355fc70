// What the client core needs from its environment: a WebSocket and one HTTP POST (the
// ticket request). Node implements it with the `ws` package and node:http(s), a browser
// with its own WebSocket and fetch.

import type { AgentgateError } from "./errors.js";

/** PEM certificate(s) that verify a `wss://` gateway (Node only). */
export type CA = string | Uint8Array | Array<string | Uint8Array>;

/** Callbacks of one socket. After `closed` or `failed` none is called again. */
export interface SocketHandlers {
  /** The handshake completed. */
  opened(): void;
  /** A text frame. */
  message(text: string): void;
  /** A binary frame (not part of the protocol). */
  binary(): void;
  /** The socket closed; `code` 1006 means without a close frame. `detail` says why, when known. */
  closed(code: number, reason: string, detail: string | null): void;
  /** The handshake was refused with an HTTP response, or the socket failed with a known error. */
  failed(error: AgentgateError): void;
}

export interface Sock {
  send(text: string): void;
  /** Close with a close frame. */
  close(code: number): void;
  /** Drop at once; no callback follows. */
  terminate(): void;
}

export interface OpenRequest {
  url: string;
  protocols: string[];
  headers: Record<string, string>;
  ca: CA | undefined;
  endpoint: string;
}

export interface TicketRequest {
  url: string;
  token: string | null;
  ca: CA | undefined;
  endpoint: string;
  /** Aborted when the attempt's open timeout passes. */
  signal: AbortSignal;
}

export interface Platform {
  readonly name: "node" | "browser";
  /** Whether request headers can be set on the WebSocket handshake. */
  readonly canSetHeaders: boolean;
  open(req: OpenRequest, h: SocketHandlers): Sock;
  /** POST /v1/tickets; resolves with the ticket, rejects with an AgentgateError. */
  postTicket(req: TicketRequest): Promise<string>;
}
