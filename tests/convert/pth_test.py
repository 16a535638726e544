"""RWKV-LM .pth <-> params: torch-written files, exact round trips, clear errors, safe and atomic I/O."""

import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from tests.conftest import FIXTURES
from rwkvjax.convert import rwkv_pth, torch_zip


def fixture_state_dict(name="small"):
  z = np.load(FIXTURES / f"x070_{name}.npz")
  return {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}


@pytest.mark.parametrize("path,dtype,name", [("x070_small.pth", np.float32, "small"),
                                             ("x070_small_bf16.pth", ml_dtypes.bfloat16, "small"),
                                             ("x070_tiny_fp16.pth", np.float16, "tiny")])
def test_reads_torch_written_files(path, dtype, name):
  sd = torch_zip.load_state_dict(FIXTURES / path)
  want = fixture_state_dict(name)
  assert list(sd) == list(want)
  for k, v in sd.items():
    assert v.dtype == dtype and v.shape == want[k].shape, k
    np.testing.assert_array_equal(v, want[k].astype(dtype), err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_round_trip_is_exact(tmp_path, dtype):
  src = torch_zip.load_state_dict(FIXTURES / "x070_small_bf16.pth") if dtype == "bfloat16" else \
      {k: v.astype(rwkv_pth.PTH_DTYPES[dtype]) for k, v in fixture_state_dict().items()}
  params, cfg = rwkv_pth.params_from_state_dict(src)
  rwkv_pth.save_pth(params, cfg, tmp_path / "out.pth", dtype=dtype)
  back = torch_zip.load_state_dict(tmp_path / "out.pth")
  assert list(back) == list(src)
  for k in src:
    assert back[k].dtype == src[k].dtype
    np.testing.assert_array_equal(back[k], src[k], err_msg=k)
  params2, cfg2 = rwkv_pth.load_pth(tmp_path / "out.pth")
  assert cfg2 == cfg


def test_config_is_read_from_the_checkpoint():
  _, cfg = rwkv_pth.params_from_state_dict(fixture_state_dict("ranks"))
  assert (cfg.n_layer, cfg.n_embd, cfg.head_size, cfg.vocab_size) == (2, 32, 16, 53)
  assert cfg.lora_dims == {"w": 24, "a": 40, "v": 16, "g": 56}
  assert cfg.ffn_dim == 128


def test_block0_value_lora_may_be_absent():
  sd = fixture_state_dict()
  for k in ("v0", "v1", "v2"):
    del sd[f"blocks.0.att.{k}"]
  params, _ = rwkv_pth.params_from_state_dict(sd)
  assert not np.any(params["blocks"]["att"]["v1"][0])


@pytest.mark.parametrize("case,match", [
    ("missing", r"missing key 'blocks.1.att.k_k' \(expected shape \(1, 1, 128\)\)"),
    ("unexpected", r"unexpected key 'blocks.0.att.bogus'"),
    ("shape", r"key 'blocks.1.att.w0' has shape \(1, 1, 64\); expected \(1, 1, 128\)"),
    ("version", r"RWKV x060"),
])
def test_bad_state_dicts_name_the_key(case, match):
  sd = fixture_state_dict()
  if case == "missing":
    del sd["blocks.1.att.k_k"]
  elif case == "unexpected":
    sd["blocks.0.att.bogus"] = np.zeros(3, np.float32)
  elif case == "shape":
    sd["blocks.1.att.w0"] = np.zeros((1, 1, 64), np.float32)
  else:
    sd = {"blocks.0.att.time_maa_x": np.zeros(3)}
  with pytest.raises(rwkv_pth.CheckpointError, match=match):
    rwkv_pth.params_from_state_dict(sd)


def test_load_pth_error_names_the_file(tmp_path):
  sd = fixture_state_dict()
  del sd["head.weight"]
  torch_zip.save_state_dict(sd, tmp_path / "broken.pth")
  with pytest.raises(rwkv_pth.CheckpointError, match=r"broken\.pth: missing key 'head.weight'"):
    rwkv_pth.load_pth(tmp_path / "broken.pth")
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    rwkv_pth.load_pth(tmp_path / "nope.pth")


def test_restricted_unpickler_refuses_code(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
  with pytest.raises(torch_zip.PthFormatError, match="refuses to load global"):
    torch_zip.load_state_dict(path)


def test_non_zip_file_is_rejected(tmp_path):
  path = tmp_path / "legacy.pth"
  path.write_bytes(b"\x80\x02not a zip")
  with pytest.raises(torch_zip.PthFormatError, match="not a torch.save zip archive"):
    torch_zip.load_state_dict(path)


def test_failed_save_leaves_nothing(tmp_path):
  path = tmp_path / "out.pth"
  with pytest.raises(ValueError, match="dtype complex64"):
    torch_zip.save_state_dict({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.complex64)}, path)
  assert list(tmp_path.iterdir()) == []


def test_reads_strided_tensors(tmp_path):
  """torch.save of a non-contiguous view stores the base storage, an offset and strides."""

  class StridedView:
    def __reduce__(self):
      return (torch_zip._Global("torch._utils", "_rebuild_tensor_v2"),
              (torch_zip._StorageRef("0", base), 1, (3, 2), (1, 4), False, {}))

  base = np.arange(12, dtype=np.float32)
  buf = io.BytesIO()
  torch_zip._TorchPickler(buf, protocol=2).dump({"t": StridedView()})
  path = tmp_path / "strided.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("strided/data.pkl", buf.getvalue())
    zf.writestr("strided/data/0", base.tobytes())
  got = torch_zip.load_state_dict(path)["t"]
  np.testing.assert_array_equal(got, np.lib.stride_tricks.as_strided(base[1:], (3, 2), (4, 16)))
