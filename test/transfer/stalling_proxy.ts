/**
 * A TCP proxy between a reading agent and the agent it reads from, for the failures a real
 * peer does not produce on demand: it forwards everything toward the target, but only the
 * first `forwardBytes` of the target's answers; the rest it holds back, as a peer that has
 * hung would. Closing either side closes the other, as the kernel would for a real peer.
 * The target advertises the proxy's port (advertisePort), so readers connect through it.
 */
import { once } from "node:events";
import { createConnection, createServer, type Server, type Socket } from "node:net";

export class StallingProxy {
  readonly port: number;
  /** Answer bytes forwarded per connection; raise it to let a new connection through. */
  forwardBytes: number;
  /** Resolves once `forwardBytes` answer bytes have passed and the proxy holds the rest. */
  readonly stalled: Promise<void>;
  #server: Server;
  #sockets = new Set<Socket>();

  private constructor(server: Server, port: number, stalled: Promise<void>, forwardBytes: number) {
    this.#server = server;
    this.forwardBytes = forwardBytes;
    this.port = port;
    this.stalled = stalled;
  }

  static async start(opts: { targetPort: () => number; forwardBytes: number }): Promise<StallingProxy> {
    let onStall!: () => void;
    const stalled = new Promise<void>((resolve) => (onStall = resolve));
    const sockets = new Set<Socket>();
    let proxy: StallingProxy | undefined;
    const server = createServer((client) => {
      const target = createConnection({ host: "127.0.0.1", port: opts.targetPort() });
      sockets.add(client).add(target);
      let forwarded = 0;
      client.on("data", (chunk) => target.write(chunk));
      target.on("data", (chunk: Buffer) => {
        // Read live: a test that lifts the limit also frees connections made before it did.
        const pass = Math.max(0, Math.min(chunk.length, proxy!.forwardBytes - forwarded));
        if (pass > 0) client.write(chunk.subarray(0, pass));
        forwarded += pass;
        if (pass < chunk.length) onStall();
      });
      const closeBoth = () => {
        client.destroy();
        target.destroy();
      };
      for (const s of [client, target]) {
        s.on("close", closeBoth);
        s.on("error", closeBoth);
        s.on("end", closeBoth);
      }
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const address = server.address();
    if (address === null || typeof address === "string") throw new Error("the proxy has no TCP port");
    proxy = new StallingProxy(server, address.port, stalled, opts.forwardBytes);
    proxy.#sockets = sockets;
    return proxy;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
