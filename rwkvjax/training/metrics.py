"""Run logs: metrics.jsonl (always), TensorBoard events, a progress line, and RWKV-LM's train_log.txt."""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from typing import Any

from absl import logging


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  return str(datetime.timedelta(seconds=int(seconds)))


class MetricsLogger:
  """Writes the logs of the primary process (others write nothing)."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = self._tb = self._train_log = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    self._train_log = open(os.path.join(workdir, "train_log.txt"), "a", buffering=1)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      logging.warning("tensorboardX is not installed: no TensorBoard events")

  def run_start(self, config: str) -> None:
    """RWKV-LM's run header: `NEW RUN <timestamp>` and the run's config on one line."""
    if self.enabled:
      self._train_log.write(f"NEW RUN {datetime.datetime.now():%Y-%m-%d-%H-%M-%S}\n{config}\n")

  def log(self, metrics: dict[str, Any]) -> None:
    """One JSON object per logging step (must hold "step"); numbers also go to TensorBoard."""
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(metrics) + "\n")
    if self._tb is not None:
      for key, value in metrics.items():
        if key != "step" and isinstance(value, (int, float)) and value is not None:
          self._tb.add_scalar(f"train/{key}" if not key.startswith("eval_") else f"eval/{key[5:]}", value,
                              metrics["step"])

  def progress(self, step: int, total: int, loss: float, lr: float, tokens_per_sec: float, eta_s: float,
               extra: str = "") -> None:
    if self.enabled:
      print(f"step {step}/{total} | loss {loss:.4f} | lr {lr:.2e} | {tokens_per_sec:,.0f} tok/s | "
            f"ETA {_format_eta(eta_s)}{extra}", flush=True)

  def mini_epoch(self, epoch: int, loss: float, lr: float) -> None:
    """RWKV-LM's line: `epoch loss ppl lr datetime epoch`."""
    if self.enabled:
      self._train_log.write(f"{epoch} {loss:.6f} {math.exp(min(loss, 700)):.4f} {lr:.8f} "
                            f"{datetime.datetime.now()} {epoch}\n")

  def close(self) -> None:
    for f in (self._jsonl, self._train_log):
      if f is not None:
        f.close()
    if self._tb is not None:
      self._tb.close()


class Throughput:
  """Tokens/s between successive `measure` calls."""

  def __init__(self):
    self._t = time.perf_counter()
    self._tokens = 0

  def reset(self, tokens: int) -> None:
    self._t, self._tokens = time.perf_counter(), tokens

  def measure(self, tokens: int) -> float:
    now = time.perf_counter()
    rate = (tokens - self._tokens) / max(now - self._t, 1e-9)
    self._t, self._tokens = now, tokens
    return rate

