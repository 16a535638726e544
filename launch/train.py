"""Launch a training run from an experiment config.

  python -m launch.train --config config:demo [--config set:my_exit_tokens=1000000 ...] --workdir DIR
  python -m launch.train --config config:minipile --dry_run          # print the built config and exit

Multi-host: pass --coordinator_address/--num_processes/--process_id (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; SLURM variables are detected by jax.distributed). A run in a workdir that
holds checkpoints resumes from the newest one. Library INFO logs (orbax's per-save lines) are off unless
--verbosity is given (e.g. --verbosity 0); the trainer's own progress lines are printed regardless.
"""

from __future__ import annotations

import json
import os

import fiddle as fdl
import jax
from absl import app, flags, logging
from fiddle import absl_flags as fdl_flags
from fiddle import printing
from fiddle.experimental import serialization

import experiments

_CONFIG = fdl_flags.DEFINE_fiddle_config("config", help_string="Experiment: config:NAME, fiddler:NAME, set:a.b=v.",
                                         default_module=experiments, required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (logs, checkpoints, exports).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the built config and exit.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                   "host:port of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "1")),
                                      "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", "0")), "This process's id.")


def initialize_distributed() -> None:
  if _NUM_PROCESSES.value > 1 or _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  buildable = _CONFIG.value
  if _DRY_RUN.value:
    print(printing.as_str_flattened(buildable))
    fdl.build(buildable)  # validates every field
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (unless --dry_run)")
  initialize_distributed()
  cfg = fdl.build(buildable)
  from rwkvjax.training.trainer import train
  train(cfg, _WORKDIR.value, config_json=json.loads(serialization.dump_json(buildable)))


if __name__ == "__main__":
  app.run(main)
