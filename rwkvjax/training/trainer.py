"""The training loop: mesh, data, init/resume, the jitted step, logs, checkpoints, exports, faults.

Resume order: the workdir's newest readable checkpoint, else `load_model` (an RWKV-LM .pth), else the
official initialisation (under jit, sharded by out_shardings so no host holds the whole model).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from rwkvjax.config.train import TrainConfig
from rwkvjax.convert.checkpoints import load_model_file
from rwkvjax.data.corpus import default_corpus
from rwkvjax.data.pipeline import make_packed_dataset, make_pretrain_dataset, pretrain_sampler
from rwkvjax.data.binidx import BinIdx
from rwkvjax.fileio import atomic_write
from rwkvjax.models.params import count_params, logical_axes, param_shapes
from rwkvjax.training import flops, sharding
from rwkvjax.training.checkpoint import Checkpointer, abstract_like
from rwkvjax.training.metrics import MetricsLogger, Throughput
from rwkvjax.training.optimizer import make_optimizer
from rwkvjax.training.schedule import learning_rate
from rwkvjax.training.step import TrainState, make_eval_step, make_train_step
from rwkvjax.training.tasks import make_task


class NonFiniteLossError(RuntimeError):
  """A non-finite loss or gradient with nan_policy="stop"."""


@dataclasses.dataclass
class RunResult:
  """What a finished (or interrupted) run reports."""

  status: str                     # "finished" or "preempted"
  step: int
  tokens: int
  last_loss: float | None
  eval_loss: float | None
  params: Any = None              # final params on the host (primary process), None when preempted
  losses: dict[int, float] = dataclasses.field(default_factory=dict)


def data_paths(cfg: TrainConfig) -> tuple[str, str]:
  """(train, val) data paths; val is "" when there is no held-out data."""
  if cfg.data.data_file:
    return cfg.data.data_file, cfg.data.val_file
  corpus = default_corpus(max_bytes=cfg.data.corpus_max_bytes or None, progress=jax.process_index() == 0)
  return corpus.train, cfg.data.val_file or corpus.val


def make_dataset(cfg: TrainConfig, path: str, world_size: int, *, evaluation: bool = False):
  """(grain IterDataset of process-local batches, magic prime or None) for the data at `path`.
  Evaluation data is read in a fixed shuffled order."""
  common = dict(ctx_len=cfg.ctx_len, micro_bsz=cfg.micro_bsz, world_size=world_size,
                shard_index=jax.process_index(), shard_count=jax.process_count())
  seed = 0 if evaluation else cfg.data.seed
  if cfg.data.data_type in ("packed", "padded"):
    return make_packed_dataset(path, seed=seed, pad=cfg.data.data_type == "padded", **common), None
  data = BinIdx(path)
  sampler = "shuffle" if evaluation else cfg.data.sampler
  magic_prime = None if evaluation else cfg.data.magic_prime or None
  info = pretrain_sampler(data, sampler=sampler, magic_prime=magic_prime, seed=seed, **common)
  return make_pretrain_dataset(data, sampler=sampler, magic_prime=magic_prime, seed=seed,
                               vocab_size=cfg.model.vocab_size, **common), info.magic_prime


class _Stop:
  """Set by SIGTERM: the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False

  def install(self):
    try:
      signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread: the caller handles signals
      pass

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True


def _host_params(params):
  """Fully gathered params as numpy arrays (collective across processes)."""
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  return jax.tree.map(np.asarray, params)


