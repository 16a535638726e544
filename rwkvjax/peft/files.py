"""Adapter-only and state-only checkpoints in RWKV-PEFT's key names, and merging them into RWKV-LM `.pth`.

Key names (per block l, as RWKV-PEFT writes them after stripping Lightning's "model." prefix):
  blocks.{l}.att.time_state                   [H, N, N], layout [head, value, key]   (state tuning)
  blocks.{l}.{att|ffn}.{name}.lora_A          [r, in]                               (LoRA, PiSSA)
  blocks.{l}.{att|ffn}.{name}.lora_B          [out, r]
  blocks.{l}.{att|ffn}.{name}.init_lora_A/B   PiSSA's init (the separate `init_pissa.pth`)
  blocks.{l}.{att|ffn}.{name}.disha           [r, out] (Bone) or [in/r, r, r] (BAT)
plus any fully trained part (`train_parts`) under its RWKV-LM key (`blocks.{l}.ln1.weight`, `emb.weight`).

The merge follows RWKV-PEFT's `merge/merge_{lora,pissa,disha,state}.py`: adapters are folded into their
`.weight` (LoRA scaled by alpha / r, PiSSA as W − B₀A₀ + BA with the saved init, Bone/BAT by their
formulas), trained parts replace the base tensors, and `time_state` keys are added (the `rwkv` package
loads them for RWKV-5/6; for RWKV-7 the caller sets the state from them). Everything is computed in float32
and cast back to each base tensor's dtype.
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from rwkvjax.convert.rwkv_pth import PTH_DTYPES, CheckpointError, params_from_state_dict
from rwkvjax.convert.torch_zip import load_state_dict, save_state_dict
from rwkvjax.models.params import ParamSpec
from rwkvjax.peft import adapters

PEFT_CONFIG_FILE = "peft_config.json"
PISSA_INIT_FILE = "init_pissa.pth"
_TIME_STATE = re.compile(r"^blocks\.(\d+)\.att\.time_state$")
_PREFIXES = ("model.", "_forward_module.model.", "module.")


def strip_prefixes(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops Lightning / DeepSpeed wrapper prefixes ("model.", ...) from state-dict keys."""
  out = {}
  for k, v in sd.items():
    for p in _PREFIXES:
      if k.startswith(p):
        k = k[len(p):]
        break
    out[k] = v
  return out


