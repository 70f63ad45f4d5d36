"""The tensors of a random Qwen3 checkpoint in the order the scripts draw them. The GPU machine's
model (native_cuda_hf.py make-model) and its CPU model (native_rounding_sim.py) both follow it, so
the stored transformers reference stays valid only while this order does."""


def qwen3_weight_draws(hidden, head_dim, inter, heads, kv_heads, layers, vocab):
    """(name, shape, kind) in draw order: kind "mat" is a weight matrix, "norm" a norm's gains."""
    q, kv = heads * head_dim, kv_heads * head_dim
    yield "model.embed_tokens.weight", (vocab, hidden), "mat"
    yield "model.norm.weight", (hidden,), "norm"
    for layer in range(layers):
        p = f"model.layers.{layer}."
        yield p + "self_attn.q_proj.weight", (q, hidden), "mat"
        yield p + "self_attn.k_proj.weight", (kv, hidden), "mat"
        yield p + "self_attn.v_proj.weight", (kv, hidden), "mat"
        yield p + "self_attn.o_proj.weight", (hidden, q), "mat"
        yield p + "self_attn.q_norm.weight", (head_dim,), "norm"
        yield p + "self_attn.k_norm.weight", (head_dim,), "norm"
        yield p + "mlp.gate_proj.weight", (inter, hidden), "mat"
        yield p + "mlp.up_proj.weight", (inter, hidden), "mat"
        yield p + "mlp.down_proj.weight", (hidden, inter), "mat"
        yield p + "input_layernorm.weight", (hidden,), "norm"
        yield p + "post_attention_layernorm.weight", (hidden,), "norm"
