"""With bf16 compute, every matmul of a model's linear layers and LM head, forward and backward, takes bf16
operands. A float32 operand there runs at the fp32/TF32 rate on GPUs: before this was enforced, most of a
Llama-1.3B training step's matmul time on an H100 was such fp32 GEMMs (docs/benchmarks.md)."""

import jax
import jax.numpy as jnp
import pytest

from rwkvjax.config import ModelConfig
from rwkvjax.config.transformer import TransformerConfig
from rwkvjax.models import get_model
from rwkvjax.training.loss import lm_loss

C, V = 96, 200  # model width and vocabulary: dimensions no WKV-internal or attention-internal matmul has


def dot_operand_dtypes(jaxpr) -> list[tuple[tuple, tuple, str, str]]:
  """(lhs shape, rhs shape, lhs dtype, rhs dtype) of every dot_general in a jaxpr and its sub-jaxprs."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      a, b = (v.aval for v in eqn.invars)
      found.append((a.shape, b.shape, str(a.dtype), str(b.dtype)))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found += dot_operand_dtypes(inner)
  return found


CONFIGS = {
    "x070": ModelConfig(version="x070", n_layer=2, n_embd=C, vocab_size=V, head_size=32, compute_dtype="bfloat16"),
    "x060": ModelConfig(version="x060", n_layer=2, n_embd=C, vocab_size=V, head_size=32, compute_dtype="bfloat16"),
    "llama": TransformerConfig(vocab_size=V, hidden_size=C, intermediate_size=160, num_hidden_layers=2,
                               num_attention_heads=3, num_key_value_heads=1, compute_dtype="bfloat16"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_layer_and_head_matmuls_are_bf16_forward_and_backward(name):
  cfg = CONFIGS[name]
  model = get_model(cfg.version if isinstance(cfg, ModelConfig) else cfg.model_type)
  params = model.init(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, V)

  def loss(p):
    logits, _ = model.forward(p, cfg, tokens[:, :-1], impl="chunked") if isinstance(cfg, ModelConfig) else \
        model.forward(p, cfg, tokens[:, :-1])
    return lm_loss(logits, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))[0]

  dots = dot_operand_dtypes(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  layer_dots = [d for d in dots if C in d[0] + d[1] or V in d[0] + d[1]]
  assert len(layer_dots) >= 6, dots  # the layers' and the head's matmuls, forward and backward, were found
  fp32 = [d for d in layer_dots if d[2:] != ("bfloat16", "bfloat16")]
  assert not fp32, f"matmuls with non-bf16 operands (lhs shape, rhs shape, dtypes): {fp32}"
