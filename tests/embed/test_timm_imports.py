"""Embedding with a timm backbone never imports open_clip (nor transformers through it): a rerun of `embed run` on
an unchanged folder costs little more than its imports, and open_clip's cost seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from imagegen import write_good_images

ROOT = Path(__file__).resolve().parents[2]
PROBE = r"""
import json, runpy, sys

sys.argv = ["embed", *sys.argv[1:]]
try:
    runpy.run_module("embed", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    assert not stop.code, stop.code
print(json.dumps(sorted(m for m in ("open_clip", "transformers") if m in sys.modules)))
"""


def test_a_timm_run_loads_no_open_clip(tiny_timm_ckpt, tmp_path):
    write_good_images(tmp_path / "data" / "train" / "cat", 2, seed=1)
    write_good_images(tmp_path / "data" / "train" / "dog", 2, seed=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = ["run", "--data", str(tmp_path / "data"), "--backbone", f"timm:test_efficientnet@{tiny_timm_ckpt}",
            "--store", str(tmp_path / "s.h5"), "--workers", "0", "--progress", "False"]
    for _ in range(2):  # the first run embeds, the rerun finds everything done
        done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == []
