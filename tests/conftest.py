"""Test set-up: 8 fake CPU devices (sharding tests) before JAX initialises; shared paths and helpers."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# The team's shared golden vectors (a cross-check only: tests that use them skip when absent).
SHARED_GOLDENS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "goldens"


def shared_golden(version: str) -> pathlib.Path:
  path = SHARED_GOLDENS / version
  if not path.exists():
    pytest.skip(f"shared goldens not found at {path}")
  return path
