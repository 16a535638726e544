"""State tuning and adapters: formulas, merge/unmerge, RWKV-PEFT files, frozen parameters, trainer runs."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from rwkvjax.config.model import ModelConfig
from rwkvjax.config.train import DataConfig, MeshConfig, OptimConfig, TrainConfig
from rwkvjax.convert.rwkv_pth import load_pth, save_pth
from rwkvjax.convert.torch_zip import load_state_dict
from rwkvjax.cli import generate as generate_cli
from rwkvjax.inference.text import sample_text
from rwkvjax.inference.generate import generate
from rwkvjax.models import get_model
from rwkvjax.models.params import flatten, param_shapes, unflatten
from rwkvjax.peft import PeftConfig, StateTuneConfig, adapters, files, state_tuning
from rwkvjax.training import trainer
from rwkvjax.training.optimizer import make_optimizer
from rwkvjax.training.step import TrainState, make_train_step

TINY = ModelConfig(n_layer=2, n_embd=64, vocab_size=64, head_size=32)


def rand(key, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def random_params(cfg, seed=0):
  """Random parameters of the model's shapes (cheaper to compile than the official init, whose zero output
  matrices would also hide the time mix and so the state): 0.1 N(0, 1), plus 1 on norm weights."""
  shapes = flatten(param_shapes(get_model(cfg.version).param_specs(cfg), cfg))
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  norm_weight = lambda name: 1.0 if "ln" in name and name.endswith("weight") else 0.0
  return unflatten({name: 0.1 * jax.random.normal(k, x.shape) + norm_weight(name)
                    for (name, x), k in zip(sorted(shapes.items()), keys)})


def params_of(task, seed=0):
  """A task's params on random base weights (jitted `_add_own`: the adapters' / state's own init)."""
  return jax.jit(task._add_own)(random_params(task.cfg.model, seed), jax.random.key(seed + 1))


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward(params, cfg, tokens, state=None, segment_ids=None):
  return get_model(cfg.version).forward(params, cfg, tokens, state, segment_ids=segment_ids, impl="reference")[0]


# ----------------------------------------------------------------------------------------------------
# Adapter formulas
# ----------------------------------------------------------------------------------------------------

