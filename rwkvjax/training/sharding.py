"""Device mesh and logical-axis sharding rules.

Every parameter carries logical axis names (ParamSpec.axes); RULES maps them to mesh axes. A logical axis
whose size does not divide by its mesh axes' size, or whose mesh axis is already used by another dim of the
same array, is replicated instead.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rwkvjax.config.train import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor", "seq")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axes (in order of preference; a tuple shards over several). Parameters use the plain
# names; activations use "batch" and the act_* names: with FSDP the weights are sharded on "embed" but the
# activations are not (each device all-gathers a layer's weights and computes its own rows), and with tensor
# parallelism the channel-split activations (act_att, act_mlp, act_heads, act_vocab) follow the weights.
RULES: dict[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "act_embed": (),
    "act_att": ("tensor",),
    "act_mlp": ("tensor",),
    "act_heads": ("tensor",),
    "act_vocab": ("tensor",),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "att": ("tensor",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "lora": (),
    "layers": (),
}


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, ...]:
  """Resolves the -1 axis (all remaining devices); raises ValueError naming the mesh when sizes do not fit."""
  sizes = [cfg.data, cfg.fsdp, cfg.tensor, cfg.seq]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {n_devices} devices do not divide by {known}")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) > n_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices; there are {n_devices}")
  return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
  """The mesh over `devices` (default: all). A mesh smaller than the device count uses the first devices
  (single-process runs only)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(cfg, len(devices))
  size = math.prod(shape)
  if size < len(devices):
    if jax.process_count() > 1:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} uses {size} of {len(devices)} devices; multi-process "
                       "runs must use them all (set one mesh axis to -1)")
    logging.warning("mesh %s uses %d of %d devices", dict(zip(MESH_AXES, shape)), size, len(devices))
  return Mesh(np.asarray(devices[:size]).reshape(shape), MESH_AXES)


def logical_to_pspec(axes: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
  """PartitionSpec for an array with these logical axes and shape on `mesh`."""
  used: set[str] = set()
  out = []
  for name, size in zip(axes, shape):
    mesh_axes = tuple(a for a in RULES.get(name, ()) if a not in used and mesh.shape[a] > 1)
    if mesh_axes and size % math.prod(mesh.shape[a] for a in mesh_axes) == 0:
      used.update(mesh_axes)
      out.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    else:
      out.append(None)
  return P(*out)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """Pins activation `x` to the sharding its logical axes give on the mesh being traced under
  (`jax.sharding.use_abstract_mesh`); a no-op outside one (single-device use, tests)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_pspec(tuple(a or "" for a in axes), x.shape, mesh))


def traced_under(mesh: Mesh, fn):
  """fn traced with `mesh` as the abstract mesh, so that `constrain` inside it takes effect."""
  def wrapped(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)
  return wrapped


def tree_shardings(axes_tree: Any, shape_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a parameter tree, from a matching tree of logical-axis tuples and of shapes/arrays.
  Per-layer vectors (one axis besides "layers") stay replicated: sharding them saves no memory worth the
  latency of one small collective each per layer."""
  def one(axes, x):
    if sum(a != "layers" for a in axes) <= 1:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, logical_to_pspec(axes, x.shape, mesh))
  return jax.tree.map(one, axes_tree, shape_tree, is_leaf=lambda t: isinstance(t, tuple))


def batch_sharding(mesh: Mesh, ndim: int, batch_dim: int = 0) -> NamedSharding:
  """Sharding of a batch array: `batch_dim` split over the batch mesh axes, the rest replicated."""
  spec = [None] * ndim
  spec[batch_dim] = BATCH_AXES
  return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_devices(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)
