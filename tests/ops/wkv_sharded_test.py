"""The WKV ops under a mesh (8 fake CPU devices: data 2 x fsdp 2 x tensor 2) run per shard of batch rows and
heads (`rwkvjax.ops.partition`) and agree with the unsharded op, outputs, final state and gradients (incl. a
broadcast reset_state and RWKV-6's per-head bonus, whose gradients sum over the batch shards); a Pallas backend
(interpret mode) runs locally instead of being gathered."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rwkvjax.config.train import MeshConfig
from rwkvjax.ops import wkv6, wkv7
from rwkvjax.training.sharding import make_mesh, traced_under

B, T, H, N = 4, 40, 4, 16


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (--xla_force_host_platform_device_count=8)")
  return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


def inputs(op, key):
  ks = jax.random.split(key, 10)
  x = lambda k, s=0.5: s * jax.random.normal(k, (B, T, H, N))
  seg = jnp.cumsum(jax.random.bernoulli(ks[8], 0.08, (B, T)), axis=1).astype(jnp.int32)
  s0 = 0.3 * jax.random.normal(ks[6], (B, H, N, N))
  reset = 0.3 * jax.random.normal(ks[7], (1, H, N, N))
  if op == "wkv7":
    kk = x(ks[4])
    kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    w = -jnp.exp(-0.5) * jax.nn.sigmoid(x(ks[1], 1.0))
    arrays = (x(ks[0]), w, x(ks[2]), x(ks[3]), -kk, kk * jax.nn.sigmoid(x(ks[5], 1.0)))
  else:
    arrays = (x(ks[0]), -jnp.exp(x(ks[1], 1.0)), x(ks[2]), x(ks[3]), 0.5 * jax.random.normal(ks[4], (H, N)))
  return arrays, s0, seg, reset


def run(op, impl, arrays, s0, seg, reset):
  fn = wkv7 if op == "wkv7" else wkv6

  def loss(arrays, s0, reset):
    o, s = fn(*arrays, s0, segment_ids=seg, reset_state=reset, impl=impl)
    return jnp.sum(o * jnp.cos(o)) + jnp.sum(s * s), (o, s)

  return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)


@pytest.mark.parametrize("op,impl", [("wkv7", "chunked"), ("wkv6", "chunked"), ("wkv7", "reference")])
def test_sharded_op_matches_unsharded(mesh, op, impl):
  arrays, s0, seg, reset = inputs(op, jax.random.key(np.random.default_rng().integers(1 << 30)))
  f = run(op, impl, arrays, s0, seg, reset)
  (want, (o_want, s_want)), g_want = jax.jit(f)(arrays, s0, reset)

  shard = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  tok = P(("data", "fsdp"), None, "tensor", None)
  arrays_s = tuple(shard(x, tok if x.ndim == 4 else P("tensor", None)) for x in arrays)
  s0_s = shard(s0, P(("data", "fsdp"), "tensor"))
  (got, (o, s)), g = jax.jit(traced_under(mesh, f))(arrays_s, s0_s, reset)
  assert o.sharding.spec == tok  # the output stays sharded like the inputs
  np.testing.assert_allclose(o, o_want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(s, s_want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_pallas_backend_runs_per_shard(mesh):
  """pallas_tpu_interpret (a custom kernel) under the mesh: correct, and no all-gather of its inputs."""
  arrays, s0, seg, _ = inputs("wkv7", jax.random.key(3))
  f = lambda arrays, s0: wkv7(*arrays, s0, segment_ids=seg, impl="pallas_tpu_interpret")
  o_want, s_want = jax.jit(f)(arrays, s0)
  tok = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  arrays_s = tuple(jax.device_put(x, tok) for x in arrays)
  s0_s = jax.device_put(s0, NamedSharding(mesh, P(("data", "fsdp"), "tensor")))
  sharded = jax.jit(traced_under(mesh, f))
  o, s = sharded(arrays_s, s0_s)
  np.testing.assert_allclose(o, o_want, rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(s, s_want, rtol=2e-3, atol=2e-4)
  hlo = sharded.lower(arrays_s, s0_s).compile().as_text()
  assert "all-gather" not in hlo
