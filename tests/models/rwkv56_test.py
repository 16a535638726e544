"""RWKV-5.2 (x052) and RWKV-6 (x060) models: official init, parallel vs recurrent, state carry, document resets,
bf16, gradients, and the shared goldens (logits, states, RWKV-LM gradients, RWKV-LM's own init file)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import shared_golden
from rwkvjax.config import ModelConfig
from rwkvjax.convert.rwkv_pth import load_pth, params_from_state_dict, state_dict_from_params
from rwkvjax.convert.torch_zip import load_state_dict
from rwkvjax.models import get_model
from rwkvjax.models.params import unflatten

VERSIONS = ["x052", "x060"]
GOLDEN = {"x052": "v5", "x060": "v6"}


def cfg_for(version, **kw):
  base = dict(version=version, n_layer=2, n_embd=64, vocab_size=97, head_size=32)
  if version == "x060":
    base.update(d_mix_lora=16, d_decay_lora=24)  # not the defaults: shapes must follow the config
  return ModelConfig(**{**base, **kw})


def random_params(cfg, rng):
  """Random values in realistic ranges for every parameter (numpy, no compile): mixes U(0, 1), LayerNorm
  weights 1 + 0.1 N, decays exp(-exp(d)) with d spread over [-6, 2] (x060: plus its LoRA), N(0, 1/in)
  matrices, N(0, 0.1^2) LoRAs, so that every path matters."""
  flat = {}
  for spec in get_model(cfg.version).param_specs(cfg):
    shape = spec.full_shape(cfg.n_layer)
    leaf = spec.name.rsplit(".", 1)[-1]
    if "time_mix" in spec.name or "time_maa" in spec.name and not spec.name.endswith(("_w1", "_w2")):
      value = rng.uniform(0.0, 1.0, shape)
    elif spec.name.endswith(("_w1", "_w2")):
      value = 0.1 * rng.standard_normal(shape)
    elif leaf == "time_decay":
      value = rng.uniform(-6.0, 2.0, shape)
    elif leaf == "time_faaaa":
      value = 0.5 * rng.standard_normal(shape)
    elif spec.name.startswith(("ln", "blocks.ln")) or ".ln_x." in spec.name:
      value = (1.0 if leaf == "weight" else 0.0) + 0.1 * rng.standard_normal(shape)
    elif spec.name == "emb.weight":
      value = rng.standard_normal(shape)
    else:  # Linear (out, in)
      value = rng.standard_normal(shape) / np.sqrt(shape[-1]) * (2.0 if spec.name == "head.weight" else 1.0)
    flat[spec.name] = jnp.asarray(value, jnp.float32)
  return unflatten(flat)


@pytest.fixture(scope="module", params=VERSIONS)
def model(request):
  cfg = cfg_for(request.param)
  seed = np.random.default_rng().integers(1 << 30)
  return get_model(cfg.version), cfg, random_params(cfg, np.random.default_rng(seed)), jax.random.key(seed)


def run_recurrent(m, params, cfg, tokens, impl="auto"):
  def body(state, tok):
    logits, state = m.step(params, cfg, tok, state, impl=impl)
    return state, logits

  state, logits = jax.jit(lambda s, t: jax.lax.scan(body, s, t.T))(m.init_state(cfg, tokens.shape[0]), tokens)
  return jnp.moveaxis(logits, 0, 1), state


@functools.lru_cache(maxsize=None)
def forward_fn(cfg, impl="reference"):
  """Jitted forward(params, cfg, tokens, state, segment_ids=...), one per (cfg, impl) so tests share compiles
  (the reference WKV compiles fastest; the chunked backend is covered where named and in tests/ops)."""
  m = get_model(cfg.version)
  fwd = jax.jit(lambda p, t, s, seg: m.forward(p, cfg, t, s, segment_ids=seg, impl=impl))

  def call(p, t, s=None, seg=None):  # always the same signature (explicit state and segment ids)
    return fwd(p, t, m.init_state(cfg, t.shape[0]) if s is None else s, jnp.zeros(t.shape, jnp.int32) if seg is None else seg)

  return call


def assert_close(a, b, tol=1e-4):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------------------
# forward behaviour
# ----------------------------------------------------------------------------------------------------------

def test_parallel_matches_recurrent_for_every_backend(model):
  """Sequence mode (each WKV backend) against one token at a time (step, impl auto) carrying the state."""
  m, cfg, params, key = model
  tokens = jax.random.randint(key, (2, 29), 0, cfg.vocab_size)
  logits_r, state_r = run_recurrent(m, params, cfg, tokens)
  assert state_r["wkv"].shape == (cfg.n_layer, 2, cfg.n_head, cfg.head_size, cfg.head_size)
  for impl in ("reference", "chunked"):
    logits, state = forward_fn(cfg, impl)(params, tokens)
    assert logits.shape == (2, 29, cfg.vocab_size) and logits.dtype == jnp.float32
    assert_close(logits, logits_r)
    jax.tree.map(assert_close, state, state_r)


def test_state_carry_and_segment_ids(model):
  """A second call continues from the first call's state; where segment_ids change, token shift and WKV
  state restart from zero (as separate calls on each document)."""
  m, cfg, params, key = model
  fwd = forward_fn(cfg)
  tokens = jax.random.randint(key, (2, 29), 0, cfg.vocab_size)
  whole, s_whole = fwd(params, tokens)
  first, s1 = fwd(params, tokens[:, :12])
  second, s2 = fwd(params, tokens[:, 12:], s1)
  assert_close(jnp.concatenate([first, second], 1), whole)
  jax.tree.map(assert_close, s2, s_whole)

  packed, state = fwd(params, tokens, None, jnp.asarray([[0] * 12 + [1] * 17] * 2))
  assert_close(packed[:, :12], first)
  fresh, s_fresh = fwd(params, tokens[:, 12:])
  assert_close(packed[:, 12:], fresh)
  jax.tree.map(assert_close, state, s_fresh)


@pytest.mark.parametrize("version", VERSIONS)
def test_reset_state_shape_is_checked(version):
  """forward's reset_state is [L, B or 1, H, K, V]: a missing layer or batch axis names the argument (before any
  parameter is read). Its effect is tested through state tuning (tests/peft) and the ops (tests/ops)."""
  cfg = cfg_for(version)
  tokens, seg = jnp.ones((1, 4), jnp.int32), jnp.asarray([[0, 0, 1, 1]])
  H, N = cfg.n_head, cfg.head_size
  for bad in (jnp.ones((cfg.n_layer, H, N, N)), jnp.ones((cfg.n_layer + 1, 1, H, N, N))):
    with pytest.raises(ValueError, match="forward: reset_state has shape"):
      get_model(version).forward({}, cfg, tokens, segment_ids=seg, reset_state=bad)


def test_flops_count_is_positive_and_grows_with_width():
  for version in VERSIONS:
    m = get_model(version)
    small, big = m.forward_flops_per_token(cfg_for(version), 1), m.forward_flops_per_token(cfg_for(version, n_embd=128), 1)
    assert 0 < small < big


# ----------------------------------------------------------------------------------------------------------
# the shared goldens (RWKV-LM / official package outputs on L2 C128 N64 V256 T48)
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_shared_goldens_parity_and_gradients(version):
  g = shared_golden(GOLDEN[version])
  params, cfg = load_pth(g / "model.pth")
  assert cfg.version == version
  m = get_model(version)
  tokens = jnp.asarray(np.load(g / "tokens.npy"))[None]
  logits, state = forward_fn(cfg)(params, tokens)
  assert_close(logits[0], np.load(g / "logits.npy"))
  for key, value in m.official_state(state).items():
    assert_close(value, np.load(g / f"{key}.npy"))
  logits_r, state_r = run_recurrent(m, params, cfg, tokens)  # impl auto (chunked on CPU)
  assert_close(logits_r[0], np.load(g / "logits_recurrent.npy"))
  assert_close(m.official_state(state_r)["state_wkv"], np.load(g / "state_wkv.npy"))

  def loss(p):  # RWKV-LM's loss: mean next-token CE (no L2Wrap); per-block remat on
    lg, _ = m.forward(p, cfg, tokens, impl="reference", remat="block")
    return -jnp.take_along_axis(jax.nn.log_softmax(lg[0, :-1]), tokens[0, 1:, None], -1).mean()

  grads = state_dict_from_params(jax.jit(jax.grad(loss))(params), cfg, "float32")
  want = np.load(g / "grads_rwkvlm.npz")
  assert sorted(want.files) == sorted(grads)
  for k in want.files:
    assert np.all(np.isfinite(grads[k])) and np.abs(want[k]).max() > 0, k  # x052/x060: no unused parameters
    assert np.abs(grads[k] - want[k]).max() / np.abs(want[k]).max() < 1e-4, k


# ----------------------------------------------------------------------------------------------------------
# official initialisation
# ----------------------------------------------------------------------------------------------------------

def official_deterministic(cfg: ModelConfig, l: int) -> dict:
  """The deterministic tensors of block l, in float64 straight from RWKV-LM's formulas (RWKV-v5/src/model.py
  RWKV_Tmix_x052/x060, RWKV_CMix_x052/x060, generate_init_weight). None = zeros of the stored shape."""
  C, H, N, L = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.n_layer
  r0 = l / (L - 1) if L > 1 else 0.0
  r1 = 1.0 - l / L
  n = np.arange(C, dtype=np.float64)
  ddd = n / C
  decay = -6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r0)
  faaaa = (r0 * (1 - n / (C - 1)) + 0.1 * ((n + 1) % 3 - 1)).reshape(H, N)
  p = f"blocks.{l}."
  out = {p + "att.time_faaaa": faaaa, p + "att.ln_x.weight": np.full(C, ((1 + l) / L) ** 0.7),
         p + "att.ln_x.bias": np.zeros(C), p + "ln1.weight": np.ones(C), p + "ln1.bias": np.zeros(C),
         p + "ln2.weight": np.ones(C), p + "ln2.bias": np.zeros(C)}
  for m in ("att.output.weight", "ffn.value.weight", "ffn.receptance.weight"):
    out[p + m] = None
  if cfg.version == "x052":
    out.update({p + "att.time_mix_k": ddd ** r1, p + "att.time_mix_v": ddd ** r1 + 0.3 * r0,
                p + "att.time_mix_r": ddd ** (0.5 * r1), p + "att.time_mix_g": ddd ** (0.5 * r1),
                p + "att.time_decay": decay.reshape(H, N),
                p + "ffn.time_mix_k": ddd ** r1, p + "ffn.time_mix_r": ddd ** r1})
  else:
    out.update({p + "att.time_maa_x": 1 - ddd ** r1, p + "att.time_maa_w": 1 - ddd ** r1,
                p + "att.time_maa_k": 1 - ddd ** r1, p + "att.time_maa_v": 1 - (ddd ** r1 + 0.3 * r0),
                p + "att.time_maa_r": 1 - ddd ** (0.5 * r1), p + "att.time_maa_g": 1 - ddd ** (0.5 * r1),
                p + "att.time_decay": decay.reshape(1, 1, C), p + "att.time_maa_w1": None,
                p + "att.time_decay_w1": None,
                p + "ffn.time_maa_k": 1 - ddd ** (r1 ** 3), p + "ffn.time_maa_r": 1 - ddd ** (r1 ** 3)})
  return out


def orthogonal_gains(cfg: ModelConfig, l: int) -> dict:
  p = f"blocks.{l}."
  return {p + "att.receptance.weight": 1.0, p + "att.key.weight": 0.1, p + "att.value.weight": 1.0,
          p + "att.gate.weight": 0.1, p + "ffn.key.weight": 1.0}


def uniform_bounds(cfg: ModelConfig, l: int) -> dict:
  return {} if cfg.version == "x052" else {f"blocks.{l}.att.time_maa_w2": 0.01, f"blocks.{l}.att.time_decay_w2": 0.01}


def assert_orthogonal(w: np.ndarray, gain: float, name: str):
  w = w.astype(np.float64)
  gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
  np.testing.assert_allclose(gram, gain ** 2 * np.eye(gram.shape[0]), atol=2e-5 * max(gain ** 2, 1e-2), err_msg=name)


def assert_uniform(x: np.ndarray, bound: float, name: str):
  assert np.abs(x).max() <= bound and x.std() == pytest.approx(bound / math.sqrt(3), rel=0.15), name


def check_init(sd: dict, cfg: ModelConfig):
  for l in range(cfg.n_layer):
    for key, want in official_deterministic(cfg, l).items():
      if want is None:
        assert not np.any(sd[key]), key
      else:
        np.testing.assert_allclose(sd[key], want.reshape(sd[key].shape), rtol=2e-6, atol=2e-6, err_msg=key)
    for key, gain in orthogonal_gains(cfg, l).items():
      assert_orthogonal(sd[key], gain, key)
    for key, bound in uniform_bounds(cfg, l).items():
      assert_uniform(sd[key], bound, key)
  np.testing.assert_array_equal(sd["blocks.0.ln0.weight"], 1.0)
  np.testing.assert_array_equal(sd["blocks.0.ln0.bias"], 0.0)
  head_gain = 0.5 * math.sqrt(cfg.vocab_size / cfg.n_embd) if cfg.vocab_size > cfg.n_embd else 0.5
  assert_orthogonal(sd["head.weight"], head_gain, "head.weight")
  assert np.abs(sd["emb.weight"]).max() <= 1e-4


@pytest.mark.parametrize("version", VERSIONS)
def test_init_formulas_single_layer(version):
  """The deterministic tensors for one layer (ratio_0_to_1 = 0) and head size 16, straight from the spec
  table's init functions (the full init, random tensors included, is checked below on RWKV-LM's file)."""
  cfg = ModelConfig(version=version, n_layer=1, n_embd=64, vocab_size=100, head_size=16)
  specs = {s.pth_key.format(l=0): s for s in get_model(version).param_specs(cfg)}
  assert cfg.ffn_dim == int(3.5 * 64) // 32 * 32 == specs["blocks.0.ffn.key.weight"].shape[0]
  for key, want in official_deterministic(cfg, 0).items():
    spec = specs[key]
    got = np.asarray(spec.init(jax.random.key(0), 0 if spec.stacked else None, cfg)).reshape(spec.pth_shape)
    np.testing.assert_allclose(got, np.zeros(spec.pth_shape) if want is None else want.reshape(spec.pth_shape),
                               rtol=2e-6, atol=2e-6, err_msg=key)


@pytest.mark.parametrize("version", VERSIONS)
def test_init_matches_rwkvlm_official_init_file(version):
  """RWKV-LM's own generate_init_weight output (L2 C128 V256): same keys in the same order and shapes,
  deterministic tensors to fp32 rounding, random ones in distribution (the rules hold for both files)."""
  official = load_state_dict(shared_golden(GOLDEN[version]) / "official_init.pth")
  _, cfg = params_from_state_dict(official)
  ours = state_dict_from_params(jax.jit(get_model(version).init, static_argnums=0)(cfg, jax.random.key(2)), cfg, "float32")
  assert list(ours) == list(official)
  assert all(ours[k].shape == official[k].shape for k in official)
  check_init(official, cfg)
  check_init(ours, cfg)
  for key in ("emb.weight", "head.weight"):
    np.testing.assert_allclose(ours[key].std(), official[key].std(), rtol=0.05, err_msg=key)


@pytest.mark.parametrize("version", VERSIONS)
def test_optimizer_tags_follow_rwkvlm(version):
  """RWKV-LM RWKV-v5 configure_optimizers (layerwise_lr=1, my_pile_stage=1): time_decay 2x LR (its LoRA,
  matching _w1/_w2 first, 1x); weight decay on >= 2-D `.weight` matrices only."""
  specs = get_model(version).param_specs(cfg_for(version))
  assert {s.name for s in specs if s.lr_scale != 1.0} == {"blocks.att.time_decay"}
  assert all(s.lr_scale == 2.0 for s in specs if s.name == "blocks.att.time_decay")
  wd = {s.name for s in specs if s.weight_decay}
  assert wd == {s.name for s in specs if s.name.endswith(".weight") and len(s.shape) >= 2}
  assert all(len(s.axes) == len(s.shape) for s in specs)