@dataclasses.dataclass
class RunSetup:
  """Everything about a run that follows from its config and mesh (no data, no arrays)."""

  task: Any
  mesh: Any
  world_size: int
  samples_per_step: int
  tokens_per_step: int
  total_steps: int
  steps_per_epoch: int
  optimizer: optax.GradientTransformation
  lr_fn: Any
  init_state: Any                 # params -> TrainState
  abstract_params: Any
  abstract_state: Any
  params_sharding: Any
  state_sharding: Any
  batch_sharding: Any             # [A, B, T] train batches
  train_step: Any                 # jitted (state, batch) -> (state, metrics), donates state
  eval_step: Any                  # jitted (params, batch [B, T]) -> (loss sum, tokens)

  def abstract_batch(self, cfg: TrainConfig) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (cfg.grad_accum, self.world_size * cfg.micro_bsz, cfg.ctx_len)
    fields = {"input_ids": jnp.int32, "targets": jnp.int32, "loss_mask": jnp.float32}
    if cfg.data.data_type in ("packed", "padded"):
      fields["segment_ids"] = jnp.int32
    return {k: jax.ShapeDtypeStruct(shape, dt, sharding=self.batch_sharding) for k, dt in fields.items()}


def setup(cfg: TrainConfig, mesh) -> RunSetup:
  """Batch geometry, shardings, optimizer and the jitted steps of a run on `mesh`."""
  task = make_task(cfg)
  specs = task.specs
  world_size = cfg.world_size or sharding.batch_devices(mesh)
  global_rows = world_size * cfg.micro_bsz
  if global_rows % sharding.batch_devices(mesh):
    raise ValueError(f"TrainConfig: world_size * micro_bsz = {global_rows} rows do not divide over the "
                     f"{sharding.batch_devices(mesh)} devices of the batch mesh axes (data x fsdp)")
  samples_per_step = global_rows * cfg.grad_accum
  tokens_per_step = samples_per_step * cfg.ctx_len
  if cfg.epoch_samples % samples_per_step:
    raise ValueError(f"TrainConfig.epoch_samples={cfg.epoch_samples} must be a multiple of the samples per "
                     f"step (world_size * micro_bsz * grad_accum = {samples_per_step})")
  abstract_params = param_shapes(specs, cfg.model)
  params_sharding = sharding.tree_shardings(logical_axes(specs), abstract_params, mesh)
  optimizer = make_optimizer(specs, cfg.optim, task.trainable())
  lr_fn = lambda step: learning_rate(step, cfg.optim, tokens_per_step, cfg.my_exit_tokens)

  def init_state(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  abstract_state = jax.eval_shape(init_state, abstract_params)
  state_sharding = jax.tree.map(lambda x: sharding.replicated(mesh), abstract_state)
  state_sharding = state_sharding.replace(params=params_sharding, opt_state=_opt_state_shardings(
      optimizer, abstract_state.opt_state, params_sharding, mesh))
  batch_sharding = sharding.batch_sharding(mesh, 3, batch_dim=1)
  train_step = jax.jit(sharding.traced_under(mesh, make_train_step(task, optimizer, lr_fn)),
                       in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))
  eval_step = jax.jit(sharding.traced_under(mesh, make_eval_step(task)),
                      in_shardings=(params_sharding, sharding.batch_sharding(mesh, 2)),
                      out_shardings=sharding.replicated(mesh))
  return RunSetup(task, mesh, world_size, samples_per_step, tokens_per_step,
                  math.ceil(cfg.my_exit_tokens / tokens_per_step), cfg.epoch_samples // samples_per_step,
                  optimizer, lr_fn, init_state, abstract_params, abstract_state, params_sharding, state_sharding,
                  batch_sharding, train_step, eval_step)


