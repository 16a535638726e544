"""Llama / Qwen2 decoder: parity with transformers, packed documents, KV cache, RoPE scalings, init, config."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from rwkvjax.config.transformer import ConfigError, TransformerConfig, from_hf_config
from rwkvjax.convert.hf import load_hf
from rwkvjax.inference.generate import generate
from rwkvjax.models import transformer as tm
from rwkvjax.models.params import count_params, logical_axes, unflatten

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
HF_FIXTURES = ["hf_qwen2_gqa", "hf_llama_tied", "hf_llama_bias"]
CFG = TransformerConfig(model_type="qwen2", vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, attention_bias=True, rope_theta=1e4)


def random_params(cfg, seed):
  """Random values for every parameter (numpy, no compile): matrices N(0, 1/in), norms 1 + 0.1 N, biases
  0.3 N, embeddings N(0, 1), the head N(0, 4/C), so that no path is trivial."""
  rng = np.random.default_rng(seed)
  flat = {}
  for s in tm.param_specs(cfg):
    shape = s.full_shape(cfg.n_layer)
    if s.name.endswith("norm.weight"):
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif s.name.endswith(".bias"):
      v = 0.3 * rng.standard_normal(shape)
    elif s.name == "model.embed_tokens.weight":
      v = rng.standard_normal(shape)
    elif s.name == "lm_head.weight":
      v = 2.0 / np.sqrt(cfg.hidden_size) * rng.standard_normal(shape)
    else:
      v = rng.standard_normal(shape) / np.sqrt(np.prod(s.pth_shape[1:]))
    flat[s.name] = jnp.asarray(v, jnp.float32)
  return unflatten(flat)


# One jitted function per entry point, shared by the tests (cfg is static), to keep compiles few.
FORWARD = jax.jit(tm.forward, static_argnums=1)
STEP = jax.jit(tm.step, static_argnums=1)


@pytest.fixture(scope="module")
def model():
  return random_params(CFG, 0), CFG


@pytest.fixture(scope="module", params=HF_FIXTURES)
def hf_fixture(request):
  params, cfg = load_hf(FIXTURES / request.param)
  return request.param, params, cfg, np.load(FIXTURES / f"{request.param}.npz")


def assert_close(a, b, atol=1e-4, rtol=1e-3):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------------- parity

def test_logits_match_transformers(hf_fixture):
  name, params, cfg, z = hf_fixture
  logits, cache = FORWARD(params, cfg, jnp.asarray(z["tokens"]))
  assert cache is None and logits.dtype == jnp.float32 and logits.shape == z["logits"].shape
  assert_close(logits, z["logits"])


def test_packed_documents_match_transformers_on_separate_documents():
  params, cfg = load_hf(FIXTURES / "hf_qwen2_gqa")
  z = np.load(FIXTURES / "hf_qwen2_gqa.npz")
  d0, d1 = z["doc0_tokens"], z["doc1_tokens"]
  tokens = jnp.asarray(np.concatenate([d0, d1, d0[:3]]))[None]
  seg = jnp.asarray([[4] * len(d0) + [9] * len(d1) + [4] * 3])  # an id seen before still starts a new document
  logits, _ = FORWARD(params, cfg, tokens, segment_ids=seg)
  n0, n1 = len(d0), len(d1)
  assert_close(logits[0, :n0], z["doc0_logits"])
  assert_close(logits[0, n0:n0 + n1], z["doc1_logits"])
  assert_close(logits[0, n0 + n1:], z["doc0_logits"][:3])


def test_segment_ids_match_separate_sequences(model):
  params, cfg = model
  docs = jax.random.randint(jax.random.key(3), (2, 3, 10), 0, cfg.vocab_size)  # 2 rows of 3 documents
  seg = jnp.asarray([[0] * 10 + [1] * 10 + [2] * 10, [5] * 10 + [6] * 10 + [5] * 10])
  packed, _ = FORWARD(params, cfg, docs.reshape(2, 30), segment_ids=seg)
  separate, _ = FORWARD(params, cfg, docs.reshape(6, 10))
  assert_close(packed, separate.reshape(2, 30, -1))
  whole, _ = FORWARD(params, cfg, docs.reshape(2, 30))
  assert np.abs(np.asarray(whole[:, 10:] - packed[:, 10:])).min(axis=-1).max() > 1e-3  # the mask matters


def test_segment_positions():
  docs, pos = tm.segment_positions(jnp.asarray([[0, 0, 1, 1, 1, 0, 0], [3, 3, 3, 3, 3, 3, 3]]))
  np.testing.assert_array_equal(docs, [[0, 0, 1, 1, 1, 2, 2], [0] * 7])
  np.testing.assert_array_equal(pos, [[0, 1, 0, 1, 2, 0, 1], list(range(7))])


def test_rope_frequencies_match_transformers():
  z = np.load(FIXTURES / "hf_rope.npz")
  for case in json.loads(str(z["cases"])):
    cfg = TransformerConfig(hidden_size=2 * case["head_dim"], num_attention_heads=2, head_dim=case["head_dim"],
                            rope_theta=case["rope_theta"], max_position_embeddings=case["max_position_embeddings"],
                            rope_scaling=case["rope_scaling"])
    inv_freq, scaling = tm.rope_frequencies(cfg)
    want = z[f"{case['name']}/inv_freq"]
    np.testing.assert_allclose(inv_freq, want, rtol=1e-6, atol=0, err_msg=case["name"])
    assert scaling == pytest.approx(float(z[f"{case['name']}/attention_scaling"]), rel=1e-12), case["name"]


# ---------------------------------------------------------------------------------------------------- KV cache

def test_prefill_and_decode_steps_match_forward(model):
  params, cfg = model
  tokens = jax.random.randint(jax.random.key(4), (2, 21), 0, cfg.vocab_size)
  full, _ = FORWARD(params, cfg, tokens)
  cache = tm.init_cache(cfg, 2, 24)
  first, cache = FORWARD(params, cfg, tokens[:, :8], cache)  # prefill, in two calls
  second, cache = FORWARD(params, cfg, tokens[:, 8:16], cache)
  rest = []
  for t in range(16, 21):
    logits, cache = STEP(params, cfg, tokens[:, t], cache)
    rest.append(logits[:, None])
  assert int(cache["index"]) == 21 and cache["k"].shape == (3, 2, 24, 2, 16)
  assert_close(jnp.concatenate([first, second] + rest, 1), full)


def test_greedy_kv_generation_matches_argmax_of_parallel_forward(model):
  params, cfg = model
  prompt = jnp.asarray([[3, 7, 1, 9, 4], [4, 4, 2, 8, 0]])
  new, cache = generate(params, cfg, prompt, jax.random.key(0), max_new_tokens=16, temperature=0.0)
  assert new.shape == (2, 16) and int(cache["index"]) == 21
  logits, _ = FORWARD(params, cfg, jnp.concatenate([prompt, new], 1))
  np.testing.assert_array_equal(new, jnp.argmax(logits[:, 4:-1], -1))


def test_greedy_generation_matches_transformers_generate():
  params, cfg = load_hf(FIXTURES / "hf_llama_tied")
  z = np.load(FIXTURES / "hf_llama_tied.npz")
  new, _ = generate(params, cfg, jnp.asarray(z["greedy_prompt"]), jax.random.key(0),
                    max_new_tokens=z["greedy_new_tokens"].shape[1], temperature=0.0)
  np.testing.assert_array_equal(new, z["greedy_new_tokens"])


# ---------------------------------------------------------------------------------------------------- numerics

def test_bf16_compute_error_is_bounded(model):
  params, cfg = model
  tokens = jax.random.randint(jax.random.key(5), (2, 21), 0, cfg.vocab_size)
  ref, _ = FORWARD(params, cfg, tokens)
  bf16_cfg = cfg.replace(compute_dtype="bfloat16")
  got, _ = FORWARD(params, bf16_cfg, tokens)
  assert got.dtype == jnp.float32
  err = np.abs(np.asarray(got) - np.asarray(ref))
  assert err.mean() < 0.02 * np.abs(np.asarray(ref)).std() + 1e-3 and err.max() < 0.2, (err.mean(), err.max())
  cache = tm.init_cache(bf16_cfg, 2, 21)
  assert cache["k"].dtype == jnp.bfloat16
  got_cached, _ = FORWARD(params, bf16_cfg, tokens, cache)
  assert np.abs(np.asarray(got_cached) - np.asarray(ref)).max() < 0.2


def test_training_gradient_is_finite_with_packed_documents(model):
  params, cfg = model
  tokens = jax.random.randint(jax.random.key(6), (2, 16), 0, cfg.vocab_size)
  seg = jnp.asarray([[0] * 6 + [1] * 10, [0] * 16])

  def loss(p):
    logits, _ = tm.forward(p, cfg, tokens[:, :-1], segment_ids=seg[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(value)
  assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in jax.tree.leaves(grads))

  def loss_remat(p):  # the trainer's block remat gives the same gradient
    logits, _ = tm.forward(p, cfg, tokens[:, :-1], segment_ids=seg[:, :-1], remat="block")
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

  grads_remat = jax.jit(jax.grad(loss_remat))(params)
  jax.tree.map(lambda a, b: assert_close(a, b, atol=1e-6, rtol=1e-4), grads, grads_remat)


def test_attention_backend_selection():
  assert tm.resolve_attention_impl("auto", jnp.bfloat16, 64) == ("cudnn" if jax.default_backend() == "gpu" else "xla")
  assert tm.resolve_attention_impl("auto", jnp.float32, 64) == "xla"
  assert tm.resolve_attention_impl("xla", jnp.bfloat16, 64) == "xla"
  assert tm.resolve_attention_impl("auto", jnp.bfloat16, 64, seq_len=255, masked=True) == "xla"  # cuDNN: even only
  assert tm.resolve_attention_impl("auto", jnp.bfloat16, 12) == "xla"
  with pytest.raises(ValueError, match="attention impl='flash'"):
    tm.resolve_attention_impl("flash", jnp.float32, 64)


# ---------------------------------------------------------------------------------------------------- params

def test_param_specs_and_hf_init():
  cfg = TransformerConfig(model_type="llama", vocab_size=300, hidden_size=128, intermediate_size=256,
                          num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                          attention_bias=True, attention_out_bias=True, initializer_range=0.05)
  specs = tm.param_specs(cfg)
  names = {s.name for s in specs}
  assert "lm_head.weight" in names and "lm_head.weight" not in {
      s.name for s in tm.param_specs(cfg.replace(tie_word_embeddings=True))}
  assert "model.layers.self_attn.o_proj.bias" in names and "model.layers.mlp.up_proj.bias" not in names
  allowed = {"embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers"}
  for s in specs:
    assert set(s.full_axes()) <= allowed, s
    assert s.weight_decay == (s.name.endswith("weight") and "norm" not in s.name), s.name
    assert int(np.prod(s.pth_shape)) == int(np.prod(s.shape)), s.name
    assert ("{l}" in s.pth_key) == s.stacked and s.pth_key.replace(".{l}", "") == s.name
  params = jax.jit(lambda k: tm.init(cfg, k))(jax.random.key(7))
  for s in specs:
    value = np.asarray(params_leaf(params, s.name))
    assert value.shape == s.full_shape(cfg.n_layer) and value.dtype == np.float32
    if s.name.endswith("norm.weight"):
      np.testing.assert_array_equal(value, 1.0)
    elif s.name.endswith(".bias"):
      np.testing.assert_array_equal(value, 0.0)
    else:
      assert abs(value.mean()) < 0.01 and value.std() == pytest.approx(0.05, rel=0.1), s.name
  assert count_params(params) == cfg.num_params()
  tied = cfg.replace(tie_word_embeddings=True, attention_bias=False, attention_out_bias=False, mlp_bias=True)
  assert sum(int(np.prod(s.full_shape(2))) for s in tm.param_specs(tied)) == tied.num_params()
  axes = logical_axes(specs)
  assert axes["model"]["layers"]["self_attn"]["k_proj"]["weight"] == ("layers", "kv_heads", "head_dim", "embed")
  assert axes["model"]["layers"]["self_attn"]["o_proj"]["weight"] == ("layers", "embed", "heads", "head_dim")
  assert cfg.flops_per_token(1024) > 6 * cfg.num_params(include_embeddings=False)


def params_leaf(tree, dotted):
  for part in dotted.split("."):
    tree = tree[part]
  return tree


# ---------------------------------------------------------------------------------------------------- config

BASE_HF = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4)


def test_hf_config_v4_and_v5_layouts_agree():
  v4 = from_hf_config({**BASE_HF, "rope_theta": 500000.0,
                       "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}})
  v5 = from_hf_config({**BASE_HF, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 64}})
  assert v4 == v5 and hash(v4) == hash(v5) and v4.rope_type == "llama3" and v4.rope_theta == 500000.0
  plain = from_hf_config({**BASE_HF, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
  assert plain.rope_scaling is None and plain.rope_theta == 1e6 and plain.num_key_value_heads == 4
  qwen = from_hf_config({**BASE_HF, "model_type": "qwen2", "num_key_value_heads": 2, "tie_word_embeddings": True})
  assert qwen.attention_bias and not qwen.attention_out_bias and qwen.tie_word_embeddings and qwen.head_dim == 16
  assert from_hf_config(qwen.to_hf_config()) == qwen
  assert from_hf_config(v4.to_hf_config(), compute_dtype="bfloat16") == v4.replace(compute_dtype="bfloat16")


def test_real_model_configs():
  """config.json of Qwen2.5-0.5B and Llama-3.2-1B (as published, transformers v4 layout): the architecture and
  the published parameter counts."""
  qwen = from_hf_config({
      "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
      "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
      "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
      "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
      "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
      "transformers_version": "4.40.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936})
  assert (qwen.head_dim, qwen.attention_bias, qwen.rope_scaling, qwen.version) == (64, True, None, "qwen2")
  assert qwen.num_params() == 494_032_768
  llama = from_hf_config({
      "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
      "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
      "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
      "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
      "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
      "vocab_size": 128256})
  assert llama.rope_type == "llama3" and llama.num_params() == 1_235_814_400


@pytest.mark.parametrize("change, match", [
    (dict(model_type=None), "lacks 'model_type'"),
    (dict(model_type="mistral"), "model_type='mistral' is not supported"),
    (dict(num_hidden_layers=None), r"lacks required field\(s\) \['num_hidden_layers'\]"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_type='dynamic' is not supported"),
    (dict(rope_scaling={"type": "longrope", "short_factor": [1.0]}), "rope_type='longrope' is not supported"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"lacks \['low_freq_factor', 'high_freq_factor'\]"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "beta": 1}), r"unsupported fields \['beta'\]"),
    (dict(rope_scaling={"factor": 2.0}), "expected a 'rope_type'"),
    (dict(num_key_value_heads=3), "num_key_value_heads=3: expected a divisor of num_attention_heads=4"),
    (dict(hidden_size=66), "hidden_size=66: expected a multiple of num_attention_heads=4"),
    (dict(layer_types=["full_attention", "sliding_attention"]), "only 'full_attention'"),
    (dict(model_type="qwen2", use_sliding_window=True, max_window_layers=1), "sliding-window attention"),
])
def test_bad_hf_configs_are_named(change, match):
  with pytest.raises(ConfigError, match=match):
    from_hf_config({**BASE_HF, **change})


def test_forward_input_errors(model):
  params, cfg = model
  with pytest.raises(ValueError, match="expected \\[B, T\\]"):
    tm.forward(params, cfg, jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match="remat='all'"):
    tm.forward(params, cfg, jnp.zeros((1, 3), jnp.int32), remat="all")
  with pytest.raises(ValueError, match="segment_ids cannot be combined with a KV cache"):
    tm.forward(params, cfg, jnp.zeros((1, 3), jnp.int32), tm.init_cache(cfg, 1, 4),
               segment_ids=jnp.zeros((1, 3), jnp.int32))


def test_save_dots_remat_keeps_attention_rope_and_swiglu(monkeypatch, capsys):
  """remat="block_save_dots" keeps, per layer, cuDNN flash attention's forward outputs (the attention output and
  its softmax statistics), the RoPE'd queries and keys and SwiGLU's product, so that none of them is recomputed
  in the backward pass; "block" keeps none of them. Traced only (cuDNN's version check patched): the cuDNN
  kernels need a GPU. The layers are unrolled so that each residual is listed with its origin."""
  from jax._src.cudnn import fused_attention_stablehlo
  monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 90500)
  cfg = CFG.replace(compute_dtype="bfloat16")
  B, T = 2, 16
  params = random_params(cfg, 3)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (B, T)), jnp.int32)

  def saved(remat):
    loss = lambda p: tm.forward(p, cfg, tokens, impl="cudnn", remat=remat, scan_layers=False)[0].sum()
    capsys.readouterr()
    print_saved_residuals(loss, params)
    return capsys.readouterr().out

  L, H, K, D = cfg.n_layer, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  wanted = {f"bf16[{B},{T},{H},{D}] output of dot_product_attention_fwd_wrapper": L,  # attention output
            f"f32[{B},{H},{T}] output of dot_product_attention_fwd_wrapper": L,  # softmax statistics
            f"bf16[{B},{T},{H},{D}] named 'rope_q'": L, f"bf16[{B},{T},{K},{D}] named 'rope_k'": L,
            f"bf16[{B},{T},{cfg.intermediate_size}] named 'swiglu'": L}
  with_dots, block = saved("block_save_dots"), saved("block")
  for line, count in wanted.items():
    assert with_dots.count(line) == count, (line, with_dots)
    assert line not in block, (line, block)


def test_unrolled_layers_match_scan(model):
  """scan_layers=False (the blocks unrolled, `layers.layer_loop`) gives the scanned forward's logits and
  gradients, with packed documents and remat; and the KV-cache path's cache."""
  params, cfg = model
  rng = np.random.default_rng(5)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 13)), jnp.int32)
  seg = jnp.asarray(np.repeat([[0] * 5 + [1] * 8], 2, axis=0))

  def loss(p, scan_layers):
    logits, _ = tm.forward(p, cfg, tokens, segment_ids=seg, remat="block_save_dots", scan_layers=scan_layers)
    return jnp.sum(jnp.sin(logits)), logits

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, logits), grads = grad(params, True)
  (_, logits_u), grads_u = grad(params, False)
  assert "scan[" in str(jax.make_jaxpr(loss, static_argnums=1)(params, True))
  assert "scan[" not in str(jax.make_jaxpr(loss, static_argnums=1)(params, False))
  jax.tree.map(lambda a, b: assert_close(a, b, atol=1e-5, rtol=1e-5), (logits, grads), (logits_u, grads_u))
  cache = tm.init_cache(cfg, 2, 16)
  prefill = jax.jit(lambda p, s: tm.forward(p, cfg, tokens, cache, scan_layers=s), static_argnums=1)
  jax.tree.map(lambda a, b: assert_close(a, b, atol=1e-5, rtol=1e-5), prefill(params, True), prefill(params, False))
