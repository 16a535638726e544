"""HF checkpoints: safetensors I/O, import (single file, sharded, bf16/fp16/fp32), export round trip, errors,
and the logits / generate tools on HF model directories."""

import json
import pathlib
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from rwkvjax.config.transformer import ConfigError
from rwkvjax.convert import hf
from rwkvjax.models.params import flatten

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE_NAMES = ["hf_qwen2_gqa", "hf_llama_tied", "hf_llama_bias"]


def copy_fixture(name, tmp_path):
  dst = tmp_path / name
  shutil.copytree(FIXTURES / name, dst)
  return dst


# ---------------------------------------------------------------------------------------------------- safetensors

def test_safetensors_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
             "b": rng.standard_normal((7,)).astype(ml_dtypes.bfloat16),
             "c": rng.standard_normal((2, 2, 3)).astype(np.float16),
             "ids": np.arange(5, dtype=np.int64), "empty": np.zeros((0, 4), np.float32),
             "scalar": np.array(2.5, np.float32)}
  path = tmp_path / "t.safetensors"
  hf.write_safetensors(path, tensors)
  raw = path.read_bytes()
  n = int.from_bytes(raw[:8], "little")
  header = json.loads(raw[8:8 + n])
  assert n % 8 == 0 and header["__metadata__"] == {"format": "pt"}
  assert header["b"]["dtype"] == "BF16" and header["c"]["dtype"] == "F16" and header["ids"]["dtype"] == "I64"
  got = hf.read_safetensors(path)
  assert list(got) == list(tensors)
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    np.testing.assert_array_equal(got[k], v)


def test_reads_files_written_by_transformers():
  sd = hf.read_safetensors(FIXTURES / "hf_llama_bias" / "model.safetensors")
  assert sd["model.layers.1.self_attn.q_proj.weight"].shape == (128, 64)
  assert all(v.dtype == np.float16 for v in sd.values())
  sharded = hf.load_hf_state_dict(FIXTURES / "hf_llama_tied")
  assert len(sharded) == 2 * 9 + 2 and "lm_head.weight" not in sharded
  assert all(v.dtype == ml_dtypes.bfloat16 for v in sharded.values())


@pytest.mark.parametrize("corrupt, match", [
    (lambda raw: raw[:5], "too short"),
    (lambda raw: (10 ** 9).to_bytes(8, "little") + raw[8:], "exceeds the file size"),
    (lambda raw: raw[:-4], "do not hold"),
])
def test_corrupt_safetensors_are_named(tmp_path, corrupt, match):
  path = tmp_path / "x.safetensors"
  hf.write_safetensors(path, {"w": np.ones((4, 4), np.float32)})
  path.write_bytes(corrupt(path.read_bytes()))
  with pytest.raises(hf.CheckpointError, match=match):
    hf.read_safetensors(path)


# ---------------------------------------------------------------------------------------------------- import/export

