"""Runs a WKV backend shard by shard on the mesh being traced under.

The recurrence is independent per (batch row, head), so under a mesh (the trainer traces its steps under
`jax.sharding.use_abstract_mesh`) every backend runs inside `jax.shard_map` on its local rows and heads: batch
split over the batch mesh axes, heads over "tensor" (the activations' own sharding, `RULES`), time and head
dim whole. Pallas kernels are custom calls that XLA cannot partition (without this, each device would gather
and run the whole op), and the pure-JAX backends get a partitioning that cannot put collectives inside their
chunk loops. A dimension its mesh axes do not divide stays whole (as `logical_to_pspec` decides).
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from rwkvjax.training.sharding import logical_to_pspec

TOKENS = ("batch", None, "act_heads", None)    # [B, T, H, N]
STATE = ("batch", "act_heads", None, None)     # [B, H, K, V]
PER_HEAD = ("act_heads", None)                 # [H, N] (RWKV-6's bonus u, RWKV-5's constant decay)
SEGMENTS = ("batch", None)                     # [B, T]


def _spec(x, axes, mesh) -> P:
  return logical_to_pspec(axes, x.shape, mesh)


def run_sharded(backend: Callable, arrays: tuple, initial_state, segment_ids, reset_state):
  """backend(*arrays, initial_state, segment_ids[, reset_state=]) per shard of the current abstract mesh, or
  as is outside a mesh (or on a single device).

  arrays: the op's inputs, each [B, T, H, N] (rank 4) or [H, N] (rank 2); initial_state [B, H, K, V] or None;
  segment_ids [B, T] or None; reset_state [B or 1, H, K, V] or None (passed as a keyword only when given).
  Returns (o [B, T, H, N], final_state [B, H, K, V]) as the backend does.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    extra = {} if reset_state is None else {"reset_state": reset_state}
    return backend(*arrays, initial_state, segment_ids, **extra)
  optional = {"initial_state": initial_state, "segment_ids": segment_ids, "reset_state": reset_state}
  given = {name: x for name, x in optional.items() if x is not None}
  axes = {"initial_state": STATE, "segment_ids": SEGMENTS, "reset_state": STATE}
  in_specs = (tuple(_spec(x, TOKENS if x.ndim == 4 else PER_HEAD, mesh) for x in arrays),
              {name: _spec(x, axes[name], mesh) for name, x in given.items()})
  o_spec = _spec(arrays[0], TOKENS, mesh)
  state_shape = (arrays[0].shape[0], arrays[0].shape[2], arrays[2].shape[-1], arrays[3].shape[-1])
  state_spec = logical_to_pspec(STATE, state_shape, mesh)

  def local(local_arrays, local_given):
    extra = {"reset_state": local_given["reset_state"]} if "reset_state" in local_given else {}
    return backend(*local_arrays, local_given.get("initial_state"), local_given.get("segment_ids"), **extra)

  return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(o_spec, state_spec),
                       check_vma=False)(tuple(arrays), given)
