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
  A non-finite loss or gradient norm leaves params and optimizer state unchanged (metrics["finite"] is 0);
  the step counter still advances, as the batch was consumed.
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    def micro(grads, mb):
      (loss, count), g = jax.value_and_grad(task.loss, has_aux=True)(state.params, mb)
      return jax.tree.map(jnp.add, grads, g), (loss, count)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    grads, (losses, counts) = jax.lax.scan(micro, zeros, batch)
    n_micro = losses.shape[0]
    grads = jax.tree.map(lambda g: g / n_micro, grads)
    loss = losses.mean()
    grad_norm = optax.tree.norm(grads)
    lr = learning_rate(state.step)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + lr * u, state.params, updates)
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
