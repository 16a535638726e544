"""Sampling semantics and recurrent generation against the parallel forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkvjax.config import ModelConfig
from rwkvjax.inference.generate import generate
from rwkvjax.inference.sampling import sample_logits
from rwkvjax.models import rwkv7


def test_greedy_and_degenerate_nucleus_give_argmax():
  logits = jax.random.normal(jax.random.key(0), (4, 50))
  want = jnp.argmax(logits, -1)
  key = jax.random.key(1)
  np.testing.assert_array_equal(sample_logits(key, logits, temperature=0.0), want)
  np.testing.assert_array_equal(sample_logits(key, logits, top_p=1e-6), want)
  np.testing.assert_array_equal(sample_logits(key, logits, top_p=1.0, top_k=1), want)


def test_full_nucleus_samples_the_softmax():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(2), 20000)
  draws = jax.vmap(lambda k: sample_logits(k, logits, top_p=1.0)[0])(keys)
  freq = np.bincount(np.asarray(draws), minlength=4) / draws.size
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_nucleus_drops_the_tail_and_temperature_reshapes():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(3), 20000)
  draws = np.asarray(jax.vmap(lambda k: sample_logits(k, logits, top_p=0.7, temperature=0.5)[0])(keys))
  assert set(np.unique(draws)) == {0, 1}  # 0.5 + 0.3 reaches 0.7; then probs ** 2 -> 25:9
  np.testing.assert_allclose((draws == 0).mean(), 25 / 34, atol=0.015)


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1)])
def test_bad_sampling_arguments(bad):
  with pytest.raises(ValueError, match="out of range"):
    sample_logits(jax.random.key(0), jnp.zeros((1, 3)), **bad)


def test_greedy_generation_matches_parallel_forward():
  cfg = ModelConfig(n_layer=2, n_embd=64, vocab_size=50, head_size=32)
  params = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(jax.random.key(5), x.shape), rwkv7.init(cfg, jax.random.key(4)))
  prompt = jnp.asarray([[3, 7, 1, 9], [4, 4, 2, 8]])
  new, state = generate(params, cfg, prompt, jax.random.key(0), max_new_tokens=6, temperature=0.0)
  seq = jnp.concatenate([prompt, new], 1)
  logits, full_state = rwkv7.forward(params, cfg, seq)
  np.testing.assert_array_equal(new, jnp.argmax(logits[:, 3:-1], -1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), state, full_state)
