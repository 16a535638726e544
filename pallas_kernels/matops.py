"""2-D float32 building blocks of the per-chunk algebra (`pallas_kernels.wkv7.common`, `pallas_kernels.wkv56.common`).

Nothing but 2-D matmuls, iota masks and axis sums, so that the same code runs inside a Pallas TPU kernel body and,
under `jax.vmap`, as batched XLA (the Mosaic GPU backends' chunk-parallel gradients).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32

__all__ = ["MatOps", "x3_on_gpu", "row_of", "diag_matrix", "diag_row"]


@dataclasses.dataclass(frozen=True)
class MatOps:
  """The three matmul shapes the chunk algebra uses, on 2-D float32 arrays, and the precision they run at."""

  precision: object = lax.Precision.HIGHEST

  def _dot(self, x, y, dims):
    return lax.dot_general(x, y, (dims, ((), ())), precision=self.precision, preferred_element_type=F32)

  def mm(self, x, y):  # x @ y
    return self._dot(x, y, ((1,), (0,)))

  def nt(self, x, y):  # x @ y^T
    return self._dot(x, y, ((1,), (1,)))

  def tn(self, x, y):  # x^T @ y
    return self._dot(x, y, ((0,), (0,)))


def x3_on_gpu() -> MatOps:
  """The MatOps of the Mosaic GPU backends' XLA glue: split-bf16 x3 products (BF16_BF16_F32_X3, the precision of the
  kernels' own tensor-core products) when JAX's default backend is a GPU, Precision.HIGHEST elsewhere (interpret
  mode on CPU)."""
  gpu = jax.default_backend() == "gpu"
  return MatOps(precision=lax.DotAlgorithmPreset.BF16_BF16_F32_X3 if gpu else lax.Precision.HIGHEST)


def _iota(shape, dim):
  return lax.broadcasted_iota(jnp.int32, shape, dim)


def row_of(x, i):
  """Row i of the 2-D x as a [1, N] array (a masked sublane sum: no unaligned slicing inside kernels)."""
  return jnp.sum(jnp.where(_iota(x.shape, 0) == i, x, 0.0), axis=0, keepdims=True)


def diag_matrix(row):
  """diag(row) [N, N] for a [1, N] row (multiplying by it scales the rows of the other operand)."""
  n = row.shape[1]
  return jnp.where(_iota((n, n), 0) == _iota((n, n), 1), jnp.broadcast_to(row, (n, n)), 0.0)


def diag_row(x):
  """The diagonal of the square x as a [1, N] row."""
  return jnp.sum(jnp.where(_iota(x.shape, 0) == _iota(x.shape, 1), x, 0.0), axis=0, keepdims=True)
