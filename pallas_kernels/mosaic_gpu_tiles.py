"""Tile helpers shared by the Pallas Mosaic GPU kernels (Hopper, sm_90; each helper works per warpgroup).

Op-independent pieces of `pallas_kernels.wkv7.gpu` and `pallas_kernels.wkv56.gpu`: register layouts, swizzled SMEM
tiles, loads and broadcasts in the WGMMA layout, split-bf16 values (x = hi + lo), tensor-core products into an fp32
accumulator (`Mma`, with the staging the Mosaic GPU interpreter needs), the kernels' compiler and interpreter
parameters (and `profiled`, which turns on Mosaic GPU's on-device profiler for the kernels built inside it), the V-tile
width of the sequential state passes and the Hopper check that gates the kernels.

Register arrays are in the WGMMA layout (`WG`) unless a name says otherwise: `ROW` holds one value per row of such
an array, `COL` one value per column.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax
from jax._src.state import types as state_types

F32 = jnp.float32
BF16 = jnp.bfloat16
WG = plgpu.Layout.WGMMA
CHUNK = 64  # tokens per chunk of the WKV kernels: every tile is 64 rows, the K dimension goes by 64-wide blocks
HEAD_DIMS = (64, 128)  # the head sizes the WKV kernels support (multiples of CHUNK)
SMEM_TWO_CTAS_PER_SM = 228 * 1024 // 2 - 1024  # bytes per CTA for two CTAs per H100 SM (1 KiB reserved per CTA)
ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per row of a WGMMA-layout array
COL = plgpu.Layout.WGMMA.reduce(0)  # one value per column

__all__ = ["CHUNK", "HEAD_DIMS", "SMEM_TWO_CTAS_PER_SM", "WG", "ROW", "COL", "swizzled", "load", "iota", "rows",
           "cols", "split",
           "store_split", "Mma", "x3", "x2", "transposed", "is_reg", "profiled", "compiler_params", "interpret_params",
           "block_v", "unsupported_reason", "is_hopper"]


def swizzled(shape, dtype=BF16, swizzle=None):
  """An SMEM scratch type of `shape` (any rank, dtype default bf16), tiled (8 rows x one swizzle) and swizzled for
  its minor dim, or with the given swizzle in bytes (WGMMA needs equal lhs and rhs swizzles)."""
  itemsize = jnp.dtype(dtype).itemsize
  swizzle = swizzle or plgpu.find_swizzle(shape[-1] * itemsize * 8)
  return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, swizzle // itemsize)),
                                              plgpu.SwizzleTransform(swizzle)))


def load(ref, layout=WG):
  """A GMEM or SMEM ref (or view) loaded into registers in `layout` (a 2-D [rows, cols] ref for WG, a 1-D one for
  ROW / COL); dtype kept."""
  return plgpu.load(ref, layout=layout, optimized=False)


def iota(shape, dim):
  """int32 indices along `dim` of a 2-D `shape`, in the WGMMA layout."""
  return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=WG)


def rows(vec, shape):
  """vec [M] (ROW layout) broadcast along the columns of a 2-D `shape` [M, n]: out[i, j] = vec[i]."""
  return lax.broadcast_in_dim(vec, shape, [0])


def cols(vec, shape):
  """vec [n] (COL layout) broadcast along the rows of a 2-D `shape` [m, n]: out[i, j] = vec[j]."""
  return lax.broadcast_in_dim(vec, shape, [1])


def split(x):
  """(hi, lo) bf16 halves of the float32 x: hi = bf16(x), lo = bf16(x - hi), so hi + lo holds ~16 significant bits."""
  hi = x.astype(BF16)
  return hi, (x - hi.astype(F32)).astype(BF16)


def store_split(x, hi_ref, lo_ref):
  """Writes the `split` halves of the float32 x to the bf16 refs hi_ref and lo_ref (same shape as x)."""
  hi, lo = split(x)
  hi_ref[...] = hi
  lo_ref[...] = lo


class Mma:
  """Tensor-core products into one fp32 accumulator: `mm(shape, pairs)` = sum(lhs @ rhs for lhs, rhs in pairs).

  lhs is an SMEM ref (or transposed view) or a bf16 WGMMA-layout register array; rhs an SMEM ref (or view); the
  result is a float32 [M, N] `shape` register array (WGMMA layout). `scope` issues products into several
  accumulators and reads each as soon as its own products are done. The Mosaic GPU interpreter takes SMEM operands
  only, so in interpret mode register operands are staged through scratch tiles first (same values, same products;
  the interpreter runs each product when it is issued). Reading a result waits for its products, so their SMEM
  operands may be rewritten afterwards; the optimization barrier keeps LLVM from scheduling uses of the result
  before that wait (jla's note on wgmma.wait_group).

  On the H100 (jax 0.11.2), bf16 register lhs operands built from `iota` (0/1 masks) gave wrong results three
  times: NaN rows when four of them fed one chain of 8 products (wkv7 `gpu_bwd`'s dw; right as four separate
  products, until a later change of that kernel made even those NaN or wrong), and a wrong N = 128 forward when two
  fed [64, 128] products (wkv56 `_prep`; right from SMEM). Keep such operands in SMEM, or load them from GMEM into
  registers (wkv7 `gpu_bwd`'s dw, right on the H100 since)."""

  def __init__(self, stage):
    self.stage = stage  # None, or {shape: [bf16 scratch refs]} in interpret mode

  def __call__(self, shape, pairs):
    return self.scope([shape], lambda issue, read: (issue(0, pairs), read(0))[1])

  def scope(self, shapes, body):
    """Products into several fp32 accumulators (one per shape in `shapes`), overlapped with the warpgroup's other
    work: runs body(issue, read) and returns its result. issue(i, pairs) starts sum(lhs @ rhs for lhs, rhs in pairs)
    into accumulator i (asynchronously, adding to what it holds); read(i) waits until the products issued into
    accumulator i are done (only those: products issued after them stay in flight) and returns its value. So the
    tensor cores compute one product while the warpgroup works on an earlier result. An SMEM operand must not be
    rewritten before the products reading it are read."""
    free = None if self.stage is None else {k: list(v) for k, v in self.stage.items()}
    staged = {}  # interpret mode: id(register lhs) -> (its scratch tile, the lhs, kept so that its id stays unique)

    def scoped(*accs):
      issued = []  # the accumulator of every committed group of products, in issue order

      def issue(i, pairs):
        for lhs, rhs in self._staged(pairs, free, staged):
          plgpu.wgmma(accs[i], lhs, rhs)
          issued.append(i)

      def read(i):
        later = len(issued) - 1 - max(n for n, j in enumerate(issued) if j == i)
        return lax.optimization_barrier(plgpu.wgmma_accumulator_load(accs[i], wait_n=later))

      return body(issue, read)

    return pl.run_scoped(scoped, *(plgpu.ACC(shape, F32) for shape in shapes))

  @staticmethod
  def _staged(pairs, free, staged):
    """pairs with their register lhs operands written to free scratch tiles (interpret mode: free is not None), each
    register value once per scope (`staged`)."""
    if free is None:
      return pairs
    out = []
    for lhs, rhs in pairs:
      if not is_reg(lhs):
        out.append((lhs, rhs))
        continue
      key = id(lhs)
      if key not in staged:
        ref = free[tuple(lhs.shape)].pop()
        ref[...] = lhs
        staged[key] = (ref, lhs)
      out.append((staged[key][0], rhs))
    plgpu.commit_smem()
    return out


def x3(lhs, rhs):
  """The `Mma` pairs of a split-bf16 x3 product of two (hi, lo) bf16 pairs (lhs: registers or SMEM tiles, rhs:
  SMEM tiles or views): hi hi + hi lo + lo hi (fp32 accumulation, about 16 significant bits)."""
  return [(lhs[0], rhs[0]), (lhs[0], rhs[1]), (lhs[1], rhs[0])]


def x2(lhs, rhs):
  """The `Mma` pairs of a product with one exact bf16 side: lhs or rhs a single operand, the other a (hi, lo)
  pair (two passes)."""
  if isinstance(lhs, tuple):
    return [(lhs[0], rhs), (lhs[1], rhs)]
  return [(lhs, rhs[0]), (lhs, rhs[1])]


def transposed(pair):
  """The transposed views of a (hi, lo) pair of SMEM tiles."""
  return tuple(x.T for x in pair)


def is_reg(x):
  """True for a register array, False for an SMEM ref (plain or transformed)."""
  return not isinstance(x, state_types.TransformedRef) and not isinstance(getattr(x, "aval", None),
                                                                         state_types.AbstractRef)


_PROFILE = {}  # the on-device profiler's compiler parameters while `profiled` is active


@contextlib.contextmanager
def profiled(directory: str, regions: int = 64):
  """Within: the kernels traced (built) record, per warpgroup, the SM clock at the start and end of each
  `jax.named_scope` region of their bodies (Mosaic GPU's on-device profiler: at most `regions` regions per warpgroup,
  later ones dropped; 16 bytes of SMEM per region) and every call writes a Chrome trace JSON into `directory`
  (`benchmarks/kernel_regions.py` runs and summarizes them). Needs a GPU: the trace leaves by a host callback."""
  _PROFILE.update(profile_space=regions, profile_dir=directory, profile_bounds_check=True)
  try:
    yield
  finally:
    _PROFILE.clear()


def compiler_params(cross_warp_sums: bool = True):
  """The kernels' `plgpu.CompilerParams`: lane (per-warpgroup array) semantics, approximate exp (and the profiler's
  parameters inside `profiled`).

  cross_warp_sums=False for a kernel whose sums stay inside warps (row sums of WGMMA-layout arrays; no column sums):
  Pallas then reserves no SMEM for cross-warp reductions (2 KiB by default, for any kernel with a sum)."""
  extra = {} if cross_warp_sums else {"reduction_scratch_bytes": 0}
  return plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane, approx_math=True, **extra, **_PROFILE)


def interpret_params(interpret: bool):
  """The `interpret` argument of `plgpu.kernel`: the Mosaic GPU interpreter's parameters if `interpret`, else None."""
  return plgpu.InterpretGPUParams() if interpret else None


def block_v(B: int, H: int, N: int, widest: int = 64) -> int:
  """The V-tile width bv of a sequential state pass over the grid (N // bv, H, B): the widest of 64, 32, 16 (<= N
  and <= `widest`, the widest whose SMEM fits) giving at least 132 CTAs (one per SM of an H100), else 16. Wider tiles
  read each chunk's K-side tiles fewer times: at K1 (B 8, H 32, N 64) on an H100, bv 64 (256 CTAs) against 32 cut
  WKV-7's state passes from 1.17 / 0.83 to 0.72 / 0.48 ms and WKV-6's from 0.69 / 0.39 to 0.45 / 0.29 ms; bv 16 was
  slower than 32 (docs/benchmarks.md)."""
  for bv in (64, 32, 16):
    if bv <= min(N, widest) and B * H * (N // bv) >= 132:
      return bv
  return 16


def unsupported_reason(r, head_dims, interpret: bool) -> str | None:
  """Why the Mosaic GPU kernels of a WKV op cannot run a call with r [B, T, H, N] (N not in `head_dims`; no Hopper
  GPU, unless `interpret`), or None if they can."""
  N = r.shape[-1]
  if N not in head_dims:
    return f"head dim {N} not in {tuple(head_dims)}"
  if not interpret and not is_hopper():
    return "the Mosaic GPU kernels need an sm_90 (Hopper) GPU"
  return None


@functools.cache
def is_hopper() -> bool:
  """True if JAX's first device is an sm_90 (Hopper) GPU, the only target of the Mosaic GPU kernels."""
  try:
    dev = jax.devices()[0]
  except RuntimeError:
    return False
  return dev.platform == "gpu" and getattr(dev, "compute_capability", None) == "9.0"
