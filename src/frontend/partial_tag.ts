/**
 * For parsers that find tags in streamed text: how much of the text's end could be the start of
 * a tag that the next piece completes, and so must be held back until it is known.
 */
export function partialTagLength(text: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) {
    if (text.endsWith(tag.slice(0, n))) return n;
  }
  return 0;
}
