/**
 * The HTTP/2 session manager our Connect clients use: connect-node's own, made unable to crash
 * the process when a server shuts down gracefully.
 *
 * connect-node (2.1) destroys a connection that receives GOAWAY while none of its streams is open,
 * with an error that Node raises on the session only once the socket has closed. If a new request
 * has moved the manager to a fresh connection by then, the manager no longer listens to the old
 * one and the error becomes an uncaught exception (connectrpc/connect-es#1768, open): a frontend
 * would die because a worker drained. Each session a stream is opened on gets one more listener
 * that takes such late errors; what the manager does with errors is unchanged.
 */
import type http2 from "node:http2";
import { Http2SessionManager } from "@connectrpc/connect-node";

const guarded = new WeakSet<http2.ClientHttp2Session>();

/** The listener every session gets; exported so that a test can see it is there. */
export function ignoreLateSessionError(): void {
  // Streams and the manager saw this connection fail already; nothing is left to tell.
}

function swallowLateErrors(session: http2.ClientHttp2Session | undefined): void {
  if (!session || guarded.has(session)) return;
  guarded.add(session);
  session.on("error", ignoreLateSessionError);
}

export class GuardedHttp2SessionManager extends Http2SessionManager {
  override async request(
    method: string,
    path: string,
    headers: http2.OutgoingHttpHeaders,
    options: Omit<http2.ClientSessionRequestOptions, "signal">,
  ): Promise<http2.ClientHttp2Stream> {
    const stream = await super.request(method, path, headers, options);
    swallowLateErrors(stream.session as http2.ClientHttp2Session | undefined);
    return stream;
  }
}
