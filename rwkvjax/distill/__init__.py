"""Qwen2/Llama -> RWKV-7 distillation (ARWKV and RADLADS recipes); see docs/distill.md.

  student.py  the student model (a Qwen2-family decoder whose attention is replaced by RWKV-7 time mixers) and
              the stage-1 teacher-forced alignment forward; registered as model version "arwkv7".
  teacher.py  the frozen teacher's pieces (hidden states without the LM head, attention inputs).
  losses.py   per-layer alignment loss; chunked forward KL(teacher || student) and cross-entropy.
  tasks.py    the trainer tasks of the three stages (DistillStage{1,2,3}Config).
  export.py   student files: safetensors + config.json, and an RWKV-style .pth.

This package's __init__ imports nothing: `rwkvjax.models` imports `student` for its registry.
"""
