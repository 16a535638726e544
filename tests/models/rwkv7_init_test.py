"""The official RWKV-LM x070 initialisation: per-tensor formulas, and the statistics of RWKV-LM's own output."""

import math

import jax
import numpy as np
import pytest

from tests.conftest import shared_golden
from rwkvjax.config import ModelConfig
from rwkvjax.convert.rwkv_pth import params_from_state_dict, state_dict_from_params
from rwkvjax.convert.torch_zip import load_state_dict
from rwkvjax.models import rwkv7

CONFIGS = [ModelConfig(n_layer=3, n_embd=128, vocab_size=200, head_size=64),
           ModelConfig(n_layer=2, n_embd=96, vocab_size=64, head_size=32),
           ModelConfig(n_layer=1, n_embd=64, vocab_size=100, head_size=16)]


def official_deterministic(cfg: ModelConfig, l: int) -> dict[str, np.ndarray]:
  """The deterministic x070 tensors of block l, written in float64 straight from RWKV-LM's formulas."""
  C, N, L = cfg.n_embd, cfg.head_size, cfg.n_layer
  r0 = l / (L - 1) if L > 1 else 0.0
  r1 = 1.0 - l / L
  n = np.arange(C, dtype=np.float64)
  ddd = n / C
  linear = n / (C - 1) - 0.5
  z = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
  zigzag = z * np.abs(z)
  www = -6 + 6 * (n / (C - 1)) ** (1 + r0 ** 0.3)
  p = f"blocks.{l}."
  out = {p + f"att.x_{k}": 1.0 - ddd ** (e * r1) for k, e in zip("rwkvag", (0.2, 0.9, 0.7, 0.7, 0.9, 0.2))}
  out.update({
      p + "att.w0": www + 0.5 + 2.5 * zigzag, p + "att.a0": -0.19 + 0.3 * zigzag + 0.4 * linear,
      p + "att.v0": 0.73 - 0.4 * linear, p + "att.k_k": 0.71 - 0.1 * linear, p + "att.k_a": np.full(C, 1.02),
      p + "att.r_k": np.full((cfg.n_head, N), -0.04), p + "ffn.x_k": 1.0 - ddd ** (r1 ** 4),
      p + "att.ln_x.weight": np.full(C, ((1 + l) / L) ** 0.7), p + "att.ln_x.bias": np.zeros(C),
      p + "ln1.weight": np.ones(C), p + "ln1.bias": np.zeros(C), p + "ln2.weight": np.ones(C), p + "ln2.bias": np.zeros(C),
  })
  for m in "wavg":
    out[p + f"att.{m}1"] = np.zeros((C, cfg.lora_dims[m]))
  for m in ("att.output.weight", "ffn.value.weight"):
    out[p + m] = None  # zeros of the right shape, checked below
  return out


def assert_orthogonal(w: np.ndarray, gain: float, name: str):
  w = w.astype(np.float64)
  gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
  np.testing.assert_allclose(gram, gain ** 2 * np.eye(gram.shape[0]), atol=2e-5 * max(gain ** 2, 1e-2), err_msg=name)


def random_rules(cfg: ModelConfig, l: int) -> dict[str, float]:
  """Orthogonal gains of the random tensors of block l (RWKV-LM generate_init_weight and ortho_init)."""
  p = f"blocks.{l}."
  gains = {p + "att.receptance.weight": 1.0, p + "att.key.weight": 0.1, p + "att.value.weight": 1.0,
           p + "ffn.key.weight": 1.0}
  for m in "wavg":
    d = cfg.lora_dims[m]
    gains[p + f"att.{m}2"] = 0.1 * (math.sqrt(d / cfg.n_embd) if d > cfg.n_embd else 1.0)
  return gains


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"L{c.n_layer}C{c.n_embd}N{c.head_size}")
def test_init_matches_official_formulas(cfg):
  sd = state_dict_from_params(rwkv7.init(cfg, jax.random.key(1)), cfg, "float32")
  assert len(sd) == len(set(sd))
  for l in range(cfg.n_layer):
    for key, want in official_deterministic(cfg, l).items():
      got = sd[key].reshape(-1) if want is not None and want.ndim == 1 else sd[key]
      if want is None:
        assert not np.any(sd[key]), key
      else:
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=key)
    for key, gain in random_rules(cfg, l).items():
      assert_orthogonal(sd[key], gain, key)
  np.testing.assert_array_equal(sd["blocks.0.ln0.weight"], 1.0)
  np.testing.assert_array_equal(sd["blocks.0.ln0.bias"], 0.0)
  emb = sd["emb.weight"]
  assert np.abs(emb).max() <= 1e-4 and emb.std() > 4e-5  # U(-1e-4, 1e-4): std 5.8e-5
  head_gain = 0.5 * math.sqrt(cfg.vocab_size / cfg.n_embd) if cfg.vocab_size > cfg.n_embd else 0.5
  assert_orthogonal(sd["head.weight"], head_gain, "head.weight")


def test_init_layers_are_independent_draws():
  cfg = CONFIGS[0]
  sd = state_dict_from_params(rwkv7.init(cfg, jax.random.key(0)), cfg, "float32")
  assert not np.allclose(sd["blocks.0.att.receptance.weight"], sd["blocks.1.att.receptance.weight"])


def test_init_matches_rwkvlm_official_init_file():
  """RWKV-LM's own generate_init_weight output (L2 C128 V256): deterministic tensors to fp32 rounding,
  random tensors in distribution (orthogonality and gain, uniform range)."""
  official = load_state_dict(shared_golden("v7") / "official_init.pth")
  _, cfg = params_from_state_dict(official)
  ours = state_dict_from_params(rwkv7.init(cfg, jax.random.key(2)), cfg, "float32")
  assert list(ours) == list(official)
  random_keys = {k for l in range(cfg.n_layer) for k in random_rules(cfg, l)} | {"emb.weight", "head.weight"}
  for key, want in official.items():
    assert ours[key].shape == want.shape, key
    if key in random_keys:
      continue
    np.testing.assert_allclose(ours[key], want, rtol=2e-6, atol=2e-6, err_msg=key)
  for l in range(cfg.n_layer):
    for key, gain in random_rules(cfg, l).items():
      assert_orthogonal(official[key], gain, key)  # the rule itself is RWKV-LM's
      assert_orthogonal(ours[key], gain, key)
  for key in ("emb.weight", "head.weight"):
    np.testing.assert_allclose(np.abs(ours[key]).max(), np.abs(official[key]).max(), rtol=0.25, err_msg=key)
    np.testing.assert_allclose(ours[key].std(), official[key].std(), rtol=0.05, err_msg=key)