def train(cfg: TrainConfig, workdir: str, *, config_json: dict | None = None) -> RunResult:
  """Runs (or resumes) the training run described by `cfg` in `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  primary = jax.process_index() == 0
  config_json = config_json if config_json is not None else {"train_config": repr(cfg)}
  mesh = sharding.make_mesh(cfg.mesh)
  run = setup(cfg, mesh)
  task, world_size, tokens_per_step = run.task, run.world_size, run.tokens_per_step
  total_steps, steps_per_epoch, lr_fn = run.total_steps, run.steps_per_epoch, run.lr_fn
  train_step, eval_step, batch_shape_sharding = run.train_step, run.eval_step, run.batch_sharding
  abstract_params = run.abstract_params

  # ---- data
  train_path, val_path = data_paths(cfg)
  dataset, magic_prime = make_dataset(cfg, train_path, world_size)
  data_iter = iter(dataset)

  # ---- state: resume / load / init
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
  restored = checkpointer.restore_latest(abstract_like(run.abstract_state, run.state_sharding))
  logger = MetricsLogger(workdir, enabled=primary)
  if restored is not None:
    step0, state, data_state = restored
    data_iter.set_state(data_state)
    print(f"resumed from {checkpointer.directory}/{step0} (data position {data_state})", flush=True)
  else:
    key = jax.random.key(cfg.seed)
    if cfg.load_model:
      loaded, loaded_cfg = load_model_file(cfg.load_model)
      params = jax.device_put(task.from_loaded(loaded, loaded_cfg, key), run.params_sharding)
      print(f"loaded {cfg.load_model}", flush=True)
    else:
      params = jax.jit(task.init_params, out_shardings=run.params_sharding)(key)
    state = jax.jit(run.init_state, out_shardings=run.state_sharding)(params)
    logger.run_start(repr(cfg))
  step = int(state.step)

  def next_batch():
    micro = [next(data_iter) for _ in range(cfg.grad_accum)]
    local = {k: np.stack([m[k] for m in micro]) for k in micro[0]}
    return {k: jax.make_array_from_process_local_data(batch_shape_sharding, v) for k, v in local.items()}

  def evaluate(params) -> float | None:
    if not val_path or cfg.eval_batches == 0:
      return None
    val_iter = iter(make_dataset(cfg, val_path, world_size, evaluation=True)[0])
    total = count = 0.0
    for _ in range(cfg.eval_batches):
      b = {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, 2), v)
           for k, v in next(val_iter).items()}
      s, c = eval_step(params, b)
      total, count = total + float(s), count + float(c)
    return total / max(count, 1.0)

  n_params = count_params(abstract_params)
  flops_per_token = flops.train_flops_per_token(cfg.model, cfg.ctx_len)
  peak = flops.peak_flops(jax.devices()[0], cfg.model.compute_dtype)
  if primary:
    print(f"{cfg.model.version} L{cfg.model.n_layer}: {n_params:,} params | mesh "
          f"{dict(mesh.shape)} | batch {run.samples_per_step} x {cfg.ctx_len} tokens | {total_steps} steps to "
          f"{cfg.my_exit_tokens:,} tokens | data {cfg.data.data_type}"
          + (f", sampler {cfg.data.sampler} (magic_prime {magic_prime})" if cfg.data.data_type == "binidx" else ""),
          flush=True)

  stop = _Stop()
  stop.install()
  throughput = Throughput()
  throughput.reset(step * tokens_per_step)
  t_start = time.perf_counter()
  epoch_losses: list[float] = []
  losses: dict[int, float] = {}
  last_loss = eval_loss = None
  config_for_ckpt = {"config": config_json}

  def save(step_now):
    checkpointer.save(step_now, state, data_iter.get_state(), config_for_ckpt)

  while step < total_steps:
    batch = next_batch()
    state, metrics = train_step(state, batch)
    step += 1
    log_now = step % cfg.log_every_steps == 0 or step == total_steps or step % steps_per_epoch == 0
    if log_now or cfg.nan_policy == "stop":
      host = jax.device_get(metrics)
      if not host["finite"]:
        message = f"non-finite loss or gradient at step {step} (loss {float(host['loss'])}, grad norm {float(host['grad_norm'])})"
        if cfg.nan_policy == "stop":
          checkpointer.close()
          logger.close()
          raise NonFiniteLossError(message + "; the update was not applied. Set nan_policy='skip' to go on.")
        logging.warning("%s: update skipped", message)
      if log_now:
        last_loss = float(host["loss"])
        losses[step] = last_loss
        epoch_losses.append(last_loss)
        tokens = step * tokens_per_step
        rate = throughput.measure(tokens)
        tflops = flops_per_token * rate / jax.device_count() / 1e12
        record = {"step": step, "loss": last_loss, "lr": float(host["lr"]), "tokens": tokens,
                  "tokens_per_sec": rate, "tflops_per_device": tflops,
                  "mfu": tflops * 1e12 / peak if peak else None, "grad_norm": float(host["grad_norm"]),
                  "epoch": (step - 1) // steps_per_epoch, "elapsed_s": time.perf_counter() - t_start}
        if cfg.eval_every_steps and step % cfg.eval_every_steps == 0:
          record["eval_loss"] = eval_loss = evaluate(state.params)
        logger.log(record)
        eta = (total_steps - step) * tokens_per_step / max(rate, 1e-9)
        logger.progress(step, total_steps, last_loss, record["lr"], rate, eta,
                        f" | eval {eval_loss:.4f}" if "eval_loss" in record and eval_loss is not None else "")
    if step % steps_per_epoch == 0:
      epoch = step // steps_per_epoch - 1
      logger.mini_epoch(epoch, float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                        float(lr_fn(step - 1)))
      epoch_losses = []
      if cfg.epoch_save and epoch % cfg.epoch_save == 0 and step < total_steps:
        host_params = _host_params(state.params)
        if primary:
          task.export(host_params, workdir, str(epoch), cfg.export_dtype)
    if step % cfg.save_every_steps == 0 and step < total_steps:
      save(step)
    if stop.requested:
      save(step)
      checkpointer.close()
      logger.close()
      print(f"SIGTERM: saved checkpoint {step} and stopped; run again to resume", flush=True)
      return RunResult("preempted", step, step * tokens_per_step, last_loss, eval_loss, losses=losses)

  save(step)
  eval_loss = evaluate(state.params)
  host_params = _host_params(state.params)
  if primary:
    final_paths = task.export(host_params, workdir, "final", cfg.export_dtype)
    if eval_loss is not None:
      logger.log({"step": step, "eval_loss": eval_loss})
    loss_text = f"loss {last_loss:.4f}" if last_loss is not None else "no steps left to run"
    print(f"finished: {step} steps, {step * tokens_per_step:,} tokens, {loss_text}"
          + (f", held-out loss {eval_loss:.4f}" if eval_loss is not None else "")
          + f"; wrote {', '.join(final_paths)}", flush=True)
  checkpointer.close()
  logger.close()
  if cfg.sample is not None and primary:
    _write_sample(cfg, *task.sample_model(host_params), workdir)
  return RunResult("finished", step, step * tokens_per_step, last_loss, eval_loss, params=host_params, losses=losses)


def _opt_state_shardings(optimizer, abstract_opt_state, params_sharding, mesh):
  """Optimizer leaves that mirror a parameter (Adam moments) take its sharding; the rest is replicated.
  Frozen parameters have no state (optax.MaskedNode) and keep it."""
  masked = lambda x: isinstance(x, optax.MaskedNode)
  return optax.tree_map_params(optimizer, lambda leaf, s: leaf if masked(leaf) else s, abstract_opt_state,
                               params_sharding, transform_non_params=lambda _: sharding.replicated(mesh),
                               is_leaf=masked)


def _write_sample(cfg: TrainConfig, params, model_cfg, initial_state, workdir: str) -> None:
  from rwkvjax.inference.text import sample_text
  s = cfg.sample
  text = sample_text(params, model_cfg, s.prompt, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                     top_p=s.top_p, seed=s.seed, state=initial_state)
  with atomic_write(os.path.join(workdir, "sample.txt")) as f:
    f.write((s.prompt + text).encode("utf-8"))
  print(f"--- sample (temperature {s.temperature}, top_p {s.top_p}) ---\n{s.prompt}{text}\n---", flush=True)
