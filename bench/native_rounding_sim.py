"""Which GEMM inputs a bfloat16 engine must carry at more than 16 bits to keep its logprobs within
0.05 of an fp32 reference, estimated on the CPU (numpy; no GPU, no torch).

A plain fp32 Qwen3 forward pass that rounds to bfloat16 where the CUDA engine does (the GEMM
inputs: norm outputs, attention output, SiLU·up, final norm; and q, k, v), on chosen rows only,
teacher-forced along the fp32 model's greedy tokens; it prints the largest |logprob change| over
the reference's top 5, as `native_cuda_hf.py rounding` and `native_cuda_gap.ts` measure it on the
GPU, for three policies:

    unsplit            every GEMM input rounded (bfloat16 without the split)
    split              GEMM inputs exact (hi + lo), q/k/v rounded (the engine's default)
    logit rows split   only rows that make logits (a prompt's last token, decode tokens) exact

    python3 bench/native_rounding_sim.py tiny DIR      a checkpoint (the test's tiny Qwen3)
    python3 bench/native_rounding_sim.py big SEED...   Qwen3-0.6B-shaped random models (~40 s each)

Session 18's numbers are in bench/CUDA_NOTES.md.
"""
import json
import struct
import sys
import time

import numpy as np

from prompt_tokens import xorshift_tokens
from qwen3_weight_draws import NORM_STD, QWEN3_06B, WEIGHT_STD, qwen3_weight_draws