def test_bone_is_a_shared_shard_sum_and_pads_the_last_shard():
  out_f, in_f, r = 6, 10, 4  # in % r = 2: the last shard is partial
  W, D, x = rand(0, (out_f, in_f)), rand(1, (r, out_f)), rand(2, (3, in_f))
  xp = jnp.pad(x, ((0, 0), (0, 2)))  # RWKV-PEFT's forward: zero-pad x, sum the r-wide shards, @ D
  want = x @ W.T + xp.reshape(3, 3, r).sum(1) @ D
  got = x @ adapters.merge("bone", {"disha": D}, W).T
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bat_is_blockwise_affine_indexed_by_input_block():
  out_f, in_f, r = 8, 12, 4
  W, D = rand(0, (out_f, in_f)), rand(1, (in_f // r, r, r))
  want = np.array(W)
  for a in range(out_f // r):
    for b in range(in_f // r):
      blk = np.array(W[a * r:(a + 1) * r, b * r:(b + 1) * r])
      want[a * r:(a + 1) * r, b * r:(b + 1) * r] = blk + blk @ np.array(D[b]) + np.array(D[b])
  np.testing.assert_allclose(adapters.merge("bat", {"disha": D}, W), want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="bat r=5 must divide"):
    adapters.check_rank("bat", 5, adapters.Target("blocks.att.key.weight", (8, 12), ("att", "embed"), "k"))


@pytest.mark.parametrize("method", adapters.METHODS)
def test_merge_unmerge_round_trip(method):
  W = rand(0, (2, 8, 12))  # two stacked layers
  tensors = {"lora": dict(lora_A=rand(1, (2, 4, 12)), lora_B=rand(2, (2, 8, 4))),
             "pissa": dict(lora_A=rand(1, (2, 4, 12)), lora_B=rand(2, (2, 8, 4)), init_lora_A=rand(3, (2, 4, 12)),
                           init_lora_B=rand(4, (2, 8, 4))),
             "bone": dict(disha=rand(1, (2, 5, 8))), "bat": dict(disha=rand(1, (2, 3, 4, 4), 0.1))}[method]
  merged = adapters.merge(method, tensors, W, alpha=8.0)
  assert not np.allclose(merged, W)
  np.testing.assert_allclose(adapters.unmerge(method, tensors, merged, alpha=8.0), W, atol=1e-5)
  if method == "lora":
    np.testing.assert_allclose(merged - W, 2.0 * tensors["lora_B"] @ tensors["lora_A"], rtol=1e-5, atol=1e-5)


def test_pissa_init_takes_the_principal_part():
  k = jax.random.split(jax.random.key(0), 3)
  low = jax.random.normal(k[0], (24, 3)) @ jnp.diag(jnp.asarray([5., 3., 2.])) @ jax.random.normal(k[1], (3, 20))
  W = low + 0.01 * jax.random.normal(k[2], (24, 20))
  A, B = adapters.pissa_init(W, 3, 4, jax.random.key(1))
  U, S, Vh = np.linalg.svd(np.asarray(W))
  best = (U[:, :3] * S[:3]) @ Vh[:3]
  np.testing.assert_allclose(B @ A, best, atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(A, axis=1) ** 2, S[:3], rtol=1e-3)  # A = sqrt(S) Vh
  tensors = dict(lora_A=A, lora_B=B, init_lora_A=A, init_lora_B=B)
  np.testing.assert_array_equal(adapters.delta("pissa", tensors, W), 0.0)  # the init leaves the model unchanged


def test_targets_default_to_rwkv_peft_layers():
  specs = lambda v: get_model(v).param_specs(dataclasses.replace(TINY, version=v))
  names = lambda v: [t.weight for t in adapters.find_targets(specs(v))]
  assert names("x070") == ["blocks.att.receptance.weight", "blocks.att.key.weight", "blocks.att.value.weight",
                           "blocks.att.output.weight", "blocks.ffn.key.weight", "blocks.ffn.value.weight"]
  assert set(names("x060")) == set(names("x070")) | {"blocks.att.gate.weight", "blocks.ffn.receptance.weight"}
  with pytest.raises(ValueError, match="match no per-block linear weight"):
    adapters.find_targets(get_model("x070").param_specs(TINY), r"att\.nothing")


def test_rwkv_peft_command_line_configs():
  c = PeftConfig.from_rwkv_peft("lora", '{"lora_load":"","lora_r":8,"lora_alpha":16,"lora_dropout":0.0}')
  assert (c.method, c.r, c.alpha, c.train_parts) == ("lora", 8, 16.0, ("time", "ln"))
  c = PeftConfig.from_rwkv_peft("disha", '{"mode":"bat","load":"","r":64}', train_parts=["ln", "emb"])
  assert (c.method, c.r, c.train_parts) == ("bat", 64, ("ln", "emb"))
  assert PeftConfig.from_rwkv_peft("pissa", '{"pissa_r":16,"svd_niter":2}').svd_niter == 2
  with pytest.raises(ValueError, match="lora_dropout is not supported"):
    PeftConfig.from_rwkv_peft("lora", '{"lora_dropout":0.1}')
  with pytest.raises(ValueError, match="PeftConfig.method='dora'"):
    PeftConfig(method="dora")


# ----------------------------------------------------------------------------------------------------
# State tuning: the learned state enters every version's forward, with a gradient
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["x070", "x060", "x052"])
def test_learned_state_starts_every_packed_document(version):
  """The learned state is the forward's initial state and reset state. Through the state-tuning task, each
  document of a packed row has the loss, and the gradient w.r.t. the learned state (nonzero for every layer
  and head), of the same document alone at the start of a row (there it starts from the learned state as the
  initial state; the tokens after it do not affect it). One batch holds both, so one compilation."""
  cfg = train_config(model=dataclasses.replace(TINY, version=version), task=StateTuneConfig())
  task, model = cfg.task.build(cfg), get_model(version)
  flat = flatten(params_of(task))
  ts = rand(2, flat[state_tuning.STATE_NAME].shape, 0.5)  # [L, H, value, key]
  by_hand = model.init_state(cfg.model, 4)
  by_hand["wkv"] = jnp.broadcast_to(jnp.swapaxes(ts, -1, -2)[:, None], by_hand["wkv"].shape)  # op layout [K, V]
  jax.tree.map(np.testing.assert_array_equal, state_tuning.initial_state(model, cfg.model, ts, 4), by_hand)
  np.testing.assert_array_equal(state_tuning.wkv_states(ts), by_hand["wkv"][:, :1])

  loss_and_grad = jax.jit(jax.value_and_grad(  # w.r.t. the learned state only (cheaper to compile)
      lambda ts, batch: task.eval_loss(unflatten(flat | {state_tuning.STATE_NAME: ts}), batch)[0]))
  tokens = jax.random.randint(jax.random.key(1), (4, 13), 1, cfg.model.vocab_size)
  starts = (0, 4, 8)  # row 0: three packed documents of 4 tokens; row 1 + d: document d, then other tokens
  tokens = tokens.at[1:, :5].set(jnp.stack([tokens[0, lo:lo + 5] for lo in starts]))
  seg = jnp.asarray([[1] * 4 + [2] * 4 + [5] * 4] + [[0] * 12] * 3)
  batch = {"input_ids": tokens[:, :12], "targets": tokens[:, 1:], "segment_ids": seg}
  pos = jnp.arange(12)
  in_row = lambda row, lo: jnp.zeros((4, 12)).at[row].set((pos >= lo) & (pos < lo + 4))  # noqa: E731
  for doc, lo in enumerate(starts):
    loss, grad = loss_and_grad(ts, batch | {"loss_mask": in_row(0, lo)})
    want_loss, want_grad = loss_and_grad(ts, batch | {"loss_mask": in_row(1 + doc, 0)})
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=f"document {doc}")
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6 * float(np.abs(want_grad).max()),
                               err_msg=f"document {doc}")
    assert bool(jnp.all(jnp.abs(grad).max(axis=(-1, -2)) > 0)), f"document {doc}"  # every layer and head
  assert abs(float(loss_and_grad(0 * ts, batch | {"loss_mask": in_row(3, 0)})[0]) - float(want_loss)) > 1e-3


def test_generation_takes_a_state_per_sequence():
  cfg, model = TINY, get_model("x070")
  params = random_params(cfg)
  ts = rand(3, (2, cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size), 3.0)  # [B, L, H, N, N]
  prompt = jnp.asarray([[5, 9, 2], [5, 9, 2]])
  both, _ = generate(params, cfg, prompt, jax.random.key(0), max_new_tokens=5, temperature=0.0,
                     state=state_tuning.initial_state(model, cfg, ts))
  one, _ = generate(params, cfg, prompt[:1], jax.random.key(0), max_new_tokens=5, temperature=0.0,
                    state=state_tuning.initial_state(model, cfg, ts[1], 1))
  np.testing.assert_array_equal(both[1], one[0])
  assert not np.array_equal(both[0], both[1])


# ----------------------------------------------------------------------------------------------------
# Tasks: frozen parameters, optimizer state, RWKV-PEFT files and the merge
# ----------------------------------------------------------------------------------------------------

def train_config(model=TINY, **overrides) -> TrainConfig:
  fields = dict(model=model, data=DataConfig(sampler="shuffle"), optim=OptimConfig(), mesh=MeshConfig(data=1),
                ctx_len=16, micro_bsz=2, world_size=1, my_exit_tokens=10_000, epoch_samples=2, remat="none")
  fields.update(overrides)
  return TrainConfig(**fields)


def randomise_adapters(task, params):
  """Nonzero trainable tensors (as after training), so that merges have something to fold in."""
  rng = np.random.default_rng(100)
  flat = flatten(jax.tree.map(np.asarray, params))
  return unflatten({k: v + np.float32(0.05) * rng.standard_normal(v.shape, np.float32) if k in task.trainable_names
                    else v for k, v in flat.items()})


@pytest.mark.parametrize("method,r", [("pissa", 4), ("bat", 16)])
def test_adapter_files_use_rwkv_peft_names_and_merge_into_the_trained_model(tmp_path, method, r):
  cfg = train_config(task=PeftConfig(method=method, r=r, alpha=8.0, train_parts=("ln_x",), svd_niter=1))
  task = cfg.task.build(cfg)
  params0 = params_of(task)
  params = randomise_adapters(task, params0)
  paths = task.export(jax.tree.map(np.asarray, params), str(tmp_path), "final", "float32")
  sd = load_state_dict(tmp_path / "rwkv-final.pth")
  suffix = {"lora": "lora_A", "pissa": "lora_A", "bone": "disha", "bat": "disha"}[method]
  assert f"blocks.1.att.receptance.{suffix}" in sd and f"blocks.0.ffn.value.{suffix}" in sd
  assert "blocks.0.att.ln_x.weight" in sd and "blocks.0.att.receptance.weight" not in sd
  if method == "pissa":
    init = load_state_dict(tmp_path / "init_pissa.pth")
    assert sorted(init) == sorted(k.replace("lora_", "init_lora_") for k in sd if "lora_" in k)
  # merge the adapter file into the base .pth (as RWKV-PEFT's merge scripts): same logits as training
  base_params = unflatten({k: v for k, v in flatten(params).items() if not adapters.is_adapter_name(k)})
  base_params = jax.tree.map(np.asarray, base_params)
  flat_base = flatten(base_params)
  flat_base["blocks.att.ln_x.weight"] = np.asarray(params0["blocks"]["att"]["ln_x"]["weight"])  # the untrained part
  save_pth(unflatten(flat_base), cfg.model, tmp_path / "base.pth", dtype="float32")
  files.merge_files(str(tmp_path / "base.pth"), str(tmp_path / "merged.pth"),
                    peft_checkpoint=str(tmp_path / "rwkv-final.pth"))
  merged, _ = load_pth(tmp_path / "merged.pth")
  batch = {"input_ids": jax.random.randint(jax.random.key(5), (2, 16), 0, 64)}
  want = forward(task.merged_params(params), cfg.model, batch["input_ids"])  # what the task's loss runs
  got = forward(merged, cfg.model, batch["input_ids"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  export_merged, _ = load_pth(tmp_path / "rwkv-final-merged.pth")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), export_merged, merged)
  # and back out again
  files.merge_files(str(tmp_path / "merged.pth"), str(tmp_path / "unmerged.pth"),
                    peft_checkpoint=str(tmp_path / "rwkv-final.pth"), unmerge=True)
  unmerged = flatten(load_pth(tmp_path / "unmerged.pth")[0])
  for t in task.targets:
    np.testing.assert_allclose(unmerged[t.weight], flat_base[t.weight], atol=2e-5)
  assert str(tmp_path / "peft_config.json") in paths


def test_adapter_train_steps_change_only_trainable_tensors():
  cfg = train_config(task=PeftConfig(method="lora", r=4, train_parts=("ln_x",)),
                     optim=OptimConfig(lr_init=1e-2, warmup_steps=0))
  task = cfg.task.build(cfg)
  params = params_of(task)
  tokens = jax.random.randint(jax.random.key(3), (1, 2, 17), 0, 64)
  batch = {"input_ids": tokens[..., :-1], "targets": tokens[..., 1:], "loss_mask": jnp.ones((1, 2, 16))}
  opt = make_optimizer(task.specs, cfg.optim, task.trainable())
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params))
  step = jax.jit(make_train_step(task, opt, lambda s: jnp.float32(1e-2)))
  for _ in range(3):
    state, metrics = step(state, batch)
  assert bool(metrics["finite"])
  n_train = sum(np.size(v) for k, v in flatten(params).items() if k in task.trainable_names)
  assert sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0) == 2 * n_train  # Adam moments
  before, after = flatten(params), flatten(state.params)
  for name in before:
    assert np.array_equal(before[name], after[name]) == (name not in task.trainable_names), name
  assert task.trainable_names == {f"blocks.{p}.{n}.lora_{ab}" for p, n in [("att", "receptance"), ("att", "key"),
      ("att", "value"), ("att", "output"), ("ffn", "key"), ("ffn", "value")] for ab in "AB"} | {
      "blocks.att.ln_x.weight", "blocks.att.ln_x.bias"}


