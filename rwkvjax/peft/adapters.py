"""Weight adapters on linear layers: LoRA, PiSSA, DiSHA-Bone and BAT (Bone v1), with merge and unmerge.

Every adapter is a function ΔW(adapter tensors, W) added to a frozen linear weight W [out, in] (torch's
nn.Linear layout, as the parameter tree stores it); the model then runs with W' = W + ΔW. Tensor names and
shapes are RWKV-PEFT's (`rwkvt/peft/rwkvLinear.py`), so its adapter files load here and ours load there:

  lora    lora_A [r, in] (kaiming-uniform), lora_B [out, r] (zeros)      ΔW = (alpha / r) · B A
  pissa   lora_A, lora_B from a randomised SVD of W (A = √S Vᵀ, B = U √S), plus the frozen init
          init_lora_A, init_lora_B (the same values)                      ΔW = B A − B₀ A₀
  bone    disha [r, out] (zeros), shared by every r-wide input shard      ΔW[o, j·r + i] = D[i, o]
  bat     disha [in/r, r, r] (zeros), one r×r matrix per input block b    ΔW_{a,b} = W_{a,b} D_b + D_b

Conventions (documented in docs/peft.md):
* PiSSA keeps the original W frozen in the parameter tree and subtracts the saved init inside ΔW, so
  W + ΔW = (W − B₀A₀) + BA, which is RWKV-PEFT's residual-weight formulation; the merge with the saved init
  is exact and the frozen weights stay bit-identical to the base model.
* Bone with in % r != 0: the last, partial input shard uses the first rows of D (RWKV-PEFT zero-pads x in
  the forward and merges Dᵀ[:, :in % r] into the last columns).
* BAT indexes D by the **input** block (RWKV-PEFT's layout, `rearrange(W, '(a r1) (b r2) -> a b r1 r2') @ D
  + D`), not by the output block as HF PEFT does; it needs in % r == 0 and out % r == 0.

All functions accept extra leading (layer) axes and compute in float32.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rwkvjax.models.params import ParamSpec

METHODS = ("lora", "pissa", "bone", "bat")
# RWKV-PEFT's make_linear_att / make_linear_ffn layers: att receptance/key/value/output (+ gate in x052/x060),
# ffn key/value (+ receptance in x052/x060). Not emb/head and not the small LoRA-style mixing matrices.
DEFAULT_TARGETS = r"^blocks\.(att|ffn)\.(receptance|key|value|gate|output)\.weight$"
# Suffixes of adapter tensors, per method: (trainable, frozen).
ADAPTER_TENSORS = {"lora": (("lora_A", "lora_B"), ()), "pissa": (("lora_A", "lora_B"), ("init_lora_A", "init_lora_B")),
                   "bone": (("disha",), ()), "bat": (("disha",), ())}
ALL_SUFFIXES = ("lora_A", "lora_B", "init_lora_A", "init_lora_B", "disha")


@dataclasses.dataclass(frozen=True)
class Target:
  """A linear weight an adapter attaches to.

  Attributes:
    weight: parameter name of the frozen weight (`blocks.att.key.weight`).
    shape: (out, in); axes: its logical axes; pth_key: RWKV-LM key with "{l}" for the block index.
  """

  weight: str
  shape: tuple[int, int]
  axes: tuple[str, str]
  pth_key: str

  @property
  def prefix(self) -> str:
    return self.weight[: -len(".weight")]

  def name(self, suffix: str) -> str:
    """Parameter name of adapter tensor `suffix` ("lora_A", "disha", ...)."""
    return f"{self.prefix}.{suffix}"


def find_targets(specs: list[ParamSpec], pattern: str = DEFAULT_TARGETS) -> list[Target]:
  """The per-block 2-D `.weight` parameters whose name matches `pattern` (re.search on names such as
  `blocks.att.key.weight`). Raises ValueError when nothing matches."""
  regex = re.compile(pattern)
  out = [Target(s.name, tuple(s.shape), tuple(s.axes), s.pth_key) for s in specs
         if s.stacked and len(s.shape) == 2 and s.name.endswith(".weight") and regex.search(s.name)]
  if not out:
    names = [s.name for s in specs if s.stacked and len(s.shape) == 2 and s.name.endswith(".weight")]
    raise ValueError(f"adapter targets {pattern!r} match no per-block linear weight; candidates: {names}")
  return out


def check_rank(method: str, r: int, target: Target) -> None:
  """Raises ValueError when rank r does not fit the target's shape for `method`."""
  out_f, in_f = target.shape
  if method not in METHODS:
    raise ValueError(f"adapter method {method!r}: expected one of {METHODS}")
  if r < 1:
    raise ValueError(f"adapter rank r={r}: expected a positive int")
  if method == "pissa" and r > min(out_f, in_f):
    raise ValueError(f"pissa r={r} exceeds min(out, in) = {min(out_f, in_f)} of {target.weight} {target.shape}")
  if method == "bat" and (in_f % r or out_f % r):
    raise ValueError(f"bat r={r} must divide both dims of {target.weight} {target.shape}")


