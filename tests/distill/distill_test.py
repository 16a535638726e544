"""ARWKV / RADLADS distillation on CPU with tiny random Qwen2 teachers (GQA): student construction, the chunked
KL, the three stages through the trainer (frozen leaves bit-identical, losses fall), export, generation."""

import dataclasses
import json
import os

import fiddle as fdl
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rwkvjax.config.model import ModelConfig
from rwkvjax.config.train import MeshConfig
from rwkvjax.convert.torch_zip import load_state_dict
from rwkvjax.distill import export, losses
from rwkvjax.distill import student as st
from rwkvjax.distill.tasks import DistillStage1Config, DistillStage2Config, DistillStage3Config
from rwkvjax.inference.generate import generate
from rwkvjax.models import get_model, rwkv7
from rwkvjax.models.params import flatten, logical_axes, param_shapes
from rwkvjax.training import sharding, trainer
from tests.distill.conftest import STUDENT, TEACHER, random_teacher, train_config

FORWARD = jax.jit(st.forward, static_argnums=1)
STEP = jax.jit(st.step, static_argnums=1)
FROM_TEACHER = jax.jit(st.from_teacher, static_argnums=1)


def metrics(workdir):
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if "loss" in rec:
        out[rec["step"]] = rec["loss"]
  return [out[k] for k in sorted(out)]


def test_student_from_gqa_teacher_shapes_state_and_generation():
  teacher = random_teacher()
  cfg = STUDENT.replace(gate="arwkv", group_norm=True)
  s = FROM_TEACHER(teacher, cfg, jax.random.key(1))
  shapes = {k: v.shape for k, v in flatten(s).items()}
  assert shapes["model.layers.time_mixer.receptance.weight"] == (2, 64, 64)
  assert shapes["model.layers.time_mixer.r_k"] == (2, 4, 16)                  # H = 64 / 16 heads, no kv sharing
  assert shapes["model.layers.time_mixer.w1"] == (2, 64, 8) and shapes["model.layers.time_mixer.g2"] == (2, 8, 64)
  assert not any("self_attn" in k or "q_proj" in k for k in shapes)
  assert shapes["lm_head.weight"] == (97, 64)
  np.testing.assert_array_equal(s["model"]["layers"]["mlp"]["up_proj"]["weight"],
                                teacher["model"]["layers"]["mlp"]["up_proj"]["weight"])
  fresh = jax.eval_shape(lambda k: st.init(cfg, k), jax.random.key(0))
  assert {k: v.shape for k, v in flatten(fresh).items()} == shapes
  np.testing.assert_array_equal(s["model"]["layers"]["time_mixer"]["g2"], 0)   # arwkv gate: g = 1 at init
  np.testing.assert_array_equal(s["model"]["layers"]["time_mixer"]["x_g"], 1)
  # recurrent state: single steps from the zero state give the parallel forward's logits
  tok = jax.random.randint(jax.random.key(2), (2, 8), 0, 97)
  logits, _ = FORWARD(s, cfg, tok)
  state, outs = st.init_state(cfg, 2), []
  for t in range(8):
    lg, state = STEP(s, cfg, tok[:, t], state)
    outs.append(lg[:, None])
  np.testing.assert_allclose(jnp.concatenate(outs, 1), logits, atol=2e-5, rtol=1e-4)
  assert get_model("arwkv7") is st
  new, _ = generate(s, cfg, tok[:, :3], jax.random.key(0), max_new_tokens=3, temperature=0.0)
  np.testing.assert_array_equal(new[:, 0], jnp.argmax(logits[:, 2], -1))


