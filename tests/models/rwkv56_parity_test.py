"""x052 / x060 parity with the official `rwkv` package (fixtures made by tests/fixtures/make_official_fixtures.py),
`.pth` conversion of v5/v6 checkpoints, and the logits tool on torch-written v5/v6 files."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkvjax.inference.scoring import run
from rwkvjax.config import ModelConfig
from rwkvjax.convert import rwkv_pth, torch_zip
from rwkvjax.models import get_model
from tests.conftest import FIXTURES

NAMES = ["x052_tiny", "x052_small", "x060_tiny", "x060_small", "x060_ranks"]
STATE_KEYS = ("state_att_x_prev", "state_wkv", "state_ffn_x_prev")


def load_fixture(name):
  z = np.load(FIXTURES / f"{name}.npz")
  sd = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
  params, cfg = rwkv_pth.params_from_state_dict(sd)
  return z, sd, params, cfg


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_logits_and_state_match_official(name, mode):
  """Sequence mode (the WKV backend impl=auto picks) and token-by-token mode, final states in the official
  layout ([layer, head, key, value] for v5/v6)."""
  z, _, params, cfg = load_fixture(name)
  assert cfg.version == name[:4]
  logits, state = run(params, cfg, z["tokens"], mode)
  np.testing.assert_allclose(logits, z[f"logits_{mode}"], atol=1e-4, rtol=1e-4)
  prefix = "parallel_" if mode == "parallel" else ""
  for key in STATE_KEYS:
    np.testing.assert_allclose(state[key], z[prefix + key], atol=1e-4, rtol=1e-4, err_msg=key)


@pytest.mark.parametrize("name", ["x060_small"])  # the state plumbing (run_blocks) is shared with x052
def test_initial_state_in_final_state_out(name):
  """Two calls, the second starting from the first's state, as the official package chunks a prompt."""
  z, _, params, cfg = load_fixture(name)
  m = get_model(cfg.version)
  fwd = jax.jit(lambda p, t, s: m.forward(p, cfg, t, s))
  split = int(z["chunk_split"])
  tokens = jnp.asarray(z["tokens"])[None]
  first, state = fwd(params, tokens[:, :split], m.init_state(cfg, 1))
  official = m.official_state(state)
  for key in STATE_KEYS:
    np.testing.assert_allclose(official[key], z["chunk1_" + key], atol=1e-4, rtol=1e-4, err_msg=key)
  second, _ = fwd(params, tokens[:, split:], state)
  np.testing.assert_allclose(np.concatenate([first[0], second[0]]), z["chunked_logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["x052_small", "x060_small"])
def test_bf16_error_is_no_worse_than_the_official_bf16(name):
  """bf16 compute (fp32 state) vs the fp32 official logits, compared with the official package's own
  'cpu bf16' error on the same model."""
  z, _, params, cfg = load_fixture(name)
  cfg16 = ModelConfig(**{**cfg.__dict__, "compute_dtype": "bfloat16"})
  logits, _ = run(params, cfg16, z["tokens"], "parallel")
  ours = np.abs(logits - z["logits_parallel"])
  official = np.abs(z["logits_bf16_official"].astype(np.float32) - z["logits_parallel"])
  assert ours.mean() <= 1.5 * official.mean(), (ours.mean(), official.mean())
  assert ours.max() <= 2.0 * official.max(), (ours.max(), official.max())


def test_config_is_read_from_the_checkpoint_shapes():
  _, _, _, cfg = load_fixture("x060_ranks")
  assert (cfg.version, cfg.n_layer, cfg.n_embd, cfg.head_size, cfg.vocab_size) == ("x060", 2, 64, 64, 40)
  assert cfg.lora_dims == {"maa": 8, "w": 16} and cfg.ffn_dim == 96
  _, _, _, cfg = load_fixture("x052_tiny")
  assert (cfg.version, cfg.n_layer, cfg.n_embd, cfg.head_size, cfg.ffn_dim) == ("x052", 2, 32, 16, 96)
  assert cfg.lora_dims == {}


@pytest.mark.parametrize("name", ["x052_tiny", "x060_tiny"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_written_file_reads_and_round_trips_exactly(tmp_path, name, dtype):
  """The torch-written .pth equals the fixture's tensors; params -> .pth -> params is exact, in RWKV-LM's key
  order and shapes."""
  _, sd, params, cfg = load_fixture(name)
  from_torch = torch_zip.load_state_dict(FIXTURES / f"{name}.pth")
  assert list(from_torch) == list(sd)
  for k in sd:
    np.testing.assert_array_equal(from_torch[k], sd[k], err_msg=k)
  src = {k: v.astype(rwkv_pth.PTH_DTYPES[dtype]) for k, v in sd.items()}
  params, cfg = rwkv_pth.params_from_state_dict(src)
  rwkv_pth.save_pth(params, cfg, tmp_path / "out.pth", dtype=dtype)
  back = torch_zip.load_state_dict(tmp_path / "out.pth")
  assert list(back) == list(src)
  for k in src:
    assert back[k].dtype == src[k].dtype and back[k].shape == src[k].shape, k
    np.testing.assert_array_equal(back[k], src[k], err_msg=k)
  assert rwkv_pth.load_pth(tmp_path / "out.pth")[1] == cfg


@pytest.mark.parametrize("name,missing,match", [
    ("x060_small", "blocks.1.att.time_maa_w2", r"missing key 'blocks.1.att.time_maa_w2' \(expected shape \(5, 32, 64\)\)"),
    ("x052_small", "blocks.0.att.time_faaaa", r"RWKV x052 checkpoint .*missing key 'blocks.0.att.time_faaaa'"),
])
def test_bad_state_dicts_name_the_key(name, missing, match):
  _, sd, _, _ = load_fixture(name)
  del sd[missing]
  with pytest.raises(rwkv_pth.CheckpointError, match=match):
    rwkv_pth.params_from_state_dict(sd)


@pytest.mark.parametrize("name,mode", [("x052_tiny", "recurrent"), ("x060_tiny", "parallel")])
def test_logits_tool_matches_official(tmp_path, name, mode):
  """End to end on a torch-written checkpoint: version detected from the keys, state in the official layout."""
  z = np.load(FIXTURES / f"{name}.npz")
  np.save(tmp_path / "tokens.npy", z["tokens"])
  out = tmp_path / "out.npz"
  subprocess.run([sys.executable, "-m", "rwkvjax.cli.logits", "--checkpoint", str(FIXTURES / f"{name}.pth"),
                  "--tokens", str(tmp_path / "tokens.npy"), "--out", str(out), "--mode", mode], check=True)
  got = np.load(out)
  np.testing.assert_allclose(got["logits"], z[f"logits_{mode}"], atol=1e-4, rtol=1e-4)
  prefix = "parallel_" if mode == "parallel" else ""
  for key in STATE_KEYS:
    np.testing.assert_allclose(got[key], z[prefix + key], atol=1e-4, rtol=1e-4, err_msg=key)
