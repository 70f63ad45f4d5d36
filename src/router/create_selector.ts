/** Builds the WorkerSelector for --router-mode. */
import { RandomSelector, RoundRobinSelector, type WorkerSelector } from "./worker_selector.ts";

export type RouterMode = "round-robin" | "random" | "kv";

export function createSelector(mode: RouterMode): WorkerSelector {
  switch (mode) {
    case "round-robin":
      return new RoundRobinSelector();
    case "random":
      return new RandomSelector();
    case "kv":
      throw new Error("--router-mode kv is not available yet");
  }
}
