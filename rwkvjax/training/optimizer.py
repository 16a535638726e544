"""optax AdamW with RWKV-LM's parameter groups, driven by the ParamSpec table.

Per parameter: weight decay only where the spec says so (>= 2-D `.weight` matrices), a learning-rate
multiplier (`lr_scale`, e.g. 2x for att.w0), and nothing at all for frozen parameters (no optimizer state,
zero update), as DeepSpeed's FusedAdam(adam_w_mode=True) does with RWKV-LM's groups:
  p <- p - lr * lr_scale * (adam(g) + weight_decay * p)   after clipping the global gradient norm.
The transformation returns the update for lr = 1; the train step multiplies by the scheduled lr of its own
step counter (so a skipped non-finite step cannot desynchronise the schedule).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from rwkvjax.config.train import OptimConfig
from rwkvjax.models.params import ParamSpec, unflatten


def _scale_by_tree(scales: Any) -> optax.GradientTransformation:
  """Multiplies each update by its parameter's factor (frozen leaves arrive as optax.MaskedNode)."""
  masked = lambda x: isinstance(x, optax.MaskedNode)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u if masked(u) else u * s, updates, scales, is_leaf=masked), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def spec_tree(specs: list[ParamSpec], fn: Callable[[ParamSpec], Any]) -> dict[str, Any]:
  """A tree shaped like the params with fn(spec) at each leaf."""
  return unflatten({s.name: fn(s) for s in specs})


def make_optimizer(specs: list[ParamSpec], optim: OptimConfig,
                   trainable: dict[str, Any] | None = None) -> optax.GradientTransformation:
  """AdamW over the trainable parameters, as an update for learning rate 1 (multiply by the lr).

  Args:
    specs: the model's ParamSpec table (weight decay and lr_scale tags).
    trainable: tree of bools shaped like the params (None: everything trains).
  """
  adamw = optax.chain(
      optax.scale_by_adam(b1=optim.beta1, b2=optim.beta2, eps=optim.adam_eps),
      optax.add_decayed_weights(optim.weight_decay, mask=spec_tree(specs, lambda s: s.weight_decay)),
      _scale_by_tree(spec_tree(specs, lambda s: s.lr_scale)),
      optax.scale(-1.0),
  )
  labels = spec_tree(specs, lambda s: "train") if trainable is None else \
      jax.tree.map(lambda t: "train" if t else "frozen", trainable)
  per_group = optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
  if optim.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), per_group)
  return per_group