def _kaiming_uniform_a5(shape):
  """torch.nn.init.kaiming_uniform_(a=sqrt(5)) of a [fan_out, fan_in] matrix: U(-1/sqrt(fan_in), +)."""
  def init(key, layer, cfg):
    del layer, cfg
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  return init


def _zeros(shape):
  return lambda key, layer, cfg: jnp.zeros(shape, jnp.float32)


def tensor_shapes(method: str, r: int, target: Target) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
  """{suffix: (per-layer shape, logical axes)} of the method's adapter tensors on `target`."""
  (out_f, in_f), (out_ax, in_ax) = target.shape, target.axes
  if method in ("lora", "pissa"):
    shapes = {"lora_A": ((r, in_f), ("lora", in_ax)), "lora_B": ((out_f, r), (out_ax, "lora"))}
    if method == "pissa":
      shapes.update({"init_lora_A": shapes["lora_A"], "init_lora_B": shapes["lora_B"]})
    return shapes
  if method == "bone":
    return {"disha": ((r, out_f), ("lora", out_ax))}
  if method == "bat":
    return {"disha": ((in_f // r, r, r), ("lora", "lora", "lora"))}
  raise ValueError(f"adapter method {method!r}: expected one of {METHODS}")


def adapter_specs(method: str, r: int, targets: list[Target]) -> list[ParamSpec]:
  """ParamSpecs (stacked per block, RWKV-PEFT `.pth` names) of the adapter tensors. LoRA's A is
  kaiming-uniform and everything else zero; PiSSA's real init comes from `pissa_init`."""
  specs = []
  for t in targets:
    check_rank(method, r, t)
    for suffix, (shape, axes) in tensor_shapes(method, r, t).items():
      init = _kaiming_uniform_a5(shape) if (method == "lora" and suffix == "lora_A") else _zeros(shape)
      specs.append(ParamSpec(t.name(suffix), shape, axes, init, True, f"{t.pth_key[:-len('.weight')]}.{suffix}",
                             shape))
  return specs


# ----------------------------------------------------------------------------------------------------
# ΔW, merge and unmerge
# ----------------------------------------------------------------------------------------------------

def _bone_delta(D, in_f):
  """D [..., r, out] -> ΔW [..., out, in] with ΔW[o, j*r + i] = D[i, o] (partial last shard: first rows)."""
  r = D.shape[-2]
  reps = -(-in_f // r)
  Dt = jnp.swapaxes(D, -1, -2)  # [..., out, r]
  return jnp.tile(Dt, (1,) * (Dt.ndim - 1) + (reps,))[..., :in_f]


def _blocks(W, r):
  """W [..., out, in] -> [..., a, b, r, r] (a = out block, b = in block)."""
  *lead, out_f, in_f = W.shape
  x = W.reshape(*lead, out_f // r, r, in_f // r, r)
  return jnp.swapaxes(x, -3, -2)


def _unblocks(x):
  """Inverse of `_blocks`."""
  *lead, a, b, r, r2 = x.shape
  return jnp.swapaxes(x, -3, -2).reshape(*lead, a * r, b * r2)


def delta(method: str, tensors: Mapping[str, jax.Array], weight: jax.Array, *, alpha: float | None = None
          ) -> jax.Array:
  """ΔW [..., out, in] float32 of one adapter on weight W [..., out, in].

  Args:
    tensors: the adapter's tensors by suffix ("lora_A", "lora_B", "init_lora_A", "init_lora_B", "disha").
    weight: the frozen weight (used by BAT only; its shape fixes `in` for Bone).
    alpha: LoRA's alpha (scale alpha / r); ignored by the other methods.
  """
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  if method in ("lora", "pissa"):
    A, B = f32(tensors["lora_A"]), f32(tensors["lora_B"])
    ba = jnp.einsum("...or,...ri->...oi", B, A, precision="highest")
    if method == "lora":
      if alpha is None:
        raise ValueError("lora delta needs alpha")
      return ba * (alpha / A.shape[-2])
    A0, B0 = f32(tensors["init_lora_A"]), f32(tensors["init_lora_B"])
    return ba - jnp.einsum("...or,...ri->...oi", B0, A0, precision="highest")
  if method == "bone":
    return _bone_delta(f32(tensors["disha"]), weight.shape[-1])
  if method == "bat":
    D = f32(tensors["disha"])  # [..., b, r, r]
    blocks = _blocks(f32(weight), D.shape[-1])  # [..., a, b, r, r]
    return _unblocks(jnp.einsum("...abij,...bjk->...abik", blocks, D, precision="highest") + D[..., None, :, :, :])
  raise ValueError(f"adapter method {method!r}: expected one of {METHODS}")


def merge(method: str, tensors: Mapping[str, jax.Array], weight: jax.Array, *, alpha: float | None = None
          ) -> jax.Array:
  """W + ΔW in float32."""
  return jnp.asarray(weight, jnp.float32) + delta(method, tensors, weight, alpha=alpha)


def unmerge(method: str, tensors: Mapping[str, jax.Array], merged: jax.Array, *, alpha: float | None = None
            ) -> jax.Array:
  """The weight W with merge(W) = merged, float32. BAT solves W_{a,b} (I + D_b) = W'_{a,b} − D_b per block."""
  merged = jnp.asarray(merged, jnp.float32)
  if method != "bat":
    return merged - delta(method, tensors, merged, alpha=alpha)
  D = jnp.asarray(tensors["disha"], jnp.float32)  # [..., b, r, r]
  r = D.shape[-1]
  rhs = _blocks(merged, r) - D[..., None, :, :, :]  # [..., a, b, r, r]
  eye = jnp.eye(r, dtype=jnp.float32)
  # X (I + D) = rhs  <=>  (I + D)^T X^T = rhs^T
  lhs = jnp.broadcast_to(jnp.swapaxes(eye + D, -1, -2)[..., None, :, :, :], rhs.shape)
  x_t = jnp.linalg.solve(lhs, jnp.swapaxes(rhs, -1, -2))
  return _unblocks(jnp.swapaxes(x_t, -1, -2))


# ----------------------------------------------------------------------------------------------------
# PiSSA initialisation
# ----------------------------------------------------------------------------------------------------

def svd_lowrank(M: jax.Array, q: int, niter: int, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Randomised truncated SVD (Halko et al. 2011, Alg. 4.4 with QR re-orthonormalisation, as
  torch.svd_lowrank): M [m, n] ≈ U diag(S) Vh with U [m, q], S [q], Vh [q, n]. float32."""
  M = jnp.asarray(M, jnp.float32)
  hp = dict(precision="highest")
  omega = jax.random.normal(key, (M.shape[1], q), jnp.float32)
  Q, _ = jnp.linalg.qr(jnp.matmul(M, omega, **hp))

  def power_iteration(_, Q):
    Q, _ = jnp.linalg.qr(jnp.matmul(M.T, Q, **hp))
    return jnp.linalg.qr(jnp.matmul(M, Q, **hp))[0]
  Q = jax.lax.fori_loop(0, niter, power_iteration, Q)
  U_small, S, Vh = jnp.linalg.svd(jnp.matmul(Q.T, M, **hp), full_matrices=False)
  return jnp.matmul(Q, U_small, **hp), S, Vh


def pissa_init(weight: jax.Array, r: int, niter: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(lora_A [..., r, in], lora_B [..., out, r]) with B A the rank-r principal part of W [..., out, in]:
  A = diag(√S) Vh, B = U diag(√S) from `svd_lowrank` (RWKV-PEFT's `pissa_init`). Leading axes are vmapped
  with independent keys."""
  weight = jnp.asarray(weight, jnp.float32)
  lead = weight.shape[:-2]
  if lead:
    flat = weight.reshape(-1, *weight.shape[-2:])
    keys = jax.random.split(key, flat.shape[0])
    A, B = jax.vmap(lambda w, k: pissa_init(w, r, niter, k))(flat, keys)
    return A.reshape(*lead, *A.shape[-2:]), B.reshape(*lead, *B.shape[-2:])
  U, S, Vh = svd_lowrank(weight, r, niter, key)
  root = jnp.sqrt(S)
  return root[:, None] * Vh, U * root[None, :]


# ----------------------------------------------------------------------------------------------------
# Whole parameter trees (flat dicts of dotted names)
# ----------------------------------------------------------------------------------------------------

def adapter_tensors(flat: Mapping[str, Any], target: Target) -> dict[str, Any]:
  """{suffix: tensor} of the adapter tensors on `target` present in a flat params dict."""
  return {s: flat[target.name(s)] for s in ALL_SUFFIXES if target.name(s) in flat}


def is_adapter_name(name: str) -> bool:
  return name.rsplit(".", 1)[-1] in ALL_SUFFIXES


def merged_weights(flat: Mapping[str, Any], method: str, targets: list[Target], *, alpha: float | None = None,
                   dtype=None) -> dict[str, Any]:
  """A flat params dict without adapter tensors, each target weight replaced by W + ΔW (float32, or cast to
  `dtype`)."""
  out = {k: v for k, v in flat.items() if not is_adapter_name(k)}
  for t in targets:
    w = merge(method, adapter_tensors(flat, t), flat[t.weight], alpha=alpha)
    out[t.weight] = w if dtype is None else w.astype(dtype)
  return out


def unmerged_weights(flat: Mapping[str, Any], adapters: Mapping[str, Any], method: str, targets: list[Target], *,
                     alpha: float | None = None) -> dict[str, Any]:
  """Inverse of `merged_weights`: `flat` holds merged weights, `adapters` the adapter tensors (flat names)."""
  out = dict(flat)
  for t in targets:
    out[t.weight] = unmerge(method, adapter_tensors(adapters, t), flat[t.weight], alpha=alpha)
  return out
