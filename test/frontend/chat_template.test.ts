import { describe, expect, it } from "vitest";
import { renderChatPrompt } from "../../src/frontend/chat_template.ts";
import { ApiError } from "../../src/frontend/errors.ts";
import { tokenizerFor } from "../../src/frontend/tokenizer.ts";
import { QWEN3_DIR } from "./fake_router.ts";

const tokenizer = tokenizerFor(QWEN3_DIR);

describe("chat template", () => {
  it("renders a Qwen3 conversation with <|im_start|> markers and the generation prompt", () => {
    const prompt = renderChatPrompt(tokenizer, "m", [
      { role: "system", content: "Be brief." },
      { role: "user", content: [{ type: "text", text: "Hello" }] },
    ]);
    expect(prompt).toBe("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
  });

  it("passes chat_template_kwargs to the template", () => {
    const prompt = renderChatPrompt(tokenizer, "m", [{ role: "user", content: "Hi" }], { enable_thinking: false });
    expect(prompt.endsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n")).toBe(true);
  });

  it("encodes the special markers as single special tokens", () => {
    const prompt = renderChatPrompt(tokenizer, "m", [{ role: "user", content: "Hi" }]);
    const ids = tokenizer.encode(prompt, false);
    expect(ids[0]).toBe(tokenizer.tokenId("<|im_start|>"));
    expect(ids).toContain(tokenizer.tokenId("<|im_end|>"));
  });

  it("refuses with a 400 when the model has no chat template", () => {
    const noTemplate = Object.create(tokenizer, { chatTemplate: { value: undefined } });
    const err = (() => {
      try {
        renderChatPrompt(noTemplate, "plain-model", [{ role: "user", content: "Hi" }]);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).status).toBe(400);
    expect((err as ApiError).message).toContain("no chat template");
  });
});
