"""ParamSpec tables: one row per parameter drives init, optimizer groups, sharding and `.pth` conversion.

Parameter trees are nested dicts whose dotted paths are RWKV-LM's state-dict keys with the block index
removed: `blocks.att.receptance.weight` holds `blocks.{l}.att.receptance.weight` for every layer l,
stacked on a leading axis of size n_layer (so the layer loop is a `lax.scan`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import traverse_util

# init(key, layer, cfg) -> array of the spec's per-layer shape, float32. `layer` is a traced int32 scalar
# for stacked parameters (the init is vmapped over layers) and None for the others.
InitFn = Callable[[jax.Array, Any, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """One parameter.

  Attributes:
    name: dotted path in the parameter tree (`blocks.att.w0`, `emb.weight`).
    shape: per-layer shape as stored in the tree (without the layer axis).
    axes: logical axis names, one per dim of `shape` (the layer axis is "layers").
    init: see InitFn.
    stacked: True for per-block parameters (leading layer axis in the tree).
    pth_key: RWKV-LM state-dict key; "{l}" stands for the block index of stacked parameters.
    pth_shape: per-layer shape in the `.pth` file (RWKV-LM keeps [1, 1, C] for mixing vectors).
    weight_decay: RWKV-LM applies weight decay to it (>= 2-D `.weight` matrices).
    lr_scale: learning-rate multiplier (RWKV-LM: 2.0 for att.w0).
  """

  name: str
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  init: InitFn
  stacked: bool
  pth_key: str
  pth_shape: tuple[int, ...]
  weight_decay: bool = False
  lr_scale: float = 1.0

  def __post_init__(self):
    if len(self.axes) != len(self.shape):
      raise ValueError(f"ParamSpec {self.name}: axes {self.axes} do not match shape {self.shape}")

  def full_shape(self, n_layer: int) -> tuple[int, ...]:
    return (n_layer, *self.shape) if self.stacked else self.shape

  def full_axes(self) -> tuple[str, ...]:
    return ("layers", *self.axes) if self.stacked else self.axes


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{"a.b.c": x} -> {"a": {"b": {"c": x}}}."""
  return traverse_util.unflatten_dict(flat, sep=".")


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
  """{"a": {"b": {"c": x}}} -> {"a.b.c": x}."""
  return traverse_util.flatten_dict(tree, sep=".")


def init_params(specs: list[ParamSpec], cfg: Any, key: jax.Array) -> dict[str, Any]:
  """Initialises every parameter (float32). Jit-able; stacked inits are vmapped over the layer index."""
  keys = jax.random.split(key, len(specs))
  flat = {}
  for spec, k in zip(specs, keys):
    if spec.stacked:
      layer_keys = jax.random.split(k, cfg.n_layer)
      layers = jnp.arange(cfg.n_layer, dtype=jnp.int32)
      value = jax.vmap(lambda lk, l, s=spec: s.init(lk, l, cfg))(layer_keys, layers)
    else:
      value = spec.init(k, None, cfg)
    flat[spec.name] = value.astype(jnp.float32)
  return unflatten(flat)


def param_shapes(specs: list[ParamSpec], cfg: Any) -> dict[str, Any]:
  """Tree of jax.ShapeDtypeStruct (float32) matching `init_params`."""
  return unflatten({s.name: jax.ShapeDtypeStruct(s.full_shape(cfg.n_layer), jnp.float32) for s in specs})


def logical_axes(specs: list[ParamSpec]) -> dict[str, Any]:
  """Tree of logical-axis tuples matching `init_params` (for sharding rules)."""
  return unflatten({s.name: s.full_axes() for s in specs})


def count_params(params: dict[str, Any]) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
