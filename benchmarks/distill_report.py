"""Held-out report of a Qwen2 -> RWKV distillation chain (experiments/distill.py): the teacher's loss, the student's
at init and after each stage, and the fraction of the (student at init - teacher) gap each stage has closed.

  python benchmarks/distill_report.py --root out/distill [--batches 64] [--append docs/distill.md]

Reads ROOT/teacher/hf-final (HF directory), ROOT/stage1/, ROOT/stage2/, ROOT/stage3/ (each a workdir with
student-final/); any of them may be given explicitly (--teacher, --stage1 ...) and missing stages are skipped.
The student at init is rebuilt exactly as stage 1 built it (same seed: the trainer's key -> the task's split),
from the stage-1 export's StudentConfig. Every model is scored on the same held-out batches (cross-entropy in
nats per token, float32 compute unless --dtype bfloat16); the default data is the embedded corpus's held-out
split (the stages' val data), or --val_file (a binidx prefix).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rwkvjax.convert.hf import load_hf  # noqa: E402
from rwkvjax.data.corpus import default_corpus  # noqa: E402
from rwkvjax.data.pipeline import make_pretrain_dataset  # noqa: E402
from rwkvjax.distill import export, losses  # noqa: E402
from rwkvjax.distill import student as st  # noqa: E402
from rwkvjax.distill import teacher as tch  # noqa: E402


def held_out_batches(val_file: str, ctx_len: int, rows: int, batches: int, vocab_size: int) -> list[dict]:
  ds = make_pretrain_dataset(val_file, ctx_len=ctx_len, micro_bsz=rows, sampler="shuffle", seed=0,
                             vocab_size=vocab_size)
  it = iter(ds)
  return [next(it) for _ in range(batches)]


def mean_ce(score, params, batches) -> float:
  total = count = 0.0
  for b in batches:
    s, c = score(params, jnp.asarray(b["input_ids"]), jnp.asarray(b["targets"]), jnp.asarray(b["loss_mask"]))
    total, count = total + float(s), count + float(c)
  return total / max(count, 1.0)


def teacher_scorer(tcfg):
  @jax.jit
  def score(params, tokens, targets, mask):
    h = tch.hidden(params, tcfg, tokens)
    _, ce = losses.chunked_kl_ce(h, tch.head_weight(params, tcfg), None, None, targets)
    mean, count = losses.masked_mean(ce, mask)
    return mean * count, count
  return score


def student_scorer(scfg, impl):
  @jax.jit
  def score(params, tokens, targets, mask):
    h, _ = st.hidden(params, scfg, tokens, impl=impl)
    _, ce = losses.chunked_kl_ce(h, st.head_weight(params, scfg), None, None, targets)
    mean, count = losses.masked_mean(ce, mask)
    return mean * count, count
  return score


def student_at_init(teacher_params, scfg, seed: int):
  """Stage 1's initial student: Stage1Task.init_params(jax.random.key(seed)) splits the key into (teacher,
  student) and builds the time mixers from the second half."""
  _, ks = jax.random.split(jax.random.key(seed))
  build = jax.jit(lambda t, k: st.from_teacher(
      t, scfg, None, time_mixers=st.init_time_mixers(scfg, k, t["model"]["layers"].get("self_attn"))))
  return build(teacher_params, ks)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", default="out/distill")
  parser.add_argument("--teacher", default=None, help="HF directory (default ROOT/teacher/hf-final)")
  for i in (1, 2, 3):
    parser.add_argument(f"--stage{i}", default=None, help=f"stage-{i} workdir (default ROOT/stage{i})")
  parser.add_argument("--val_file", default="", help="binidx prefix (default: the embedded corpus's val split)")
  parser.add_argument("--ctx_len", type=int, default=512)
  parser.add_argument("--rows", type=int, default=8)
  parser.add_argument("--batches", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0, help="stage 1's TrainConfig.seed")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--impl", default="auto", help="WKV backend of the student")
  parser.add_argument("--append", default="", help="append the table (dated) to this markdown file")
  args = parser.parse_args(argv)

  teacher_dir = args.teacher or os.path.join(args.root, "teacher", "hf-final")
  stages = {i: getattr(args, f"stage{i}") or os.path.join(args.root, f"stage{i}") for i in (1, 2, 3)}
  teacher_params, tcfg = load_hf(teacher_dir, compute_dtype=args.dtype)
  val_file = args.val_file or default_corpus(progress=False).val
  batches = held_out_batches(val_file, args.ctx_len, args.rows, args.batches, tcfg.vocab_size)
  n_tokens = int(sum(b["loss_mask"].sum() for b in batches))

  rows = [("teacher", os.path.abspath(teacher_dir), mean_ce(teacher_scorer(tcfg), teacher_params, batches))]
  print(f"teacher {tcfg.model_type} L{tcfg.num_hidden_layers} C{tcfg.hidden_size}: {rows[-1][2]:.4f}", flush=True)
  stage1_student = os.path.join(stages[1], "student-final")
  if os.path.isdir(stage1_student):
    scfg = export.read_student_config(stage1_student, args.dtype)
  else:
    scfg = st.StudentConfig(base=tcfg)
    print(f"no stage-1 export at {stage1_student}: the init row uses the default StudentConfig", flush=True)
  score = student_scorer(scfg, args.impl)
  rows.append(("student at init", f"{scfg.init_mode} init, seed {args.seed}",
               mean_ce(score, student_at_init(teacher_params, scfg, args.seed), batches)))
  print(f"student at init: {rows[-1][2]:.4f}", flush=True)
  for i in (1, 2, 3):
    path = os.path.join(stages[i], "student-final")
    if not os.path.isdir(path):
      print(f"stage {i}: no export at {path}; skipped", flush=True)
      continue
    params, cfg_i = export.load_student(path, compute_dtype=args.dtype)
    s = score if cfg_i == scfg else student_scorer(cfg_i, args.impl)
    rows.append((f"after stage {i}", os.path.abspath(path), mean_ce(s, params, batches)))
    print(f"after stage {i}: {rows[-1][2]:.4f}", flush=True)

  teacher_loss, init_loss = rows[0][2], rows[1][2]
  gap = init_loss - teacher_loss
  lines = [f"held-out: {val_file} ({n_tokens:,} tokens: {args.batches} x {args.rows} x {args.ctx_len}), "
           f"{args.dtype} compute, device {jax.devices()[0].device_kind}",
           "", "| model | held-out CE (nats/token) | perplexity | gap closed | source |", "|---|---|---|---|---|"]
  for name, source, loss in rows:
    closed = "" if name == "teacher" else f"{(init_loss - loss) / gap:.1%}" if gap > 0 else "n/a"
    lines.append(f"| {name} | {loss:.4f} | {math.exp(min(loss, 50)):.2f} | {closed} | {source} |")
  table = "\n".join(lines)
  print("\n" + table)
  stage2 = [loss for name, _, loss in rows if name == "after stage 2"]
  if stage2 and gap > 0:
    verdict = (init_loss - stage2[0]) / gap
    print(f"\nstages 1+2 closed {verdict:.1%} of the gap (target >= 90%): {'PASS' if verdict >= 0.9 else 'FAIL'}")
  if args.append:
    with open(args.append, "a") as f:
      f.write(f"\n### {datetime.date.today().isoformat()}: distillation report\n\n{table}\n")
  print(json.dumps({"teacher": teacher_loss, "init": init_loss, **{name: loss for name, _, loss in rows[2:]}}))


if __name__ == "__main__":
  main()
