"""Parity with the official `rwkv` package (fixtures made by tests/fixtures/make_official_fixtures.py)."""

import numpy as np
import pytest

from tests.conftest import FIXTURES
from rwkvjax.inference.scoring import run
from rwkvjax.config import ModelConfig
from rwkvjax.convert.rwkv_pth import params_from_state_dict

NAMES = ["tiny", "small", "n32", "ranks"]
STATE_KEYS = ("state_att_x_prev", "state_wkv", "state_ffn_x_prev")


def load_fixture(name):
  z = np.load(FIXTURES / f"x070_{name}.npz")
  sd = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
  params, cfg = params_from_state_dict(sd)
  return z, params, cfg


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_logits_and_state_match_official(name, mode):
  z, params, cfg = load_fixture(name)
  logits, state = run(params, cfg, z["tokens"], mode)
  np.testing.assert_allclose(logits, z[f"logits_{mode}"], atol=1e-4, rtol=1e-4)
  prefix = "parallel_" if mode == "parallel" else ""
  for key in STATE_KEYS:
    np.testing.assert_allclose(state[key], z[prefix + key], atol=1e-4, rtol=1e-4, err_msg=key)


def test_initial_state_in_final_state_out():
  """Two calls, the second starting from the first's state, as the official package chunks a prompt."""
  import jax.numpy as jnp
  from rwkvjax.models import rwkv7
  z, params, cfg = load_fixture("small")
  split = int(z["chunk_split"])
  tokens = jnp.asarray(z["tokens"])[None]
  first, state = rwkv7.forward(params, cfg, tokens[:, :split])
  np.testing.assert_allclose(np.swapaxes(np.asarray(state["wkv"][:, 0]), -1, -2), z["chunk1_state_wkv"], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(state["att_x_prev"][:, 0]), z["chunk1_state_att_x_prev"], atol=1e-4, rtol=1e-4)
  second, _ = rwkv7.forward(params, cfg, tokens[:, split:], state)
  np.testing.assert_allclose(np.concatenate([first[0], second[0]]), z["chunked_logits"], atol=1e-4, rtol=1e-4)


def test_bf16_error_is_no_worse_than_the_official_bf16():
  """bf16 compute (fp32 state) vs the fp32 official logits, compared with the official package's own
  'cpu bf16' error on the same model."""
  z, params, cfg = load_fixture("small")
  cfg16 = ModelConfig(**{**cfg.__dict__, "compute_dtype": "bfloat16"})
  logits, _ = run(params, cfg16, z["tokens"], "parallel")
  ours = np.abs(logits - z["logits_parallel"])
  official = np.abs(z["logits_bf16_official"].astype(np.float32) - z["logits_parallel"])
  assert ours.mean() <= 1.5 * official.mean(), (ours.mean(), official.mean())
  assert ours.max() <= 2.0 * official.max(), (ours.max(), official.max())