def test_lora_merge_needs_alpha():
  base = {"blocks.0.att.key.weight": np.ones((8, 8), np.float32)}
  peft = {"model.blocks.0.att.key.lora_A": np.ones((2, 8), np.float32),  # RWKV-PEFT's Lightning prefix
          "model.blocks.0.att.key.lora_B": np.ones((8, 2), np.float32)}
  with pytest.raises(ValueError, match="give lora_alpha"):
    files.merge_state_dicts(base, peft)
  merged = files.merge_state_dicts(base, peft, lora_alpha=4.0)
  np.testing.assert_array_equal(merged["blocks.0.att.key.weight"], 1.0 + 2.0 * 2)  # alpha / r = 2, (BA) = 2
  with pytest.raises(files.CheckpointError, match="has no base weight"):
    files.merge_state_dicts(base, {"blocks.0.att.value.disha": np.ones((2, 8), np.float32)})


# ----------------------------------------------------------------------------------------------------
# The trainer end to end: packed prompt/response data, a loaded base model
# ----------------------------------------------------------------------------------------------------

WORLD = ModelConfig(n_layer=2, n_embd=64, vocab_size=65536, head_size=32)


@pytest.fixture(scope="module")
def finetune_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("peft")
  records = root / "fmt.jsonl"
  with open(records, "w") as f:
    for i in range(64):
      f.write(json.dumps({"prompt": f"Item {i}:", "response": f" <<{i % 7}>> done.\n"}) + "\n")
  save_pth(random_params(WORLD, 7), WORLD, root / "base.pth", dtype="bfloat16")
  return root, str(records)


