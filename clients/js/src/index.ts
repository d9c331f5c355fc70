// @agentgate/client for Node (>= 20): the `ws` package, so that headers and `ca` work.
// Default transport: "header".

import { connectWith } from "./client.js";
import type { Connection, ConnectOptions } from "./client.js";
import { nodePlatform } from "./node.js";

export { AgentgateError } from "./errors.js";
export type { ErrorKind } from "./errors.js";
export { Connection, Run } from "./client.js";
export type {
  AgentEvent,
  CloseListener,
  ConnectOptions,
  ExpiringInfo,
  ExpiringListener,
  Listeners,
  ReconnectListener,
  RunState,
  Transport,
  Welcome,
} from "./client.js";
export type { CA } from "./platform.js";

/** Connect to the gateway; rejects at once (no retry) when the first connection fails. */
export function connect(options: ConnectOptions): Promise<Connection> {
  return connectWith(nodePlatform, options, "header");
}
