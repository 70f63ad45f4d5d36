/** Builds the WorkerSelector for --router-mode. */
import { KvSelector, type KvSelectorOptions } from "./kv/kv_selector.ts";
import { RandomSelector, RoundRobinSelector, type WorkerSelector } from "./worker_selector.ts";

export type RouterMode = "round-robin" | "random" | "kv";

export function createSelector(mode: RouterMode, kvOptions: KvSelectorOptions = {}): WorkerSelector {
  switch (mode) {
    case "round-robin":
      return new RoundRobinSelector();
    case "random":
      return new RandomSelector();
    case "kv":
      return new KvSelector(kvOptions);
  }
}
