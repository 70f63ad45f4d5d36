/**
 * One NATS connection per process, reconnecting forever: a NATS restart must never take a
 * worker or frontend down, only pause discovery until the server is back.
 */
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "../logger.ts";

export async function connectNats(url: string, name: string, log: Logger): Promise<NatsConnection> {
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 250, waitOnFirstConnect: false, timeout: 5000 });
  } catch (err) {
    throw new Error(`cannot reach NATS at ${url}`, { cause: err });
  }
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") log.warn(`NATS disconnected from ${url}; reconnecting`);
      else if (status.type === "reconnect") log.info(`NATS reconnected to ${url}`);
    }
  })();
  return nc;
}
