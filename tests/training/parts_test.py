"""Trainer parts: RWKV-LM's schedule and optimizer groups, L2Wrap, FLOP counts, sharding rules, configs."""

import dataclasses
import math

import fiddle as fdl
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from rwkvjax.config.model import ModelConfig
from rwkvjax.config.train import OptimConfig, TrainConfig
from rwkvjax.config.transformer import TransformerConfig
from rwkvjax.models import get_model, rwkv7
from rwkvjax.models.params import flatten
from rwkvjax.training import flops, sharding
from rwkvjax.training.loss import cross_entropy, lm_loss
from rwkvjax.training.optimizer import make_optimizer
from rwkvjax.training.schedule import learning_rate


def rwkvlm_lr(step, optim, tokens_per_step, exit_tokens):
  """RWKV-LM train_temp trainer.py, transcribed."""
  real_tokens = step * tokens_per_step
  warmup_tokens = optim.warmup_steps * tokens_per_step
  progress = max(0, min(1, (real_tokens - warmup_tokens) / (exit_tokens - warmup_tokens)))
  f = optim.lr_final / optim.lr_init
  lr = optim.lr_init * ((0.5 + f / 2) + (0.5 - f / 2) * math.cos(math.pi * progress))
  if step < optim.warmup_steps:
    lr = lr * (0.01 + 0.99 * step / optim.warmup_steps)
  return lr


def test_schedule_matches_rwkvlm():
  optim = OptimConfig(lr_init=6e-4, lr_final=6e-5, warmup_steps=10)
  for step in (0, 1, 5, 9, 10, 11, 500, 999, 1000, 1500):
    want = rwkvlm_lr(step, optim, 8192, 1000 * 8192)
    np.testing.assert_allclose(float(learning_rate(step, optim, 8192, 1000 * 8192)), want, rtol=1e-5)
  # token counts beyond int32 (a 100B-token run) under jit
  big = jax.jit(lambda s: learning_rate(s, optim, 2**20, 10**11))(jnp.int32(50_000))
  np.testing.assert_allclose(float(big), rwkvlm_lr(50_000, optim, 2**20, 10**11), rtol=1e-5)


def test_optimizer_groups_follow_rwkvlm():
  """Weight decay only on .weight matrices; att.w0 at 2x LR; the update is AdamW's."""
  cfg = ModelConfig(n_layer=2, n_embd=64, vocab_size=50, head_size=32)
  specs = rwkv7.param_specs(cfg)
  decayed = {s.name for s in specs if s.weight_decay}
  assert decayed == {"emb.weight", "head.weight", "blocks.att.receptance.weight", "blocks.att.key.weight",
                     "blocks.att.value.weight", "blocks.att.output.weight", "blocks.ffn.key.weight",
                     "blocks.ffn.value.weight"}
  assert {s.name for s in specs if s.lr_scale != 1.0} == {"blocks.att.w0"}
  optim = OptimConfig(weight_decay=0.1, grad_clip=0.0, adam_eps=1e-8)
  params = rwkv7.init(cfg, jax.random.key(0))
  grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
  tx = make_optimizer(specs, optim)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat_u, flat_p = flatten(updates), flatten(params)
  # first Adam step with unit gradients: direction -1 per element; then -wd * p on decayed matrices
  np.testing.assert_allclose(flat_u["blocks.att.x_r"], -1.0, rtol=1e-5)
  np.testing.assert_allclose(flat_u["blocks.att.w0"], -2.0, rtol=1e-5)
  np.testing.assert_allclose(flat_u["head.weight"], -1.0 - 0.1 * flat_p["head.weight"], rtol=1e-5)


def test_frozen_parameters_have_no_optimizer_state():
  cfg = ModelConfig(n_layer=1, n_embd=64, vocab_size=50, head_size=32)
  specs = rwkv7.param_specs(cfg)
  params = rwkv7.init(cfg, jax.random.key(0))
  trainable = jax.tree.map(lambda _: False, params)
  trainable["head"]["weight"] = True
  tx = make_optimizer(specs, OptimConfig(), trainable)
  state = tx.init(params)
  n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
  assert n_state == 2 * params["head"]["weight"].size  # Adam's two moments of the head only
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  assert not np.any(updates["emb"]["weight"]) and np.any(updates["head"]["weight"])