def test_time_mix_with_rwkv7_options_is_rwkv7_time_mix():
  """gate="rwkv7" + group_norm is RWKV-7's own time mix, so the shared math is checked against rwkv7.py."""
  cfg = STUDENT.replace(gate="rwkv7", group_norm=True)
  mcfg = ModelConfig(n_layer=2, n_embd=64, vocab_size=97, head_size=16, d_decay_lora=8, d_aaa_lora=8, d_mv_lora=8,
                     d_gate_lora=8)
  att = jax.tree.map(lambda a: a[1], jax.jit(st.init_time_mixers, static_argnums=0)(cfg, jax.random.key(3)))
  att = jax.tree.map(lambda a: a + 0.05 * np.random.default_rng(4).standard_normal(a.shape, np.float32), att)
  ks = jax.random.split(jax.random.key(5), 4)
  x, v_first = jax.random.normal(ks[0], (2, 8, 64)), jax.random.normal(ks[1], (2, 8, 64))
  prev, wkv = jax.random.normal(ks[2], (2, 64)), 0.1 * jax.random.normal(ks[3], (2, 4, 16, 16))
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 2], [1] * 8])
  starts = jnp.asarray(np.array([[0, 0, 0, 1, 0, 0, 0, 0], [0] * 8], bool))
  ours = jax.jit(st.time_mix, static_argnums=(1, 9))(att, cfg, x, prev, wkv, v_first, False, starts, seg, "reference")
  ref = jax.jit(rwkv7.time_mix, static_argnums=(1, 9))(att, mcfg, x, prev, wkv, v_first, False, starts, seg,
                                                       "reference")
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_radlads_copy_init_and_hybrid_layers():
  teacher = random_teacher()
  cfg = STUDENT.replace(init_mode="teacher", rwkv_layers=(1,))
  s = FROM_TEACHER(teacher, cfg, jax.random.key(0))
  tm, att = s["model"]["layers"]["time_mixer"], teacher["model"]["layers"]["self_attn"]
  assert cfg.layers == (1,) and cfg.attention_layers == (0,)
  np.testing.assert_array_equal(tm["receptance"]["weight"][0], att["q_proj"]["weight"][1].reshape(64, 64))
  k = att["k_proj"]["weight"][1]  # [2 kv heads, 16, 64] -> each shared by 2 query heads
  np.testing.assert_array_equal(tm["key"]["weight"][0], np.repeat(k, 2, axis=0).reshape(64, 64))
  np.testing.assert_array_equal(tm["output"]["weight"][0], att["o_proj"]["weight"][1].reshape(64, 64))
  np.testing.assert_array_equal(s["model"]["layers"]["self_attn"]["q_proj"]["weight"][0], att["q_proj"]["weight"][0])
  tok = jax.random.randint(jax.random.key(2), (2, 8), 0, 97)
  logits, _ = FORWARD(s, cfg, tok)
  assert logits.shape == (2, 8, 97) and np.isfinite(logits).all()
  with pytest.raises(ValueError, match="only supported for students whose every layer is RWKV"):
    st.forward(s, cfg, tok, st.init_state(cfg, 2))
  # export round trip of a hybrid: ARWKV HF names for the time mixer, HF names for the kept attention
  sd = export.state_dict(jax.tree.map(np.asarray, s), cfg, "float32")
  assert "model.layers.1.self_attn.time_mixer.receptance.weight" in sd and "model.layers.0.self_attn.q_proj.bias" in sd
  assert sd["model.layers.1.self_attn.time_mixer.x_r"].shape == (1, 1, 64)
  back = export.params_from_state_dict(sd, cfg)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, s))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_kl_and_ce_equal_dense(temperature):
  ks = jax.random.split(jax.random.key(temperature == 2.0), 5)
  B, T, C, Ct, V, Vt = 2, 13, 16, 24, 97, 101          # teacher vocab larger (truncated), V % chunk != 0
  hs, ws = jax.random.normal(ks[0], (B, T, C)), jax.random.normal(ks[1], (V, C))
  ht, wt = jax.random.normal(ks[2], (B, T, Ct)), jax.random.normal(ks[3], (Vt, Ct))
  tg = jax.random.randint(ks[4], (B, T), 0, V)
  mask = (jnp.arange(T) < 11).astype(jnp.float32)[None].repeat(B, 0)

  def total(fn, hs, ws, **kw):
    kl, ce = fn(hs, ws, ht, wt, tg, temperature=temperature, **kw)
    return losses.masked_mean(kl, mask)[0] + 0.3 * losses.masked_mean(ce, mask)[0], (kl, ce)

  chunked = jax.jit(jax.value_and_grad(lambda h, w: total(losses.chunked_kl_ce, h, w, token_chunk=5, vocab_chunk=16),
                                       argnums=(0, 1), has_aux=True))
  dense = jax.jit(jax.value_and_grad(lambda h, w: total(losses.dense_kl_ce, h, w), argnums=(0, 1), has_aux=True))
  (v1, (kl1, ce1)), g1 = chunked(hs, ws)
  (v2, (kl2, ce2)), g2 = dense(hs, ws)
  np.testing.assert_allclose(kl1, kl2, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(ce1, ce2, atol=2e-5, rtol=1e-5)
  assert float(kl2.min()) > 0.1
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_alignment_loss_is_arwkv_scaling():
  a, b = jnp.ones((1, 2, 4)), jnp.zeros((1, 2, 4))
  np.testing.assert_allclose(losses.alignment_loss(a, b), 1.0)     # ||1||_2 = 2, times 4^-1/2
  assert float(jax.grad(lambda x: losses.alignment_loss(x, x))(a).sum()) == 0.0  # no nan at zero distance
  np.testing.assert_allclose(losses.alignment_loss(a, b, jnp.asarray([[1.0, 0.0]]), "mse"), 1.0)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, teacher_dir, distill_data):
  path, teacher = teacher_dir
  workdir = tmp_path_factory.mktemp("stage1")
  cfg = train_config(distill_data, DistillStage1Config(teacher_path=path), my_exit_tokens=32 * 4 * 16,
                     optim=dataclasses.replace(train_config(distill_data, None).optim, lr_init=1e-2, lr_final=3e-3))
  result = trainer.train(cfg, str(workdir))
  return workdir, result, teacher


