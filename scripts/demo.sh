#!/usr/bin/env bash
# The main job (installs what it needs into .venv first).
# Until the trainer lands: initialise an RWKV-7 with the official init, write it as an RWKV-LM .pth, check it
# with the logits tool in both modes, and sample from it with recurrent generation.
set -euo pipefail
. "$(dirname "$0")/env.sh" requirements.txt
out="${1:-out/demo}"
mkdir -p "$out"
python -m rwkvjax.cli.init_model --n_layer 4 --n_embd 256 --vocab_size 65536 --dtype float32 --out "$out/rwkv-init.pth"
python -c "import numpy as np; np.save('$out/tokens.npy', np.arange(1, 65, dtype=np.int64) * 997 % 65536)"
python -m rwkvjax.cli.logits --checkpoint "$out/rwkv-init.pth" --tokens "$out/tokens.npy" --out "$out/logits_parallel.npz" --mode parallel
python -m rwkvjax.cli.logits --checkpoint "$out/rwkv-init.pth" --tokens "$out/tokens.npy" --out "$out/logits_recurrent.npz" --mode recurrent
python -c "
import numpy as np
a, b = np.load('$out/logits_parallel.npz'), np.load('$out/logits_recurrent.npz')
print('parallel vs recurrent: max |d logits| = %.2e, max |d wkv state| = %.2e' % (
    np.abs(a['logits'] - b['logits']).max(), np.abs(a['state_wkv'] - b['state_wkv']).max()))"
python -m rwkvjax.cli.generate --checkpoint "$out/rwkv-init.pth" --prompt "The quick brown fox" --max_new_tokens 32
