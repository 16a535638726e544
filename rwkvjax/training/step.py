"""The jitted train and eval steps (pure functions of the train state and a batch)."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rwkvjax.training.tasks import Task


@flax.struct.dataclass
class TrainState:
  """step: optimizer steps taken (int32 scalar); params: float32 master weights; opt_state: optax state."""

  step: jax.Array
  params: Any
  opt_state: Any


def make_train_step(task: Task, optimizer: optax.GradientTransformation,
                    learning_rate: Callable[[jax.Array], jax.Array]) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics).

  `batch` holds arrays [A, B, T]: A micro batches accumulated into one update (mean of their gradients).
  Gradients are taken only with respect to the task's trainable parameters; frozen ones (a teacher, a base
  model under adapters) are neither differentiated nor touched. A non-finite loss or gradient norm leaves
  params and optimizer state unchanged (metrics["finite"] is 0); the step counter still advances, as the
  batch was consumed.
  """
  trainable = task.trainable()
  is_none = lambda x: x is None
  split = lambda params: jax.tree.map(lambda p, t: p if t else None, params, trainable)
  merge = lambda part, params: jax.tree.map(lambda a, p: p if a is None else a, part, params, is_leaf=is_none)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    def micro(grads, mb):
      loss_fn = lambda train_params: task.loss(merge(train_params, state.params), mb)
      (loss, count), g = jax.value_and_grad(loss_fn, has_aux=True)(split(state.params))
      return jax.tree.map(jnp.add, grads, g), (loss, count)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), split(state.params))
    grads, (losses, counts) = jax.lax.scan(micro, zeros, batch)
    n_micro = losses.shape[0]
    grads = jax.tree.map(lambda g: g / n_micro, grads)
    loss = losses.mean()
    grad_norm = optax.tree.norm(grads)
    lr = learning_rate(state.step)
    # Frozen leaves: the optimizer ignores their "gradient" (it masks them), so pass the params themselves.
    updates, opt_state = optimizer.update(merge(grads, state.params), state.opt_state, state.params)
    params = jax.tree.map(lambda p, u, t: p + lr * u if t else p, state.params, updates, trainable)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "finite": finite.astype(jnp.int32),
               "loss_tokens": counts.sum()}
    return new_state, metrics

  return train_step


def make_eval_step(task: Task) -> Callable:
  """Returns eval_step(params, batch [B, T] arrays) -> (sum of token losses, token count)."""

  def eval_step(params, batch):
    loss, count = task.eval_loss(params, batch)
    return loss * count, count

  return eval_step
