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

__all__ = ["MatOps", "x3_on_gpu", "row_of", "diag_matrix", "diag_row", "unit_lower_inverse"]


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


def unit_lower_inverse(A, ops: MatOps):
  """(I - A)^{-1} for strictly lower-triangular A [L, L] (any L; the last block of a level may be partial), by block
  doubling.

  After the step for block size s the result D is block diagonal with the inverses of the s x s diagonal blocks of
  I - A. Two neighbouring blocks merge with [[D1, 0], [D2 A21 D1, D2]], i.e. D <- D + D A_off D with A_off the
  A21 blocks: 2 matmuls per level, log2(L) - 1 levels (the first, s = 1, is D = I + A_off). Every intermediate is a
  block of the final inverse, so this is as stable as forward substitution (no Neumann series over the whole
  chunk, which cancels catastrophically in float32 for aligned kk; spec section 2.4).
  """
  n = A.shape[0]
  r, c = _iota((n, n), 0), _iota((n, n), 1)
  eye = jnp.where(r == c, 1.0, 0.0).astype(F32)

  def off(shift):  # A's blocks just below the diagonal blocks of size 2^shift, inside blocks of 2^(shift+1)
    keep = ((r >> (shift + 1)) == (c >> (shift + 1))) & ((r >> shift) != (c >> shift))
    return jnp.where(keep, A, 0.0)

  D = eye + off(0)
  shift = 1
  while (1 << shift) < n:
    D = D + ops.mm(ops.mm(D, off(shift)), D)
    shift += 1
  return D