@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_import_is_exact_and_export_round_trips(tmp_path, name):
  params, cfg = hf.load_hf(FIXTURES / name)
  sd = hf.load_hf_state_dict(FIXTURES / name)
  file_dtype = next(iter(sd.values())).dtype
  # import is exact: every HF tensor is one slice of a stacked parameter
  q = params["model"]["layers"]["self_attn"]["q_proj"]["weight"]
  assert q.dtype == np.float32 and q.shape == (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim,
                                               cfg.hidden_size)
  np.testing.assert_array_equal(q[1].reshape(-1, cfg.hidden_size),
                                sd["model.layers.1.self_attn.q_proj.weight"].astype(np.float32))
  # export in the file's dtype gives back the same tensors, names, shapes and dtypes
  dtype = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(file_dtype, "bfloat16")
  shard = 50_000 if name == "hf_qwen2_gqa" else None
  out = tmp_path / "export"
  files = hf.save_hf(params, cfg, out, dtype=dtype, max_shard_size=shard)
  assert files[-1] == "config.json" and (("model.safetensors.index.json" in files) == (shard is not None))
  sd2 = hf.load_hf_state_dict(out)
  assert sorted(sd2) == sorted(sd)
  for k in sd:
    assert sd2[k].dtype == sd[k].dtype and sd2[k].shape == sd[k].shape, k
    np.testing.assert_array_equal(sd2[k], sd[k], err_msg=k)
  params2, cfg2 = hf.load_hf(out)
  assert cfg2 == cfg
  for (k, a), (_, b) in zip(sorted(flatten(params).items()), sorted(flatten(params2).items())):
    np.testing.assert_array_equal(a, b, err_msg=k)
  exported = json.loads((out / "config.json").read_text())
  assert exported["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[cfg.model_type]]


def test_bf16_params_for_a_frozen_teacher():
  params, cfg = hf.load_hf(FIXTURES / "hf_llama_tied", dtype=ml_dtypes.bfloat16, compute_dtype="bfloat16")
  assert cfg.compute_dtype == "bfloat16"
  assert all(x.dtype == ml_dtypes.bfloat16 for x in flatten(params).values())


def test_export_rounds_to_bf16_by_default(tmp_path):
  params, cfg = hf.load_hf(FIXTURES / "hf_qwen2_gqa")
  hf.save_hf(params, cfg, tmp_path / "out")
  sd = hf.load_hf_state_dict(tmp_path / "out")
  assert all(v.dtype == ml_dtypes.bfloat16 for v in sd.values())
  w = params["model"]["embed_tokens"]["weight"]
  np.testing.assert_array_equal(sd["model.embed_tokens.weight"], w.astype(ml_dtypes.bfloat16))


# ---------------------------------------------------------------------------------------------------- errors

def _rewrite(model_dir, edit):
  path = model_dir / "model.safetensors"
  sd = {k: np.array(v) for k, v in hf.read_safetensors(path).items()}
  edit(sd)
  hf.write_safetensors(path, sd)


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"),
     r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(expected shape \[96, 64\]\)"),
    (lambda sd: sd.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((32, 64), np.float16)}),
     r"tensor 'model.layers.0.self_attn.k_proj.weight' has shape \[32, 64\]; expected \[64, 64\]"),
    (lambda sd: sd.update({"model.layers.2.mlp.up_proj.weight": np.zeros((96, 64), np.float16)}),
     r"unexpected tensor 'model.layers.2.mlp.up_proj.weight' with shape \[96, 64\]"),
    (lambda sd: sd.pop("model.layers.0.self_attn.o_proj.bias"), r"missing tensor 'model.layers.0.self_attn.o_proj.bias'"),
    (lambda sd: sd.update({"model.norm.weight": np.zeros(64, np.int64)}), "has dtype int64; expected a float"),
])
def test_bad_tensors_are_named(tmp_path, edit, match):
  model_dir = copy_fixture("hf_llama_bias", tmp_path)
  _rewrite(model_dir, edit)
  with pytest.raises(hf.CheckpointError, match=match):
    hf.load_hf(model_dir)


