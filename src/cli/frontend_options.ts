/** Flags shared by `switchyard frontend` and `switchyard serve` for the HTTP side and routing. */
import { z } from "zod";
import { intFlag } from "./args.ts";

export const ROUTER_OPTIONS = {
  "router-mode": { type: "string" },
  "migration-limit": { type: "string" },
} as const;

export const RouterFlagsSchema = z.object({
  "router-mode": z.enum(["round-robin", "random", "kv"]).default("round-robin"),
  "migration-limit": intFlag(0, 100).default(0),
});