def test_stage1_aligns_time_mixers_and_leaves_the_teacher_bit_identical(stage1):
  workdir, result, teacher = stage1
  losses_ = metrics(workdir)
  assert np.mean(losses_[-3:]) < 0.8 * np.mean(losses_[:3]), losses_
  jax.tree.map(np.testing.assert_array_equal, result.params["teacher"], teacher)   # frozen: bit-identical
  assert set(result.params["student"]["model"]["layers"]) == {"time_mixer"}
  assert result.eval_loss is not None and np.isfinite(result.eval_loss)
  # export: the whole student (teacher skeleton + trained time mixers), HF-style dir and RWKV-named .pth
  params, cfg = export.load_student(workdir / "student-final")
  assert cfg == STUDENT
  np.testing.assert_array_equal(params["model"]["layers"]["time_mixer"]["w0"],
                                result.params["student"]["model"]["layers"]["time_mixer"]["w0"])
  np.testing.assert_array_equal(params["lm_head"]["weight"], teacher["lm_head"]["weight"])
  sd = load_state_dict(workdir / "student-final.pth")
  for key in ("emb.weight", "blocks.1.att.receptance.weight", "blocks.0.att.x_r", "blocks.0.ln1.weight",
              "blocks.1.ffn.down.weight", "ln_out.weight", "head.weight"):
    assert key in sd, key
  assert sd["blocks.0.att.x_r"].shape == (1, 1, 64) and sd["blocks.0.att.r_k"].shape == (4, 16)