def test_ignored_and_tied_extras_are_accepted(tmp_path):
  model_dir = copy_fixture("hf_llama_bias", tmp_path)
  _rewrite(model_dir, lambda sd: sd.update({"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(16, np.float32)}))
  hf.load_hf(model_dir)
  tied_dir = copy_fixture("hf_llama_tied", tmp_path)
  index = json.loads((tied_dir / "model.safetensors.index.json").read_text())
  hf.write_safetensors(tied_dir / "extra.safetensors", {"lm_head.weight": np.zeros((200, 64), np.float32)})
  index["weight_map"]["lm_head.weight"] = "extra.safetensors"
  (tied_dir / "model.safetensors.index.json").write_text(json.dumps(index))
  params, cfg = hf.load_hf(tied_dir)
  assert cfg.tie_word_embeddings and "lm_head" not in params


def test_bad_directories_are_named(tmp_path):
  model_dir = copy_fixture("hf_llama_tied", tmp_path)
  (model_dir / "model-00002-of-00003.safetensors").unlink()
  with pytest.raises(hf.CheckpointError, match="names shard 'model-00002-of-00003.safetensors', which does not exist"):
    hf.load_hf(model_dir)
  (model_dir / "model.safetensors.index.json").unlink()
  with pytest.raises(hf.CheckpointError, match="neither model.safetensors nor model.safetensors.index.json"):
    hf.load_hf(model_dir)
  config = json.loads((model_dir / "config.json").read_text())
  config["rope_parameters"]["rope_type"] = "dynamic"
  (model_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConfigError, match=f"{model_dir}: .*rope_type='dynamic' is not supported"):
    hf.load_hf(model_dir)
  assert not hf.is_hf_model_dir(FIXTURES / "x070_small.pth") and hf.is_hf_model_dir(FIXTURES / "hf_llama_tied")


def test_export_rejects_params_that_do_not_fit(tmp_path):
  params, cfg = hf.load_hf(FIXTURES / "hf_llama_bias")
  with pytest.raises(hf.CheckpointError, match="params lack 'lm_head.weight'"):
    hf.save_hf({k: v for k, v in params.items() if k != "lm_head"}, cfg, tmp_path / "o")
  with pytest.raises(hf.CheckpointError, match="params have 'lm_head.weight', which the model"):
    hf.save_hf(params, cfg.replace(tie_word_embeddings=True), tmp_path / "o")
  assert not (tmp_path / "o" / "config.json").exists()


# ---------------------------------------------------------------------------------------------------- tools

def test_logits_tool_on_hf_directories(tmp_path):
  """Parallel mode on the sharded bf16 Llama, recurrent (KV cache) mode on the Qwen2 model: both match
  transformers. (Two subprocesses: the tool end to end.)"""
  for name, mode in (("hf_llama_tied", "parallel"), ("hf_qwen2_gqa", "recurrent")):
    z = np.load(FIXTURES / f"{name}.npz")
    np.save(tmp_path / "tokens.npy", z["tokens"][1])
    out = tmp_path / f"{name}.npz"
    subprocess.run([sys.executable, "-m", "rwkvjax.cli.logits", "--checkpoint", str(FIXTURES / name),
                    "--tokens", str(tmp_path / "tokens.npy"), "--out", str(out), "--mode", mode], check=True)
    got = np.load(out)
    assert list(got.keys()) == ["logits"] and got["logits"].dtype == np.float32
    np.testing.assert_allclose(got["logits"], z["logits"][1], atol=1e-4, rtol=1e-3, err_msg=f"{name} {mode}")


def test_generate_tool_on_hf_directories():
  from rwkvjax.inference.text import sample_hf
  new, text = sample_hf(str(FIXTURES / "hf_llama_tied"), prompt="w5 w17 w33", token_ids=None, max_new_tokens=6,
                        temperature=0.0, top_p=1.0)
  assert len(new) <= 6 and text == " ".join(f"w{t}" for t in new)  # word-level tokenizer.json; eos id 2 cuts
  ids, none = sample_hf(str(FIXTURES / "hf_qwen2_gqa"), prompt=None, token_ids=[5, 6, 7], max_new_tokens=4,
                        temperature=1.0, top_p=0.9, seed=1)
  assert none is None and len(ids) == 4 and all(0 <= t < 200 for t in ids)
  with pytest.raises(ValueError, match="has no tokenizer.json .* --tokens"):
    sample_hf(str(FIXTURES / "hf_qwen2_gqa"), prompt="hi", token_ids=None, max_new_tokens=2, temperature=0.0,
              top_p=1.0)
  with pytest.raises(ValueError, match=r"must be in \[0, 200\)"):
    sample_hf(str(FIXTURES / "hf_qwen2_gqa"), prompt=None, token_ids=[5, 900], max_new_tokens=2, temperature=0.0,
              top_p=1.0)
