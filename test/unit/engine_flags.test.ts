/** The engine flags the worker and serve commands share: parsing, and flags given to the wrong engine. */
import { describe, expect, it } from "vitest";
import { checkEngineFlags, ENGINE_OPTIONS, EngineFlagsSchema, parseCommand, UsageError } from "../../src/cli/args.ts";

const parse = (argv: string[]) => {
  const flags = parseCommand(argv, ENGINE_OPTIONS, EngineFlagsSchema);
  checkEngineFlags(flags);
  return flags;
};

describe("engine flags", () => {
  it("takes --dtype auto, bfloat16 or float16 for the native engine, and leaves it unset by default", () => {
    expect(parse([]).dtype).toBeUndefined();
    for (const dtype of ["auto", "bfloat16", "float16"]) expect(parse(["--dtype", dtype]).dtype).toBe(dtype);
  });

  it("refuses another --dtype, and --dtype for the mocker, with a usage error that says why", () => {
    expect(() => parse(["--dtype", "fp8"])).toThrow(UsageError);
    expect(() => parse(["--dtype", "fp8"])).toThrow(/--dtype: .*"auto"\|"bfloat16"\|"float16"/);
    expect(() => parse(["--engine", "mocker", "--dtype", "float16"])).toThrow(/--dtype applies to the native engine only; add --engine native/);
  });
});
