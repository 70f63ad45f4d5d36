import { describe, expect, it } from "vitest";
import { StopStringMatcher } from "../../src/frontend/stop_strings.ts";

function feed(stops: string[], pieces: string[]): { shown: string; stopped: boolean; flushed: string } {
  const matcher = new StopStringMatcher(stops);
  let shown = "";
  for (const piece of pieces) {
    const check = matcher.push(piece);
    shown += check.text;
    if (check.stopped) return { shown, stopped: true, flushed: "" };
  }
  return { shown, stopped: false, flushed: matcher.flush() };
}

describe("StopStringMatcher", () => {
  it("stops at a stop string that spans pieces and shows only the text before it", () => {
    expect(feed(["world"], ["Hello wo", "r", "ld and more"])).toEqual({ shown: "Hello ", stopped: true, flushed: "" });
  });

  it("holds back a possible start of a stop string until it is ruled out", () => {
    const matcher = new StopStringMatcher(["world"]);
    expect(matcher.push("Hello wor")).toEqual({ text: "Hello ", stopped: false });
    expect(matcher.push("k")).toEqual({ text: "work", stopped: false });
  });

  it("releases held text at the end when no stop string matched", () => {
    expect(feed(["END"], ["the E", "N"])).toEqual({ shown: "the ", stopped: false, flushed: "EN" });
  });

  it("stops at the earliest of several stop strings", () => {
    expect(feed(["bb", "a"], ["xxbba"]).shown).toBe("xx");
  });

  it("ignores empty stop strings", () => {
    expect(feed([""], ["abc"])).toEqual({ shown: "abc", stopped: false, flushed: "" });
  });
});
