import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..", "..");
const buf = join(root, "node_modules", ".bin", "buf");

function listFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? listFiles(path) : [path];
  });
}

describe("contracts", () => {
  const scratch = mkdtempSync(join(tmpdir(), "switchyard-gen-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it("pass buf lint", () => {
    expect(() => execFileSync(buf, ["lint"], { cwd: root, stdio: "pipe" })).not.toThrow();
  });

  it("gen/ is exactly what buf generate produces from proto/", () => {
    cpSync(join(root, "proto"), join(scratch, "proto"), { recursive: true });
    cpSync(join(root, "buf.yaml"), join(scratch, "buf.yaml"));
    // Same plugin, output into the scratch copy.
    const template = readFileSync(join(root, "buf.gen.yaml"), "utf8").replace(
      "local: protoc-gen-es",
      `local: ${join(root, "node_modules", ".bin", "protoc-gen-es")}`,
    );
    writeFileSync(join(scratch, "buf.gen.yaml"), template);
    execFileSync(buf, ["generate"], { cwd: scratch, stdio: "pipe" });
    const fresh = listFiles(join(scratch, "gen")).map((f) => relative(join(scratch, "gen"), f)).sort();
    const committed = listFiles(join(root, "gen")).map((f) => relative(join(root, "gen"), f)).sort();
    expect(committed).toEqual(fresh);
    for (const file of fresh) {
      expect(readFileSync(join(root, "gen", file), "utf8"), `gen/${file} is stale: run npm run generate`).toBe(
        readFileSync(join(scratch, "gen", file), "utf8"),
      );
    }
  });
});