def finetune_config(setup, task, **overrides) -> TrainConfig:
  root, records = setup
  fields = dict(model=WORLD, data=DataConfig(data_type="packed", data_file=records, val_file=records),
                optim=OptimConfig(lr_init=1.0, lr_final=0.01, warmup_steps=0, adam_eps=1e-8, weight_decay=0.0),
                mesh=MeshConfig(data=1), ctx_len=32, micro_bsz=4, world_size=1, my_exit_tokens=32 * 4 * 8,
                epoch_samples=16, epoch_save=0, save_every_steps=100, log_every_steps=1, eval_batches=1,
                remat="none", load_model=str(root / "base.pth"), task=task)
  fields.update(overrides)
  return TrainConfig(**fields)


def read_losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_state_tuning_run_freezes_the_model_and_writes_rwkv_peft_files(tmp_path, finetune_setup, capsys):
  root, _ = finetune_setup
  cfg = finetune_config(finetune_setup, StateTuneConfig())
  result = trainer.train(cfg, str(tmp_path))
  losses = read_losses(tmp_path)
  assert losses[8] < losses[1] - 0.5, losses
  base, _ = load_pth(root / "base.pth")
  model_params, ts = cfg.task.build(cfg).split(result.params)
  jax.tree.map(np.testing.assert_array_equal, model_params, base)  # frozen: bit-identical
  assert float(np.abs(ts).max()) > 0
  sd = load_state_dict(tmp_path / "rwkv-final.pth")
  assert sorted(sd) == ["blocks.0.att.time_state", "blocks.1.att.time_state"]
  assert sd["blocks.0.att.time_state"].shape == (2, 32, 32)
  np.testing.assert_array_equal(files.load_state_file(tmp_path / "rwkv-final.pth"), ts)
  merged = load_state_dict(tmp_path / "rwkv-final-merged.pth")
  assert "blocks.1.att.time_state" in merged and "blocks.1.att.key.weight" in merged
  # the merged model carries the state; the generation tool starts from a state file
  _, _, merged_state = files.load_model_and_state(tmp_path / "rwkv-final-merged.pth")
  np.testing.assert_array_equal(merged_state, ts)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # the tool's flags, set here instead of parsed from a command line
  with flagsaver.flagsaver(checkpoint=str(root / "base.pth"), state_file=str(tmp_path / "rwkv-final.pth"),
                           prompt="Item 3:", max_new_tokens=8, temperature=0.0):
    generate_cli.main([])
  want = sample_text(base, cfg.model, "Item 3:", max_new_tokens=8, temperature=0.0, top_p=0.85,
                     state=state_tuning.initial_state(get_model("x070"), cfg.model, ts, 1))
  assert capsys.readouterr().out.endswith("Item 3:" + want + "\n")


def test_narrow_format_task_from_python_sources(tmp_path):
  from rwkvjax.peft import demo_data
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "m.py").write_text(
      "class A:\n  def f(self, x, *, y=1):\n    z = x + y\n    return z\n\ndef g():\n  pass\n  pass\n")
  n_train, n_val = demo_data.write_task(str(tmp_path / "src"), str(tmp_path / "out"), val_fraction=0.0)
  assert (n_train, n_val) == (2, 0)
  records = [json.loads(l) for l in open(tmp_path / "out_train.jsonl")]
  assert records[0]["prompt"] == "def f(self, x, *, y=1):\n  z = x + y\n  return z\n\nSummary:"
  assert records[0]["response"] == " name=f; args=self,x,y; returns=yes; lines=3\n"
  assert records[1]["response"] == " name=g; args=; returns=no; lines=3\n"
