"""The logits tool end to end, on a checkpoint file written by torch."""

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import FIXTURES


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_logits_tool_matches_official(tmp_path, mode):
  z = np.load(FIXTURES / "x070_small.npz")
  np.save(tmp_path / "tokens.npy", z["tokens"])
  out = tmp_path / "out.npz"
  subprocess.run([sys.executable, "-m", "rwkvjax.cli.logits", "--checkpoint", str(FIXTURES / "x070_small.pth"),
                  "--tokens", str(tmp_path / "tokens.npy"), "--out", str(out), "--mode", mode], check=True)
  got = np.load(out)
  assert got["logits"].dtype == np.float32 and got["logits"].shape == z[f"logits_{mode}"].shape
  np.testing.assert_allclose(got["logits"], z[f"logits_{mode}"], atol=1e-4, rtol=1e-4)
  prefix = "parallel_" if mode == "parallel" else ""
  for key in ("state_att_x_prev", "state_wkv", "state_ffn_x_prev"):
    np.testing.assert_allclose(got[key], z[prefix + key], atol=1e-4, rtol=1e-4, err_msg=key)


def test_logits_tool_rejects_out_of_vocab_tokens(tmp_path):
  np.save(tmp_path / "tokens.npy", np.array([1, 2, 999]))
  proc = subprocess.run([sys.executable, "-m", "rwkvjax.cli.logits", "--checkpoint", str(FIXTURES / "x070_small.pth"),
                         "--tokens", str(tmp_path / "tokens.npy"), "--out", str(tmp_path / "o.npz")],
                        capture_output=True, text=True)
  assert proc.returncode != 0
  assert "ids must be in [0, 128)" in proc.stderr
  assert not (tmp_path / "o.npz").exists()