def test_l2wrap_adds_rwkvlm_gradient():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11))
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
  mask = jnp.ones((2, 5))
  g_plain = jax.grad(lambda l: cross_entropy(l, targets, mask)[0])(logits)
  g_wrap = jax.grad(lambda l: lm_loss(l, targets, mask, l2wrap=True)[0])(logits)
  extra = np.asarray(g_wrap - g_plain)
  top = np.asarray(jnp.max(logits, -1))
  idx = np.asarray(jnp.argmax(logits, -1))
  want = np.zeros_like(extra)
  for b in range(2):
    for t in range(5):
      want[b, t, idx[b, t]] = top[b, t] * 1e-4 / 10
  np.testing.assert_allclose(extra, want, atol=1e-9)
  assert float(lm_loss(logits, targets, mask)[0]) == pytest.approx(float(cross_entropy(logits, targets, mask)[0]))


@pytest.mark.parametrize("cfg", [ModelConfig(n_layer=1, n_embd=256, vocab_size=4096),
                                 TransformerConfig(vocab_size=4096, hidden_size=256, intermediate_size=688,
                                                   num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)],
                         ids=["rwkv7", "llama"])
def test_analytic_flops_match_xla(cfg):
  """The model's FLOP count against XLA's cost analysis of the compiled forward (one layer, one token per
  row, so every loop runs once and XLA's count is exact)."""
  model = get_model(cfg.version)
  params = model.init(cfg, jax.random.key(0))
  B = 16
  kwargs = {"impl": "reference"} if isinstance(cfg, ModelConfig) else {}  # the per-token recurrence
  compiled = jax.jit(lambda p, t: model.forward(p, cfg, t, **kwargs)[0]).lower(
      params, jnp.zeros((B, 1), jnp.int32)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = model.forward_flops_per_token(cfg, 1)
  assert cost["flops"] / B == pytest.approx(analytic, rel=0.02)
  assert flops.train_flops_per_token(cfg, 1) == pytest.approx(3 * analytic)


def test_logical_rules_shard_what_divides():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
  assert sharding.logical_to_pspec(("att", "embed"), (64, 64), mesh) == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert sharding.logical_to_pspec(("vocab", "embed"), (97, 64), mesh) == jax.sharding.PartitionSpec(None, "fsdp")
  assert sharding.logical_to_pspec(("layers", "embed"), (3, 64), mesh) == jax.sharding.PartitionSpec(None, "fsdp")
  with pytest.raises(ValueError, match="needs 16 devices; there are 8"):
    sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=8))


@pytest.mark.parametrize("name", experiments.CONFIGS)
def test_every_experiment_builds(name):
  cfg = fdl.build(getattr(experiments, name)())
  assert isinstance(cfg, TrainConfig)
  built = fdl.build(fiddle_set(getattr(experiments, name)(), my_exit_tokens=12345))
  assert built.my_exit_tokens == 12345


def fiddle_set(buildable, **values):
  for k, v in values.items():
    setattr(buildable, k, v)
  return buildable


@pytest.mark.parametrize("field,value,match", [
    ("ctx_len", 0, "TrainConfig.ctx_len=0"), ("remat", "all", "TrainConfig.remat='all'"),
    ("my_exit_tokens", 0, "TrainConfig.my_exit_tokens=0")])
def test_bad_config_values_name_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TrainConfig(my_exit_tokens=1), **{field: value})
  with pytest.raises(ValueError, match="optim.lr_init"):
    OptimConfig(lr_init=0.0)


def test_cross_entropy_gradient_matches_autodiff():
  logits = jax.random.normal(jax.random.key(3), (2, 7, 13)) * 3
  targets = jax.random.randint(jax.random.key(4), (2, 7), 0, 13)
  mask = (jax.random.uniform(jax.random.key(5), (2, 7)) > 0.3).astype(jnp.float32)

  def plain(l):
    nll = -jnp.take_along_axis(jax.nn.log_softmax(l), targets[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()

  np.testing.assert_allclose(cross_entropy(logits, targets, mask)[0], plain(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda l: cross_entropy(l, targets, mask)[0])(logits), jax.grad(plain)(logits),
                             atol=1e-6)
