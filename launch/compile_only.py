"""AOT-compile a run's train step for a target topology, without the hardware.

  python -m launch.compile_only --config config:NAME [--config set:...] --topology cpu:8 [--device_memory_gb 80]
  python -m launch.compile_only --config config:NAME --topology tpu:v5e:4x4      # needs libtpu installed

`cpu:N` compiles for N devices of the host platform with the run's mesh: it catches sharding and shape errors
and reports XLA's per-device memory (arguments + temporaries, an estimate of what a GPU of the same mesh
needs, since GPU and CPU fuse differently). `tpu:TOPOLOGY` compiles for a real TPU topology through
jax.experimental.topologies (libtpu must be installed; no TPU needed). Exits non-zero when the estimate
exceeds --device_memory_gb.
"""

from __future__ import annotations

import os
import sys


def _topology_from_argv(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--topology="):
      return arg.split("=", 1)[1]
    if arg == "--topology" and i + 1 < len(argv):
      return argv[i + 1]
  return "cpu:8"


# The number of host devices must be fixed before JAX starts.
_TOPOLOGY = _topology_from_argv(sys.argv)
if _TOPOLOGY.startswith("cpu:"):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={int(_TOPOLOGY[4:])}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import fiddle as fdl  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from fiddle import absl_flags as fdl_flags  # noqa: E402

import experiments  # noqa: E402
from rwkvjax.training import sharding  # noqa: E402
from rwkvjax.training.trainer import setup  # noqa: E402

_CONFIG = fdl_flags.DEFINE_fiddle_config("config", help_string="Experiment: config:NAME, set:a.b=v.",
                                         default_module=experiments, required=True)
flags.DEFINE_string("topology", "cpu:8", "cpu:N, or tpu:TOPOLOGY (e.g. tpu:v5e:2x2; needs libtpu).")
_MEMORY = flags.DEFINE_float("device_memory_gb", 80.0, "Memory of one target device, GiB.")


def target_devices(topology: str):
  if topology.startswith("cpu:"):
    n = int(topology[4:])
    if jax.device_count() < n:
      raise app.UsageError(f"--topology {topology}: only {jax.device_count()} host devices are available")
    return jax.devices()[:n]
  if topology.startswith("tpu:"):
    from jax.experimental import topologies
    try:
      return topologies.get_topology_desc(topology_name=topology[4:], platform="tpu").devices
    except Exception as e:  # noqa: BLE001 - report why the TPU compiler is unavailable
      raise app.UsageError(f"--topology {topology}: cannot get the TPU topology ({type(e).__name__}: {e}); "
                           "install libtpu to compile for TPU without hardware") from None
  raise app.UsageError(f"--topology {topology!r}: expected cpu:N or tpu:TOPOLOGY")


def main(argv):
  del argv
  cfg = fdl.build(_CONFIG.value)
  devices = target_devices(_TOPOLOGY)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  run = setup(cfg, mesh)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                run.abstract_state, run.state_sharding)
  compiled = run.train_step.lower(abstract_state, run.abstract_batch(cfg)).compile()
  mem = compiled.memory_analysis()
  per_device = (mem.argument_size_in_bytes + mem.temp_size_in_bytes) / 2**30
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.abstract_params))
  print(f"compiled {cfg.model.version} ({n_params:,} params) for {_TOPOLOGY}, mesh {dict(mesh.shape)}, "
        f"batch {run.samples_per_step} x {cfg.ctx_len}")
  print(f"per device: arguments {mem.argument_size_in_bytes / 2**30:.2f} GiB, temporaries "
        f"{mem.temp_size_in_bytes / 2**30:.2f} GiB, outputs {mem.output_size_in_bytes / 2**30:.2f} GiB "
        f"(aliased with donated arguments) -> {per_device:.2f} GiB of {_MEMORY.value:.0f} GiB")
  if per_device > _MEMORY.value:
    print(f"DOES NOT FIT: {per_device:.2f} GiB per device > {_MEMORY.value:.0f} GiB", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
