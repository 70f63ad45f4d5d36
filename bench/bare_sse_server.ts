/**
 * The baseline for bench/frontend_overhead.ts: a bare Node HTTP server that streams the same
 * OpenAI completion chunks as Switchyard would, one per event-loop turn, with no tokenizer,
 * router or worker behind it: one token per event, always. With `stream_options.include_usage`
 * it ends with a usage chunk, as OpenAI (and Switchyard) do. Prints its URL on stdout.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";

const server = http.createServer((req, res) => {
  let body = "";
  req.setEncoding("utf8");
  req.on("data", (d: string) => (body += d));
  req.on("end", () => {
    const { model, max_tokens: maxTokens = 16, stream_options: streamOptions } = JSON.parse(body) as {
      model: string;
      max_tokens?: number;
      stream_options?: { include_usage?: boolean };
    };
    const includeUsage = streamOptions?.include_usage ?? false;
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
    const id = `cmpl-${Math.random().toString(36).slice(2)}`;
    const created = Math.floor(Date.now() / 1000);
    let sent = 0;
    const tick = () => {
      if (res.destroyed) return;
      const last = sent === maxTokens - 1;
      const usageMember = includeUsage ? `,"usage":null` : "";
      res.write(`data: {"id":"${id}","object":"text_completion","created":${created},"model":"${model}","choices":[{"index":0,"text":" tok${sent}","logprobs":null,"finish_reason":${last ? '"length"' : "null"}}]${usageMember}}\n\n`);
      if (++sent < maxTokens) {
        setImmediate(tick);
        return;
      }
      if (includeUsage) {
        const usage = { prompt_tokens: 16, completion_tokens: maxTokens, total_tokens: 16 + maxTokens, prompt_tokens_details: { cached_tokens: 0 } };
        res.write(`data: ${JSON.stringify({ id, object: "text_completion", created, model, choices: [], usage })}\n\n`);
      }
      res.end("data: [DONE]\n\n");
    };
    setImmediate(tick);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => console.log(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`));
process.on("SIGTERM", () => process.exit(0));
