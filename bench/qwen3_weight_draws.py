"""The random Qwen3-0.6B-shaped checkpoint: its config, its weights' scales, and its tensors in the
order the scripts draw them. The GPU machine's model (native_cuda_hf.py make-model) and its CPU
model (native_rounding_sim.py) both follow it, so the stored transformers reference stays valid
only while this order does."""

QWEN3_06B = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936, hidden_size=1024,
    intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
    max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    hidden_act="silu", attention_bias=False, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645,
)
WEIGHT_STD = 0.04  # a weight matrix: normal(0, WEIGHT_STD)
NORM_STD = 0.1  # a norm's gains: 1 + normal(0, NORM_STD)


def qwen3_weight_draws(config):
    """(name, shape, kind) in draw order for a Qwen3 config (a dict of its config.json's fields):
    kind "mat" is a weight matrix, "norm" a norm's gains."""
    hidden, head_dim, inter = config["hidden_size"], config["head_dim"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    yield "model.embed_tokens.weight", (config["vocab_size"], hidden), "mat"
    yield "model.norm.weight", (hidden,), "norm"
    for layer in range(config["num_hidden_layers"]):
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
