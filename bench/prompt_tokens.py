"""The benchmarks' and GPU references' prompts: token ids from a 32-bit xorshift generator, the
same sequence the TypeScript side draws (so a script and the engine test read the same prompts
without sharing a file)."""


def xorshift_tokens(length, seed, hi):
    """`length` token ids in [0, hi) from the xorshift state `seed` (0 taken as 1)."""
    x = seed & 0xFFFFFFFF or 1
    out = []
    for _ in range(length):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out.append(x % hi)
    return out
