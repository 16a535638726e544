"""Orbax checkpoints of a run: the train state, the data iterator position and the config, saved
asynchronously and atomically (orbax commits a step only when complete); restore falls back to an older
step when the newest one cannot be read."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging


class Checkpointer:
  """Saves and restores {state, data, config} under `directory/<step>`.

  state: a pytree of (sharded) arrays, restored onto the shardings of the abstract target.
  data: the data iterator's JSON state (grain `get_state()`; every process steps in lockstep, so the
    primary process's position is every process's position).
  config: the run's config as JSON (for reproducing the run).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, config: dict) -> None:
    """Saves step `step` (asynchronously); a step already saved is left as it is."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config)),
        force=True)

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, data_state) of the newest readable checkpoint, or None when there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with target shardings. An unreadable checkpoint
    is renamed to `<step>.unreadable` (kept for inspection, out of the way of later saves) with a warning.
    """
    for step in reversed(self.steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
        self._set_aside(step, e)
        continue
      return step, restored["state"], dict(restored["data"])
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    path = os.path.join(self.directory, str(step))
    target = path + ".unreadable"
    n = 1
    while os.path.exists(target):
      target, n = f"{path}.unreadable{n}", n + 1
    if jax.process_index() == 0:
      os.rename(path, target)
    multihost_utils.sync_global_devices(f"checkpoint-set-aside-{step}")
    self._manager.reload()
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    logging.warning("checkpoint %s is unreadable (%s); moved to %s, falling back to an older one", path, reason, target)
    print(f"WARNING: checkpoint {path} is unreadable ({type(error).__name__}); moved to {target}, "
          "trying the previous one", flush=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
