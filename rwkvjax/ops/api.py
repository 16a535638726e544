"""Public WKV-7 op: one API, several backends chosen with `impl=`.

Layout (FLA's): r, w, k, v, a, b are [B, T, H, N]; `w` is the log-decay (<= 0); the state is
[B, H, K, V] float32 with K = V = N, i.e. the transpose of the official RWKV-7 state S[value, key].
Per head and token, with S in this [K, V] layout:

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T        (S_{-1} = initial_state or 0)
    o_t = S_t^T r_t

RWKV-7 calls it with a = -kappa_hat and b = kappa_hat * iclr (see rwkvjax.models.rwkv7).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Backend = Callable[..., tuple[jax.Array, jax.Array]]

# (op, backend name) -> fn(r, w, k, v, a, b, initial_state, segment_ids) -> (o, final_state)
_BACKENDS: dict[tuple[str, str], Backend] = {}
# (op, platform) -> backend names in order of preference for impl="auto".
_AUTO_ORDER: dict[tuple[str, str], list[str]] = {}


def register_backend(name: str, fn: Backend, *, auto_platforms: tuple[str, ...] = (), op: str = "wkv7") -> None:
  """Registers `fn` as backend `name` of `op` ("wkv7", ...), with that op's argument contract.

  `auto_platforms` lists the platforms ("cpu", "gpu", "tpu") on which `impl="auto"` may pick it;
  backends registered later for a platform are preferred (faster backends register after slower ones).
  """
  _BACKENDS[(op, name)] = fn
  for platform in auto_platforms:
    _AUTO_ORDER.setdefault((op, platform), []).insert(0, name)


def backends(op: str = "wkv7") -> tuple[str, ...]:
  """Names of the backends registered for `op`."""
  return tuple(name for o, name in _BACKENDS if o == op)


def resolve_impl(impl: str, op: str = "wkv7") -> str:
  """Maps "auto" to the preferred backend of `op` on the default platform; validates other names."""
  if impl == "auto":
    preferred = _AUTO_ORDER.get((op, jax.default_backend()), [])
    return preferred[0] if preferred else "reference"
  if (op, impl) not in _BACKENDS:
    raise ValueError(f"{op} impl={impl!r}: expected 'auto' or one of {sorted(backends(op))}")
  return impl


def dispatch(op: str, impl: str) -> Backend:
  """The backend function of `op` that `impl` names."""
  return _BACKENDS[(op, resolve_impl(impl, op))]


def _check_inputs(r, w, k, v, a, b, initial_state, segment_ids) -> None:
  names = ("r", "w", "k", "v", "a", "b")
  arrays = (r, w, k, v, a, b)
  for name, x in zip(names, arrays):
    if x.ndim != 4:
      raise ValueError(f"wkv7: {name} has shape {x.shape}; expected [B, T, H, N]")
    if x.shape != r.shape:
      raise ValueError(f"wkv7: {name} has shape {x.shape}; expected the shape of r, {r.shape}")
  B, T, H, N = r.shape
  if initial_state is not None and initial_state.shape != (B, H, N, N):
    raise ValueError(f"wkv7: initial_state has shape {initial_state.shape}; expected [B, H, K, V] = {(B, H, N, N)}")
  if segment_ids is not None:
    if segment_ids.shape != (B, T):
      raise ValueError(f"wkv7: segment_ids has shape {segment_ids.shape}; expected [B, T] = {(B, T)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"wkv7: segment_ids has dtype {segment_ids.dtype}; expected an integer dtype")


def wkv7(r, w, k, v, a, b, initial_state=None, *, segment_ids=None, impl: str = "auto"):
  """The RWKV-7 WKV recurrence (generalised delta rule with a diagonal-plus-rank-1 transition).

  Args:
    r, w, k, v, a, b: [B, T, H, N] float arrays; w is the log-decay (<= 0). r, k, v, a, b share one dtype
      (float32 or bfloat16); w may be float32 while they are bfloat16 (the models keep decays in float32).
    initial_state: optional [B, H, K, V] float32 state before the first token (zeros if None).
    segment_ids: optional [B, T] ints; where the id changes from t-1 to t the state restarts from zero
      before token t (packed documents). Position 0 starts from `initial_state`.
    impl: "auto" or a registered backend name ("reference", ...).

  Returns:
    o: [B, T, H, N] in the dtype of r.
    final_state: [B, H, K, V] float32, the state after the last token.
  """
  _check_inputs(r, w, k, v, a, b, initial_state, segment_ids)
  return dispatch("wkv7", impl)(r, w, k, v, a, b, initial_state, segment_ids)
