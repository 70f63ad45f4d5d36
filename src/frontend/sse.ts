/**
 * Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, `data: [DONE]\n\n`
 * at the end, an error as `data: {"error":{...}}\n\n`. `send` reports backpressure the way
 * Writable.write does, so a producer awaits `drained()` only when the socket is full, with no
 * promise per chunk on the fast path.
 */
import type { ServerResponse } from "node:http";
import type { ApiError } from "./errors.ts";

export class SseWriter {
  constructor(private readonly res: ServerResponse) {}

  open(requestId: string): void {
    this.res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
      "x-request-id": requestId,
    });
  }

  /** True while the client is still there to read. */
  get writable(): boolean {
    return !this.res.destroyed && !this.res.writableEnded;
  }

  /** Writes one event whose payload is already JSON; false means wait for `drained()`. */
  send(json: string): boolean {
    if (!this.writable) return true;
    return this.res.write(`data: ${json}\n\n`);
  }

  /** Resolves when the socket can take more, or when it closed (then `writable` is false). */
  drained(): Promise<void> {
    const res = this.res;
    if (!this.writable || !res.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        res.off("drain", done);
        res.off("close", done);
        resolve();
      };
      res.on("drain", done);
      res.on("close", done);
    });
  }

  /** Sends the error event, then ends the stream (no [DONE]: the stream failed). */
  fail(err: ApiError): void {
    if (!this.writable) return;
    this.res.end(`data: ${err.toJson()}\n\n`);
  }

  done(): void {
    if (!this.writable) return;
    this.res.end("data: [DONE]\n\n");
  }
}
