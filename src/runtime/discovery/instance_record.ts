/**
 * What a worker publishes about itself in the discovery bucket, and the bucket's conventions.
 * The record is JSON so that operators can read it with the `nats` CLI.
 */
import { z } from "zod";

export const INSTANCES_BUCKET = "switchyard_instances";

export const InstanceRecordSchema = z.object({
  id: z.string().min(1),
  /** Connect/gRPC base URL of the worker. */
  address: z.string().url(),
  /** Served model name. */
  model: z.string().min(1),
  mode: z.enum(["agg", "prefill", "decode"]),
  engine: z.string(),
  /** The model card: what a frontend needs to serve this model. */
  card: z.object({
    /** Model folder holding tokenizer.json and tokenizer_config.json, as seen by the worker's host. */
    path: z.string(),
    maxModelLen: z.number().int().positive(),
    blockSize: z.number().int().positive(),
  }),
  /** Milliseconds since the epoch when the worker last renewed the record. */
  renewedAtMs: z.number(),
});

export type InstanceRecord = z.infer<typeof InstanceRecordSchema>;

/** KV keys allow [-/_=.a-zA-Z0-9]; worker ids are chosen by users, so keep only those. */
export function instanceKey(id: string): string {
  return `instances.${id.replace(/[^-/_=a-zA-Z0-9]/g, "_")}`;
}
