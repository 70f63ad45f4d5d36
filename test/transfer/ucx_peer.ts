/**
 * A prefill agent in a process of its own, reading over UCX, for the failures only a process
 * gives: stopped (SIGSTOP) it answers nothing, killed (SIGKILL) the kernel resets its
 * connections. Started by `startUcxPeer` (ucx.test.ts) through fork(); once its memory is
 * registered it sends {metadata, region} over the IPC channel, then waits to be killed.
 *
 *   node --import tsx test/transfer/ucx_peer.ts <bytes> <seed>
 */
import { TransferAgent } from "../../src/transfer/transfer_agent.ts";
import { patterned } from "./patterned.ts";

const bytes = Number(process.argv[2]);
const seed = Number(process.argv[3]);
const agent = TransferAgent.create({ name: "prefill", backends: ["ucx", "tcp"], ucxTransports: "tcp" });
const source = patterned(bytes, seed);
const region = agent.registerMemory(source);
process.send!({ metadata: agent.metadata().toString("base64"), region: region.id });
// The IPC channel keeps this process alive; the parent going away ends it.
process.on("disconnect", () => {
  void agent.close().then(() => process.exit(0));
});
