/** A streamed completion read the way a client reads it, with the usage the server reports. */
export interface StreamResult {
  text: string;
  completionTokens?: number;
  finishReason?: string;
  error?: string;
  status: number;
}

const STREAM_TIMEOUT_MS = 40_000;

/** `onFirstText` runs once, when the first content arrives. */
export async function streamCompletion(baseUrl: string, body: Record<string, unknown>, onFirstText?: () => void): Promise<StreamResult> {
  let res: Response;
  try {
    res = await fetch(`${baseUrl}/v1/completions`, {
      // A stream that stalls ends as an error naming it, well before the test's own timeout.
      signal: AbortSignal.timeout(STREAM_TIMEOUT_MS),
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    });
  } catch (err) {
    return { text: "", status: 0, error: (err as Error).message };
  }
  if (res.status !== 200) return { text: "", status: res.status, error: await res.text() };
  const result: StreamResult = { text: "", status: 200 };
  let buffered = "";
  try {
    for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let end: number;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const event = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
        const data = JSON.parse(event.slice(6));
        if (data.error) result.error = data.error.message;
        for (const choice of data.choices ?? []) {
          if (choice.text && result.text === "") onFirstText?.();
          result.text += choice.text ?? "";
          if (choice.finish_reason) result.finishReason = choice.finish_reason;
        }
        if (data.usage) result.completionTokens = data.usage.completion_tokens;
      }
    }
  } catch (err) {
    result.error = `stream broke: ${(err as Error).message}`;
  }
  return result;
}