def load_peft_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A `.pth` of adapter / state / trained-part tensors, keys without wrapper prefixes."""
  return strip_prefixes(load_state_dict(path))


# ----------------------------------------------------------------------------------------------------
# Parameter trees <-> per-layer .pth entries
# ----------------------------------------------------------------------------------------------------

def to_pth_entries(flat: Mapping[str, Any], specs: list[ParamSpec], dtype: str = "float32"
                   ) -> dict[str, np.ndarray]:
  """{pth_key: array} for the specs (whose names must be in the flat params dict), in layer order."""
  np_dtype = PTH_DTYPES[dtype]
  arrays = {s.name: np.asarray(flat[s.name], np.float32) for s in specs}
  out: dict[str, np.ndarray] = collections.OrderedDict()
  for s in specs:
    if not s.stacked:
      out[s.pth_key] = arrays[s.name].astype(np_dtype).reshape(s.pth_shape)
  n_layer = max((arrays[s.name].shape[0] for s in specs if s.stacked), default=0)
  for l in range(n_layer):
    for s in specs:
      if s.stacked:
        out[s.pth_key.format(l=l)] = arrays[s.name][l].astype(np_dtype).reshape(s.pth_shape)
  return out


def from_pth_entries(sd: Mapping[str, np.ndarray], specs: list[ParamSpec], n_layer: int, *,
                     source: str = "checkpoint") -> dict[str, np.ndarray]:
  """{name: float32 array} for every spec whose keys are in `sd` (stacked over layers). Raises
  CheckpointError for a spec present in only some layers or with a wrong shape."""
  out = {}
  for s in specs:
    keys = [s.pth_key.format(l=l) for l in range(n_layer)] if s.stacked else [s.pth_key]
    present = [k in sd for k in keys]
    if not any(present):
      continue
    if not all(present):
      missing = keys[present.index(False)]
      raise CheckpointError(f"{source}: has {s.pth_key} for some layers but not {missing!r}")
    values = []
    for k in keys:
      v = np.asarray(sd[k], np.float32)
      if v.size != int(np.prod(s.pth_shape)) or (v.shape != s.pth_shape and v.shape != s.shape):
        raise CheckpointError(f"{source}: {k!r} has shape {v.shape}; expected {s.pth_shape}")
      values.append(v.reshape(s.shape))
    out[s.name] = np.stack(values) if s.stacked else values[0]
  return out


# ----------------------------------------------------------------------------------------------------
# State files
# ----------------------------------------------------------------------------------------------------

def time_state_from_state_dict(sd: Mapping[str, np.ndarray], *, source: str = "state file") -> np.ndarray | None:
  """[L, H, N, N] float32 from `blocks.{l}.att.time_state` keys (None when there are none)."""
  found = {int(m.group(1)): k for k in sd if (m := _TIME_STATE.match(k))}
  if not found:
    return None
  if sorted(found) != list(range(len(found))):
    raise CheckpointError(f"{source}: time_state for blocks {sorted(found)}; expected blocks 0..L-1")
  states = [np.asarray(sd[found[l]], np.float32) for l in range(len(found))]
  shapes = {s.shape for s in states}
  if len(shapes) != 1 or len(states[0].shape) not in (2, 3):
    raise CheckpointError(f"{source}: time_state shapes {sorted(shapes)}; expected one [H, N, N]")
  if states[0].ndim == 2:  # H = 1, squeezed by some tools
    states = [s[None] for s in states]
  return np.stack(states)


def save_state_file(path: str | os.PathLike, time_state: Any, dtype: str = "float32") -> None:
  """Writes RWKV-PEFT's state-only checkpoint: {blocks.{l}.att.time_state: [H, N, N]}."""
  time_state = np.asarray(time_state, np.float32)
  if time_state.ndim != 4:
    raise ValueError(f"time_state has shape {time_state.shape}; expected [L, H, N, N]")
  save_state_dict({f"blocks.{l}.att.time_state": time_state[l].astype(PTH_DTYPES[dtype])
                   for l in range(time_state.shape[0])}, path)


def load_state_file(path: str | os.PathLike) -> np.ndarray:
  """[L, H, N, N] float32 (RWKV-PEFT layout) from a state checkpoint or a merged model holding time_state."""
  ts = time_state_from_state_dict(load_peft_file(path), source=os.fspath(path))
  if ts is None:
    raise CheckpointError(f"{os.fspath(path)}: no blocks.N.att.time_state keys")
  return ts


def load_model_and_state(path: str | os.PathLike, state_file: str | os.PathLike | None = None
                         ) -> tuple[dict[str, Any], Any, np.ndarray | None]:
  """(params, cfg, time_state or None) from an RWKV-LM `.pth` that may hold merged `time_state` keys (as
  RWKV-PEFT's merge_state writes), and optionally a separate state file (which takes precedence)."""
  sd = load_state_dict(path)
  time_state = time_state_from_state_dict(sd, source=os.fspath(path))
  try:
    params, cfg = params_from_state_dict({k: v for k, v in sd.items() if not _TIME_STATE.match(k)})
  except CheckpointError as e:
    raise CheckpointError(f"{os.fspath(path)}: {e}") from None
  if state_file:
    time_state = load_state_file(state_file)
  if time_state is not None:
    want = (cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size)
    if time_state.shape != want:
      raise CheckpointError(f"time_state has shape {time_state.shape}; the model {os.fspath(path)} needs "
                            f"[L, H, N, N] = {want}")
  return params, cfg, time_state


