"""The PyTorch / transformers side of the CUDA benchmark and GPU tests (bench/native_cuda.sh
runs it on the GPU machine; nothing here runs in CI).

    ceilings OUT.json                 device-to-device copy bandwidth and a bf16 matmul's TFLOP/s
    make-model DIR                    a Qwen3-0.6B-shaped model with random bf16 weights
    reference DIR... --out OUT.json   greedy steps and top-5 logprobs from transformers on the GPU,
                                      fp32 arithmetic on the checkpoint's bf16 / fp16 weights, recomputing
                                      the whole sequence each step (no KV cache): no code path shared with
                                      the engine
    generate DIR --out OUT.json       transformers `generate` output throughput on the benchmark's
                                      request mix (a subset; see CUDA_NOTES.md)
"""

import argparse
import json
import os
import sys
import time

import torch

from prompt_tokens import xorshift_tokens
from qwen3_weight_draws import NORM_STD, QWEN3_06B, WEIGHT_STD, qwen3_weight_draws


def timed(fn, reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    return times[len(times) // 2]


def ceilings(out):
    n = 1 << 30  # 1 GiB each way
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    t = timed(lambda: dst.copy_(src), 20)
    bandwidth = 2 * n / t
    k = 8192
    mats = [(torch.randn(k, k, device="cuda", dtype=torch.bfloat16), torch.randn(k, k, device="cuda", dtype=torch.bfloat16)) for _ in range(3)]
    i = [0]

    def mm():
        a, b = mats[i[0] % 3]
        i[0] += 1
        torch.mm(a, b)

    for _ in range(5):
        mm()
    # The best of several rounds of ten back-to-back products: the rate the GPU shows it can hold.
    # The median of single products, each after an idle sync, read anywhere from 730 to 776 TFLOP/s
    # on one H200 within minutes, and every share of the peak moved with it; this reads 786-787
    # there, three times out of three (bench/CUDA_NOTES.md, "Session 10").
    def ten():
        for _ in range(10):
            mm()

    t = min(timed(ten, 1) / 10 for _ in range(8))
    tflops = 2 * k**3 / t / 1e12
    result = {"copy_bytes_per_s": bandwidth, "matmul_bf16_tflops": tflops, "device": torch.cuda.get_device_name()}
    json.dump(result, open(out, "w"))
    print(json.dumps(result))


def make_model(folder):
    from safetensors.torch import save_file

    if os.path.exists(os.path.join(folder, "model.safetensors")):
        print(f"{folder} exists")
        return
    os.makedirs(folder, exist_ok=True)
    c = QWEN3_06B
    g = torch.Generator(device="cuda").manual_seed(20261124)

    def mat(rows, cols):
        return (torch.randn(rows, cols, generator=g, device="cuda") * WEIGHT_STD).to(torch.bfloat16).cpu()

    def norm(n):
        return (1.0 + NORM_STD * torch.randn(n, generator=g, device="cuda")).to(torch.bfloat16).cpu()

    t = {name: mat(*shape) if kind == "mat" else norm(*shape) for name, shape, kind in qwen3_weight_draws(c)}
    save_file(t, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    json.dump(c, open(os.path.join(folder, "config.json"), "w"), indent=1)
    json.dump({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "do_sample": False},
              open(os.path.join(folder, "generation_config.json"), "w"))
    print(f"wrote {folder}")


def load(folder):
    from transformers import AutoModelForCausalLM

    config = json.load(open(os.path.join(folder, "config.json")))
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.get("torch_dtype"), torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to("cuda").eval()
    return model, config


def reference(folders, out, steps=8):
    # fp32 arithmetic on the checkpoint's bf16/fp16 weights: a reference more precise than the
    # engine, so the comparison measures the engine's error and not transformers' own bf16
    # rounding (which alone moved logprobs by up to 0.07 here; see bench/CUDA_NOTES.md).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    models = []
    for folder in folders:
        model, config = load(folder)
        model = model.float()
        vocab = config["vocab_size"]
        cases = []
        for i, length in enumerate([5, 33, 200]):
            prompt = xorshift_tokens(length, 2000 + i, min(vocab, 4096))
            ids, record = list(prompt), []
            with torch.no_grad():
                for _ in range(steps):
                    logits = model(torch.tensor([ids], device="cuda")).logits[0, -1].float()
                    top = torch.topk(torch.log_softmax(logits, dim=-1), 5)
                    record.append({"token": int(top.indices[0]), "top_ids": [int(t) for t in top.indices],
                                   "top_logprobs": [float(v) for v in top.values]})
                    ids.append(int(top.indices[0]))
            cases.append({"prompt": prompt, "steps": record})
        models.append({"folder": os.path.abspath(folder), "cases": cases})
        del model
        torch.cuda.empty_cache()
    json.dump({"device": torch.cuda.get_device_name(), "models": models}, open(out, "w"))
    print(f"wrote {out}", file=sys.stderr)


def rounding(folders, steps=8):
    """Which of the engine's 16-bit roundings moves the logprobs: the fp32 model with the
    engine's rounding of one site at a time (and all together), teacher-forced along its own
    greedy tokens; prints the largest |logprob change| over the reference's top 5 per site."""
    import importlib

    torch.backends.cuda.matmul.allow_tf32 = False
    for folder in folders:
        model, config = load(folder)
        low = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.get("torch_dtype"), torch.bfloat16)
        model = model.float()
        mod = importlib.import_module(f"transformers.models.{config['model_type']}.modeling_{config['model_type']}")
        rnd = lambda x: x.to(low).to(x.dtype)
        active = set()
        handles = []
        for name, m in model.named_modules():
            leaf = name.split(".")[-1]
            site = {"q_proj": "norm_out", "k_proj": "norm_out", "v_proj": "norm_out", "gate_proj": "norm_out",
                    "up_proj": "norm_out", "o_proj": "attn_out", "down_proj": "act", "lm_head": "final_norm"}.get(leaf)
            if site:
                handles.append(m.register_forward_pre_hook(
                    lambda mm, args, site=site: (rnd(args[0]),) + tuple(args[1:]) if site in active else None))
            if leaf == "v_proj":
                handles.append(m.register_forward_hook(lambda mm, args, out: rnd(out) if "qkv" in active else None))
        orig_rope = mod.apply_rotary_pos_emb

        def rope(q, k, *a, **kw):
            q, k = orig_rope(q, k, *a, **kw)
            return (rnd(q), rnd(k)) if "qkv" in active else (q, k)

        mod.apply_rotary_pos_emb = rope
        vocab = config["vocab_size"]
        seqs = []
        with torch.no_grad():
            for i, length in enumerate([5, 33, 200]):
                ids = xorshift_tokens(length, 2000 + i, min(vocab, 4096))
                for _ in range(steps):
                    ids.append(int(model(torch.tensor([ids], device="cuda")).logits[0, -1].argmax()))
                seqs.append((length, torch.tensor([ids], device="cuda")))

            def logprobs():
                return [torch.log_softmax(model(ids).logits[0, length - 1:-1].float(), -1) for length, ids in seqs]

            ref = logprobs()
            tops = [torch.topk(r, 5, dim=-1).indices for r in ref]
            line = []
            for sites in [["norm_out"], ["attn_out"], ["act"], ["final_norm"], ["qkv"],
                          ["norm_out", "attn_out", "act", "final_norm", "qkv"]]:
                active.clear()
                active.update(sites)
                got = logprobs()
                worst = max(float((g.gather(-1, t) - r.gather(-1, t)).abs().max()) for g, r, t in zip(got, ref, tops))
                line.append(f"{'+'.join(sites) if len(sites) < 3 else 'all'} {worst:.4f}")
            active.clear()
        mod.apply_rotary_pos_emb = orig_rope
        print(f"rounding {os.path.basename(folder)}: " + " | ".join(line))
        for h in handles:
            h.remove()
        del model
        torch.cuda.empty_cache()


def request_mix(n, seed):
    """The benchmark's requests: prompt and output lengths uniform in [100, 1024]."""
    import random

    rng = random.Random(seed)
    return [(rng.randint(100, 1024), rng.randint(100, 1024)) for _ in range(n)]


def generate(folder, out, n):
    model, _ = load(folder)
    mix = request_mix(256, 1)[:n]
    pad = 0
    prompts = [xorshift_tokens(p, 3000 + i, 150000) for i, (p, _) in enumerate(mix)]
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], device="cuda")
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device="cuda")
    max_new = max(o for _, o in mix)
    with torch.no_grad():
        model.generate(input_ids=ids[:, :16], attention_mask=mask[:, :16], max_new_tokens=4, do_sample=False)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                       do_sample=False)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
    useful = sum(o for _, o in mix)
    result = {"requests": n, "useful_output_tokens": useful, "generated_tokens": n * max_new, "seconds": elapsed,
              "useful_tokens_per_s": useful / elapsed}
    json.dump(result, open(out, "w"))
    print(json.dumps(result))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["ceilings", "make-model", "reference", "generate", "rounding"])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--out")
    ap.add_argument("--requests", type=int, default=64)
    a = ap.parse_args()
    if a.command == "ceilings":
        ceilings(a.out)
    elif a.command == "make-model":
        make_model(a.paths[0])
    elif a.command == "reference":
        reference(a.paths, a.out)
    elif a.command == "rounding":
        rounding(a.paths)
    else:
        generate(a.paths[0], a.out, a.requests)


if __name__ == "__main__":
    main()
