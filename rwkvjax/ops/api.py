"""Public WKV-7 op: one API, several backends chosen with `impl=`.

Layout (FLA's): r, w, k, v, a, b are [B, T, H, N]; `w` is the log-decay (<= 0); the state is
[B, H, K, V] float32 with K = V = N, i.e. the transpose of the official RWKV-7 state S[value, key].
Per head and token, with S in this [K, V] layout:

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T        (S_{-1} = initial_state or 0)
    o_t = S_t^T r_t

RWKV-7 calls it with a = -kappa_hat and b = kappa_hat * iclr (see rwkvjax.models.rwkv7).

Packed documents: where `segment_ids` change at t > 0, S_{t-1} is replaced by `reset_state` (zeros if None)
before token t. Backends registered with `supports_reset_state=True` accept a `reset_state`; `impl="auto"`
picks among those when one is given, and naming another backend raises NotImplementedError.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rwkvjax.ops.partition import run_sharded

Backend = Callable[..., tuple[jax.Array, jax.Array]]

# (op, backend name) -> fn(r, w, k, v, a, b, initial_state, segment_ids) -> (o, final_state)
# (wkv5/wkv6: fn(r, w, k, v, u, initial_state, segment_ids)), plus the keyword reset_state= if it supports one.
_BACKENDS: dict[tuple[str, str], Backend] = {}
# (op, platform) -> backend names in order of preference for impl="auto".
_AUTO_ORDER: dict[tuple[str, str], list[str]] = {}
# (op, backend name) -> whether the backend implements a reset_state.
_RESET_STATE: dict[tuple[str, str], bool] = {}


def register_backend(name: str, fn: Backend, *, auto_platforms: tuple[str, ...] = (), op: str = "wkv7",
                     supports_reset_state: bool = False) -> None:
  """Registers `fn` as backend `name` of `op` ("wkv7", "wkv6", "wkv5"), with that op's argument contract.

  `fn` takes the op's arrays, then initial_state and segment_ids (each possibly None).
  `auto_platforms` lists the platforms ("cpu", "gpu", "tpu") on which `impl="auto"` may pick it;
  backends registered later for a platform are preferred (faster backends register after slower ones).
  `supports_reset_state`: `fn` also takes the keyword `reset_state` ([B or 1, H, K, V] float32, the state
  segments restart from). The op passes it only when one is given, and then only to such backends: naming
  another backend raises NotImplementedError, and "auto" skips it.
  """
  _BACKENDS[(op, name)] = fn
  _RESET_STATE[(op, name)] = supports_reset_state
  for platform in auto_platforms:
    _AUTO_ORDER.setdefault((op, platform), []).insert(0, name)


def backends(op: str = "wkv7", *, reset_state: bool = False) -> tuple[str, ...]:
  """Names of the backends registered for `op`; with reset_state=True only those that support one."""
  return tuple(name for o, name in _BACKENDS if o == op and (not reset_state or _RESET_STATE[(o, name)]))


def resolve_impl(impl: str, op: str = "wkv7", *, reset_state: bool = False) -> str:
  """Maps "auto" to the preferred backend of `op` on the default platform (among those supporting a
  reset_state if `reset_state`); validates other names.

  Raises:
    ValueError: an unknown backend name.
    NotImplementedError: reset_state=True and the named backend does not support it.
  """
  if impl == "auto":
    preferred = [name for name in _AUTO_ORDER.get((op, jax.default_backend()), [])
                 if not reset_state or _RESET_STATE[(op, name)]]
    return preferred[0] if preferred else "reference"
  if (op, impl) not in _BACKENDS:
    raise ValueError(f"{op} impl={impl!r}: expected 'auto' or one of {sorted(backends(op))}")
  if reset_state and not _RESET_STATE[(op, impl)]:
    raise NotImplementedError(f"{op} impl={impl!r} does not support reset_state; use 'auto' or one of "
                              f"{sorted(backends(op, reset_state=True))}")
  return impl


def dispatch(op: str, impl: str, *args, reset_state=None):
  """Runs the backend of `op` that `impl` names on `args` (the op's arrays, initial_state, segment_ids); a
  reset_state goes to it as a keyword, only when given (and "auto" then picks a backend that supports one).
  Under a mesh the backend runs per shard of batch rows and heads (`rwkvjax.ops.partition`)."""
  backend = _BACKENDS[(op, resolve_impl(impl, op, reset_state=reset_state is not None))]
  *arrays, initial_state, segment_ids = args
  return run_sharded(backend, tuple(arrays), initial_state, segment_ids, reset_state)


def check_state_inputs(op: str, initial_state, segment_ids, reset_state, shape: tuple[int, int, int, int]) -> None:
  """Validates the optional inputs of a WKV op whose token arrays are [B, T, H, N] (`shape`): initial_state
  [B, H, N, N]; segment_ids [B, T] ints; reset_state float, [B, H, N, N] or [1, H, N, N], and only with
  segment_ids (without them no segment restarts, so it would have no effect)."""
  B, T, H, N = shape
  if initial_state is not None and initial_state.shape != (B, H, N, N):
    raise ValueError(f"{op}: initial_state has shape {initial_state.shape}; expected [B, H, K, V] = {(B, H, N, N)}")
  if segment_ids is not None:
    if segment_ids.shape != (B, T):
      raise ValueError(f"{op}: segment_ids has shape {segment_ids.shape}; expected [B, T] = {(B, T)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"{op}: segment_ids has dtype {segment_ids.dtype}; expected an integer dtype")
  if reset_state is None:
    return
  if segment_ids is None:
    raise ValueError(f"{op}: reset_state is given without segment_ids; it is the state that packed segments "
                     "restart from where segment_ids change, so pass segment_ids too (or no reset_state)")
  if reset_state.shape not in ((B, H, N, N), (1, H, N, N)):
    raise ValueError(f"{op}: reset_state has shape {reset_state.shape}; expected [B, H, K, V] = {(B, H, N, N)} "
                     f"or [1, H, K, V] = {(1, H, N, N)}")
  if not jnp.issubdtype(reset_state.dtype, jnp.floating):
    raise ValueError(f"{op}: reset_state has dtype {reset_state.dtype}; expected a float dtype (float32)")


def _check_inputs(r, w, k, v, a, b, initial_state, segment_ids, reset_state) -> None:
  names = ("r", "w", "k", "v", "a", "b")
  arrays = (r, w, k, v, a, b)
  for name, x in zip(names, arrays):
    if x.ndim != 4:
      raise ValueError(f"wkv7: {name} has shape {x.shape}; expected [B, T, H, N]")
    if x.shape != r.shape:
      raise ValueError(f"wkv7: {name} has shape {x.shape}; expected the shape of r, {r.shape}")
  check_state_inputs("wkv7", initial_state, segment_ids, reset_state, r.shape)


def wkv7(r, w, k, v, a, b, initial_state=None, *, segment_ids=None, reset_state=None, impl: str = "auto"):
  """The RWKV-7 WKV recurrence (generalised delta rule with a diagonal-plus-rank-1 transition).

  Args:
    r, w, k, v, a, b: [B, T, H, N] float arrays; w is the log-decay (<= 0). r, k, v, a, b share one dtype
      (float32 or bfloat16); w may be float32 while they are bfloat16 (the models keep decays in float32).
    initial_state: optional [B, H, K, V] float32 state before the first token (zeros if None).
    segment_ids: optional [B, T] ints; where the id changes from t-1 to t the state restarts from
      `reset_state` (zero if None) before token t (packed documents). Position 0 starts from `initial_state`.
    reset_state: optional float32 [B, H, K, V], or [1, H, K, V] for every row: the state each packed segment
      after the first starts from (state tuning: the learned state). Needs segment_ids. Its gradient is the
      sum of the state adjoints entering every restart (and over the batch when it is [1, H, K, V]).
    impl: "auto" or a registered backend name ("reference", ...). With a reset_state, "auto" picks a backend
      that supports one, and naming one that does not raises NotImplementedError.

  Returns:
    o: [B, T, H, N] in the dtype of r.
    final_state: [B, H, K, V] float32, the state after the last token.
  """
  _check_inputs(r, w, k, v, a, b, initial_state, segment_ids, reset_state)
  return dispatch("wkv7", impl, r, w, k, v, a, b, initial_state, segment_ids, reset_state=reset_state)