# ----------------------------------------------------------------------------------------------------
# The adapter config sidecar (RWKV-PEFT files do not record alpha or the method)
# ----------------------------------------------------------------------------------------------------

def write_peft_config(directory: str, config: Mapping[str, Any]) -> str:
  path = os.path.join(directory, PEFT_CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(dict(config), f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)
  return path


def read_peft_config(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
  """The peft_config.json beside an adapter checkpoint, if any."""
  path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), PEFT_CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------------------------------
# Merge / unmerge on RWKV-LM state dicts
# ----------------------------------------------------------------------------------------------------

def _adapter_plan(base: Mapping[str, np.ndarray], peft: Mapping[str, np.ndarray],
                  init: Mapping[str, np.ndarray]) -> list[tuple[str, str, dict[str, np.ndarray], list[str]]]:
  """[(weight key, method, tensors by suffix, peft keys used)] for every base `.weight` with an adapter."""
  plan = []
  for k in base:
    if not k.endswith(".weight"):
      continue
    prefix = k[: -len(".weight")]
    if f"{prefix}.lora_A" in peft:
      if f"{prefix}.lora_B" not in peft:
        raise CheckpointError(f"{prefix}.lora_A without {prefix}.lora_B")
      used = [f"{prefix}.lora_A", f"{prefix}.lora_B"]
      tensors = {"lora_A": peft[used[0]], "lora_B": peft[used[1]]}
      source = init if f"{prefix}.init_lora_A" in init else peft
      if f"{prefix}.init_lora_A" in source:
        tensors.update(init_lora_A=source[f"{prefix}.init_lora_A"], init_lora_B=source[f"{prefix}.init_lora_B"])
        used += [f"{prefix}.init_lora_A", f"{prefix}.init_lora_B"]
        plan.append((k, "pissa", tensors, used))
      else:
        plan.append((k, "lora", tensors, used))
    elif f"{prefix}.disha" in peft:
      d = peft[f"{prefix}.disha"]
      plan.append((k, "bone" if d.ndim == 2 else "bat", {"disha": d}, [f"{prefix}.disha"]))
  return plan


def _check_alpha(plan, lora_alpha):
  if any(method == "lora" for _, method, _, _ in plan) and lora_alpha is None:
    raise ValueError("the checkpoint holds LoRA tensors: give lora_alpha (RWKV-PEFT's --lora_alpha; a "
                     f"{PEFT_CONFIG_FILE} beside the checkpoint records it)")


def merge_state_dicts(base: Mapping[str, np.ndarray], peft: Mapping[str, np.ndarray],
                      init: Mapping[str, np.ndarray] | None = None, *, lora_alpha: float | None = None,
                      dtype: str | None = None) -> dict[str, np.ndarray]:
  """An RWKV-LM state dict with the adapters, trained parts and learned states of `peft` folded into
  `base` (see the module docstring).

  Args:
    base: the base model's state dict. peft: adapter / state / trained-part tensors. init: PiSSA's init
      (`init_pissa.pth`), when the PiSSA init is not in `peft` itself.
    lora_alpha: LoRA's alpha (needed when there are LoRA tensors without a PiSSA init).
    dtype: output dtype ("bfloat16", "float32", "float16"); None keeps each base tensor's dtype.
  """
  import jax.numpy as jnp  # the adapter math runs in JAX (float32) so merges equal the training forward
  peft, init = strip_prefixes(peft), strip_prefixes(init or {})
  plan = _adapter_plan(base, peft, init)
  _check_alpha(plan, lora_alpha)
  out_dtype = (lambda k: PTH_DTYPES[dtype]) if dtype else (lambda k: base[k].dtype if k in base else np.float32)
  out = collections.OrderedDict((k, v) for k, v in base.items())
  used: set[str] = set()
  for key, method, tensors, keys in plan:
    merged = adapters.merge(method, {s: jnp.asarray(np.asarray(t, np.float32)) for s, t in tensors.items()},
                            jnp.asarray(np.asarray(base[key], np.float32)), alpha=lora_alpha)
    out[key] = np.asarray(merged).astype(out_dtype(key))
    used.update(keys)
  for k, v in peft.items():
    if k in used:
      continue
    if _TIME_STATE.match(k):
      out[k] = np.asarray(v, np.float32)
    elif k in base:
      if int(np.prod(v.shape)) != int(np.prod(base[k].shape)):
        raise CheckpointError(f"{k!r} has shape {v.shape}; the base model's is {base[k].shape}")
      out[k] = np.asarray(v, np.float32).reshape(base[k].shape).astype(out_dtype(k))
    elif adapters.is_adapter_name(k):
      raise CheckpointError(f"adapter tensor {k!r} has no base weight {k.rsplit('.', 1)[0]}.weight")
    else:
      raise CheckpointError(f"{k!r} is neither an adapter, a time_state nor a tensor of the base model")
  if dtype:
    for k in base:
      if k not in used and k not in peft:
        out[k] = np.asarray(base[k], np.float32).astype(PTH_DTYPES[dtype])
  return dict(out)


def unmerge_state_dicts(merged: Mapping[str, np.ndarray], peft: Mapping[str, np.ndarray],
                        init: Mapping[str, np.ndarray] | None = None, *, lora_alpha: float | None = None
                        ) -> dict[str, np.ndarray]:
  """Takes the adapters of `peft` back out of `merged` weights (float32 math, each tensor's dtype kept) and
  drops time_state keys. Trained parts cannot be restored and stay as they are."""
  import jax.numpy as jnp
  peft, init = strip_prefixes(peft), strip_prefixes(init or {})
  plan = _adapter_plan(merged, peft, init)
  _check_alpha(plan, lora_alpha)
  out = collections.OrderedDict((k, v) for k, v in merged.items() if not _TIME_STATE.match(k))
  for key, method, tensors, _ in plan:
    w = adapters.unmerge(method, {s: jnp.asarray(np.asarray(t, np.float32)) for s, t in tensors.items()},
                         jnp.asarray(np.asarray(merged[key], np.float32)), alpha=lora_alpha)
    out[key] = np.asarray(w).astype(merged[key].dtype)
  return dict(out)


def merge_files(base_model: str, output: str, *, peft_checkpoint: str | None = None, lora_init: str | None = None,
                state_checkpoint: str | None = None, lora_alpha: float | None = None, dtype: str | None = None,
                unmerge: bool = False) -> dict[str, np.ndarray]:
  """Writes the merged (or unmerged) state dict to `output` and returns it."""
  if not peft_checkpoint and not state_checkpoint:
    raise ValueError("give --peft_checkpoint and/or --state_checkpoint")
  base = load_state_dict(base_model)
  peft: dict[str, np.ndarray] = {}
  init = None
  if peft_checkpoint:
    peft.update(load_peft_file(peft_checkpoint))
    record = read_peft_config(peft_checkpoint) or {}
    if lora_alpha is None and record.get("lora_alpha") is not None:
      lora_alpha = float(record["lora_alpha"])
    beside = os.path.join(os.path.dirname(os.path.abspath(peft_checkpoint)), PISSA_INIT_FILE)
    if lora_init is None and record.get("peft") == "pissa" and os.path.isfile(beside):
      lora_init = beside
  if lora_init:
    init = load_peft_file(lora_init)
  if state_checkpoint:
    state = load_peft_file(state_checkpoint)
    if time_state_from_state_dict(state, source=state_checkpoint) is None:
      raise ValueError(f"{state_checkpoint}: no blocks.N.att.time_state keys")
    peft.update({k: v for k, v in state.items() if k.endswith(".time_state")})
  if unmerge:
    out = unmerge_state_dicts(base, peft, init, lora_alpha=lora_alpha)
  else:
    out = merge_state_dicts(base, peft, init, lora_alpha=lora_alpha, dtype=dtype)
  save_state_dict(out, output)
  return out
