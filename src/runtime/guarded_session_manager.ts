/**
 * The HTTP/2 session manager our Connect clients use: connect-node's own, made unable to crash
 * the process or to hang a call when a server shuts down.
 *
 * connect-node (2.1) destroys a connection that receives GOAWAY while none of its streams is open,
 * with an error that Node raises on the session only once the socket has closed. If a new request
 * has moved the manager to a fresh connection by then, the manager no longer listens to the old
 * one and the error becomes an uncaught exception (connectrpc/connect-es#1768, open): a frontend
 * would die because a worker drained. Each session a stream is opened on gets one more listener
 * that takes such late errors; what the manager does with errors is unchanged.
 *
 * connect-node (2.1) also waits for ever for the response of a stream that closes with no error
 * code before any response arrives (an RST_STREAM with NO_ERROR): it maps NO_ERROR and
 * STREAM_CLOSED to no error, and only a response or an error ends the wait. Such a stream now
 * fails with `unavailable`, which the router retries on another worker. (The rare failure of the
 * SIGTERM-under-load test, test/runtime/distributed.test.ts, was a request routed to the draining
 * worker that got no answer and no error for 40 s; this fits it, but it was not caught in the act.)
 */
import http2 from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { Http2SessionManager } from "@connectrpc/connect-node";

const guarded = new WeakSet<http2.ClientHttp2Session>();

/** The listener every session gets; exported so that a test can see it is there. */
export function ignoreLateSessionError(): void {
  // Streams and the manager saw this connection fail already; nothing is left to tell.
}

/** Codes connect-node turns into no error (node-error.ts, connectErrorFromH2ResetCode). */
const UNMAPPED_CLOSE_CODES = new Set([http2.constants.NGHTTP2_NO_ERROR, http2.constants.NGHTTP2_STREAM_CLOSED]);

function failIfClosedBeforeResponse(stream: http2.ClientHttp2Stream): void {
  let responded = false;
  stream.once("response", () => {
    responded = true;
  });
  stream.once("close", () => {
    // Any other close code has failed the call already.
    if (responded || !UNMAPPED_CLOSE_CODES.has(stream.rstCode)) return;
    // connect-node listens for "error" on the stream for as long as it waits for the response.
    const err = new ConnectError(`http/2 stream closed before a response (code ${stream.rstCode})`, Code.Unavailable);
    if (stream.listenerCount("error") > 0) stream.emit("error", err);
  });
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
    failIfClosedBeforeResponse(stream);
    return stream;
  }
}