def bf16(x):
    """x rounded to bfloat16 (nearest, ties to even), kept in float32."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    b = (b + (np.uint32(0x7FFF) + ((b >> 16) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    return b.view(np.float32)


def load_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        buf = raw[base + a: base + b]
        if v["dtype"] == "BF16":
            u = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
            t = u.view(np.float32)
        elif v["dtype"] == "F16":
            t = np.frombuffer(buf, dtype=np.float16).astype(np.float32)
        else:
            t = np.frombuffer(buf, dtype=np.float32).copy()
        out[k] = t.reshape(v["shape"])
    return out


def make_06b(seed):
    """Qwen3-0.6B's shape with bf16 weights drawn as native_cuda_hf.py make-model draws them
    (other values: numpy's generator, not torch's)."""
    rng = np.random.default_rng(seed)

    def mat(r, c):
        return bf16(rng.standard_normal((r, c), dtype=np.float32) * np.float32(WEIGHT_STD))

    def norm(n):
        return bf16(np.float32(1) + np.float32(NORM_STD) * rng.standard_normal(n, dtype=np.float32))

    t = {name: mat(*shape) if kind == "mat" else norm(*shape) for name, shape, kind in qwen3_weight_draws(QWEN3_06B)}
    return t, QWEN3_06B


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(t, cfg, ids, out_rows, rnd_rows, sites):
    """Log-probabilities of rows out_rows. Sites in {norm_out, attn_out, act, final_norm} round
    that GEMM input on the rows where rnd_rows (a mask) is set; 'qkv' rounds q, k (after RoPE)
    and v on every row, as the bfloat16 KV cache does."""
    h, hd, nh, nkv = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    def rin(x, site):
        if site not in sites:
            return x
        y = x.copy()
        y[rnd_rows] = bf16(x[rnd_rows])
        return y
    x = t["model.embed_tokens.weight"][ids].astype(np.float32)
    pos = np.arange(T, dtype=np.float64)
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.outer(pos, inv)
    cos = np.cos(np.concatenate([ang, ang], -1)).astype(np.float32)[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)[:, None, :]
    def rope(v):
        half = hd // 2
        rot = np.concatenate([-v[..., half:], v[..., :half]], -1)
        return v * cos + rot * sin
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    L = cfg["num_hidden_layers"]
    for l in range(L):
        p = f"model.layers.{l}."
        hn = rin(rms(x, t[p + "input_layernorm.weight"], eps), "norm_out")
        q = (hn @ t[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd)
        k = (hn @ t[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd)
        v = (hn @ t[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        q = rope(rms(q, t[p + "self_attn.q_norm.weight"], eps))
        k = rope(rms(k, t[p + "self_attn.k_norm.weight"], eps))
        if "qkv" in sites:
            q, k, v = bf16(q), bf16(k), bf16(v)
        g = nh // nkv
        out = np.empty((T, nh, hd), dtype=np.float32)
        for head in range(nh):
            kv = head // g
            s = (q[:, head, :] @ k[:, kv, :].T) / np.float32(np.sqrt(hd)) + mask
            s = s - s.max(-1, keepdims=True)
            e = np.exp(s)
            out[:, head, :] = (e / e.sum(-1, keepdims=True)) @ v[:, kv, :]
        a = rin(out.reshape(T, nh * hd), "attn_out")
        x = x + a @ t[p + "self_attn.o_proj.weight"].T
        h2 = rin(rms(x, t[p + "post_attention_layernorm.weight"], eps), "norm_out")
        gate = h2 @ t[p + "mlp.gate_proj.weight"].T
        up = h2 @ t[p + "mlp.up_proj.weight"].T
        act = rin(gate / (1 + np.exp(-gate)) * up, "act")
        x = x + act @ t[p + "mlp.down_proj.weight"].T
    hf = rin(rms(x, t["model.norm.weight"], eps), "final_norm")[out_rows]
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    logits = (hf @ head.T).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


ALL = {"norm_out", "attn_out", "act", "final_norm"}


def run(t, cfg, steps=8, lengths=(5, 33, 200)):
    vocab = cfg["vocab_size"]
    seqs = []
    for i, length in enumerate(lengths):
        ids = xorshift_tokens(length, 2000 + i, min(vocab, 4096))
        # the fp32 model's own greedy continuation; every policy is then teacher-forced along it
        for _ in range(steps):
            lp = forward(t, cfg, ids, [len(ids) - 1], np.zeros(len(ids), bool), set())
            ids.append(int(lp[0].argmax()))
        seqs.append((length, ids))
    refs = []
    for length, ids in seqs:
        rows = list(range(length - 1, len(ids) - 1))
        refs.append(forward(t, cfg, ids, rows, np.zeros(len(ids), bool), set()))
    variants = {
        "unsplit": lambda length, T: (np.ones(T, bool), ALL | {"qkv"}),
        "split": lambda length, T: (np.zeros(T, bool), {"qkv"}),
        "logit rows split": lambda length, T: (np.arange(T) < length - 1, ALL | {"qkv"}),
    }
    res = {}
    for name, f in variants.items():
        worst = 0.0
        for (length, ids), ref in zip(seqs, refs):
            rows = list(range(length - 1, len(ids) - 1))
            rr, sites = f(length, len(ids))
            got = forward(t, cfg, ids, rows, rr, sites)
            top = np.argsort(-ref, -1)[:, :5]
            d = np.abs(np.take_along_axis(got, top, -1) - np.take_along_axis(ref, top, -1)).max()
            worst = max(worst, float(d))
        res[name] = worst
    return res


if __name__ == "__main__":
    which = sys.argv[1]
    if which == "tiny":
        d = sys.argv[2]
        t = load_st(d + "/model.safetensors")
        c = json.load(open(d + "/config.json"))
        cfg = dict(hidden_size=c["hidden_size"], head_dim=c["head_dim"], num_attention_heads=c["num_attention_heads"],
                   num_key_value_heads=c["num_key_value_heads"], num_hidden_layers=c["num_hidden_layers"],
                   rope_theta=c["rope_theta"], rms_norm_eps=c["rms_norm_eps"], vocab_size=c["vocab_size"])
        print(run(t, cfg))
    else:
        for seed in map(int, sys.argv[2:]):
            t0 = time.time()
            t, cfg = make_06b(seed)
            print(seed, run(t, cfg), f"{time.time() - t0:.0f}s", flush=True)