@pytest.fixture(scope="module")
def stage2(tmp_path_factory, stage1, teacher_dir, distill_data):
  workdir = tmp_path_factory.mktemp("stage2")
  task = DistillStage2Config(teacher_path=teacher_dir[0], student_path=str(stage1[0] / "student-final"),
                             freeze_mlp=True, ce_weight=0.1, token_chunk=48, vocab_chunk=40)
  cfg = train_config(distill_data, task, mesh=MeshConfig(data=1, fsdp=2, tensor=2))  # 4 devices, one jitted step
  return workdir, trainer.train(cfg, str(workdir)), cfg


def test_stage2_kl_falls_with_frozen_teacher_and_mlp(stage1, stage2, teacher_dir):
  workdir, result, cfg = stage2
  # teacher and student are sharded by the same logical-axis rules over one mesh
  specs = cfg.task.build(cfg).specs
  mesh = sharding.make_mesh(cfg.mesh)
  shard = flatten(sharding.tree_shardings(logical_axes(specs), param_shapes(specs, cfg.model), mesh))
  assert shard["teacher.model.layers.self_attn.q_proj.weight"].spec == P(None, "tensor", None, "fsdp")
  assert shard["student.model.layers.time_mixer.receptance.weight"].spec == P(None, "tensor", "fsdp")
  assert shard["student.model.layers.mlp.up_proj.weight"].spec == shard["teacher.model.layers.mlp.up_proj.weight"].spec
  losses_ = metrics(workdir)
  assert np.mean(losses_[-3:]) < 0.85 * np.mean(losses_[:3]), losses_
  start, _ = export.load_student(stage1[0] / "student-final")
  jax.tree.map(np.testing.assert_array_equal, result.params["teacher"], teacher_dir[1])
  jax.tree.map(np.testing.assert_array_equal, result.params["student"]["model"]["layers"]["mlp"],
               start["model"]["layers"]["mlp"])                                # freeze_mlp
  assert not np.array_equal(result.params["student"]["lm_head"]["weight"], start["lm_head"]["weight"])
  assert stage1[1].eval_loss > result.eval_loss            # the student's held-out CE moved toward the teacher's


def test_stage3_sft_under_loss_mask_from_stage2(tmp_path, stage2, distill_data):
  student_dir = str(stage2[0] / "student-final")
  task = DistillStage3Config(student_path=student_dir, token_chunk=64, vocab_chunk=64)
  cfg = train_config(distill_data, task, my_exit_tokens=32 * 4 * 2)
  built = task.build(cfg)
  params = {"student": export.load_student(student_dir)[0]}
  batch = {"input_ids": jnp.asarray(np.arange(64).reshape(2, 32) % 60), "targets": jnp.ones((2, 32), jnp.int32)}
  mask = np.zeros((2, 32), np.float32)
  mask[:, 5:9] = 1
  loss, count = jax.jit(built.loss)(params, {**batch, "loss_mask": jnp.asarray(mask)})
  logits, _ = FORWARD(params["student"], STUDENT, batch["input_ids"])
  ref = -jax.nn.log_softmax(logits, -1)[:, 5:9, 1].mean()
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  assert count == 8
  result = trainer.train(cfg, str(tmp_path))
  assert result.status == "finished" and np.isfinite(result.last_loss)
  assert os.path.isdir(tmp_path / "student-final")


def test_experiment_configs_build(teacher_dir, stage1):
  import experiments
  from experiments import distill
  assert {"distill_teacher", "distill_stage1", "distill_stage2", "distill_stage3"} <= set(experiments.CONFIGS)
  cfg = fdl.build(distill.distill_stage1(teacher=teacher_dir[0]))
  assert cfg.model.base == TEACHER.replace(compute_dtype=cfg.model.compute_dtype) and cfg.task.teacher_path
  student_dir = str(stage1[0] / "student-final")
  cfg2 = fdl.build(distill.distill_stage2(teacher=teacher_dir[0], student=student_dir))
  assert cfg2.task.student_path == student_dir and cfg2.model.head_size == 16
  cfg3 = fdl.build(distill.distill_stage3(student=student_dir))
  assert cfg3.task.student_path == student_dir
