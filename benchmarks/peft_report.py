"""Report of the PEFT / state-tuning comparisons (docs/peft.md, issue 9 item 7) from their workdirs: trainable
parameters, training loss (mean of the last 10% of logged steps), held-out loss curves and final held-out loss,
the held-out drop against the untuned run, and each run's greedy sample of the task's prompt.

  python benchmarks/peft_report.py --root out/peft_cmp [--runs none state lora4 bone64 pissa32 lora32]
      [--append docs/peft.md] [--plot docs/peft_curves.png]

Reads ROOT/RUN/metrics.jsonl (the trainer's log), ROOT/RUN/rwkv-final.pth (only the trainable tensors, so
its size is the trainable parameter count) and ROOT/RUN/sample.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rwkvjax.convert.torch_zip import load_state_dict  # noqa: E402
import provenance  # noqa: E402 (benchmarks/, the script's folder)

GROUPS = {"(a) state tuning vs none vs LoRA r=4": ("none", "state", "lora4"),
          "(b) equal trainable parameters": ("bone64", "pissa32", "lora32")}


def read_run(workdir: str) -> dict:
  """The metrics of one run: loss curve, held-out curve, trainable parameters, sample."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing (has the run in {workdir} been started?)")
  train, held_out = {}, {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record and "step" in record:
        train[record["step"]] = record["loss"]
      if record.get("eval_loss") is not None:
        held_out[record["step"]] = record["eval_loss"]
  pth = os.path.join(workdir, "rwkv-final.pth")
  trainable = sum(v.size for v in load_state_dict(pth).values()) if os.path.isfile(pth) else 0
  sample_path = os.path.join(workdir, "sample.txt")
  sample = open(sample_path, encoding="utf-8").read() if os.path.isfile(sample_path) else ""
  steps = sorted(train)
  tail = [train[s] for s in steps[-max(1, len(steps) // 10):]]
  return {"train": train, "held_out": held_out, "trainable": trainable, "sample": sample,
          "final_train": statistics.mean(tail) if tail else float("nan"),
          "final_held_out": held_out[max(held_out)] if held_out else float("nan"),
          "steps": steps[-1] if steps else 0}


def report(runs: dict[str, dict], root: str) -> str:
  base = runs.get("none", {}).get("final_held_out")
  lines = [f"held-out and training loss in nats per response token (loss-masked), runs under {root}", "",
           "| run | trainable params | steps | train loss (last 10%) | held-out loss | vs none |",
           "|---|---|---|---|---|---|"]
  for name, r in runs.items():
    drop = f"{r['final_held_out'] - base:+.4f}" if base is not None and name != "none" else ""
    lines.append(f"| {name} | {r['trainable']:,} | {r['steps']} | {r['final_train']:.4f} | "
                 f"{r['final_held_out']:.4f} | {drop} |")
  for title, names in GROUPS.items():
    present = [n for n in names if n in runs and n != "none"]
    if len(present) > 1:
      order = sorted(present, key=lambda n: runs[n]["final_train"])
      lines += ["", f"{title}, training loss order: " + " < ".join(f"{n} ({runs[n]['final_train']:.4f})" for n in order)]
  steps = sorted({s for r in runs.values() for s in r["held_out"]})
  lines += ["", "Held-out loss curves:", "", "| step | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
  for s in steps:
    cells = [f"{r['held_out'][s]:.4f}" if s in r["held_out"] else "" for r in runs.values()]
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
  lines += ["", "Greedy samples of the task prompt (the response part):", ""]
  for name, r in runs.items():
    response = r["sample"].split("Summary:", 1)[-1].splitlines()[0] if r["sample"] else "(none)"
    lines.append(f"* {name}: `Summary:{response}`")
  return "\n".join(lines)


def plot(runs: dict[str, dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name, r in runs.items():
    axes[0].plot(sorted(r["train"]), [r["train"][s] for s in sorted(r["train"])], label=name, lw=0.8)
    axes[1].plot(sorted(r["held_out"]), [r["held_out"][s] for s in sorted(r["held_out"])], label=name, marker=".")
  for ax, title in zip(axes, ("training loss", "held-out loss")):
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--root", default="out/peft_cmp")
  parser.add_argument("--runs", nargs="+", default=["none", "state", "lora4", "bone64", "pissa32", "lora32"])
  parser.add_argument("--append", default="")
  parser.add_argument("--plot", default="", help="write the curves as a PNG (needs matplotlib)")
  args = parser.parse_args()
  runs = {name: read_run(os.path.join(args.root, name)) for name in args.runs
          if os.path.isdir(os.path.join(args.root, name))}
  if not runs:
    raise SystemExit(f"no run directories under {args.root} among {args.runs}")
  text = report(runs, args.root)
  print(text)
  if args.plot:
    plot(runs, args.plot)
  if args.append:
    commit = provenance.commit()
    import jax
    with open(args.append, "a") as f:
      f.write(f"\n### {datetime.date.today()}, {jax.devices()[0].device_kind}, commit {commit}\n"
              f"`python benchmarks/peft_report.py {' '.join(sys.argv[1:])}`\n\n{text}\n")


if __name__ == "__main__":
  main()
