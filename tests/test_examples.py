"""The examples, end to end at CI size (``--small``), each in its own Python process.

The subprocess imports the same snnspx as these tests (its folder goes first on
PYTHONPATH), so a checkout tests its own code even when another copy is installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import snnspx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 300  # generous: a first run may compile the CPU kernels


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    pkg_parent = str(Path(snnspx.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=str(ROOT),
    )
    assert proc.returncode == 0, (
        f"{name} {' '.join(args)} exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


def test_superpixel_demo_small(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    from matplotlib import image as mpimg

    out = tmp_path / "demo.png"
    proc = run_example("superpixel_snn.py", "--small", "--device", "cpu", "--out", str(out))
    assert out.is_file() and out.stat().st_size > 0
    img = mpimg.imread(out)  # a valid PNG, or this raises
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.05, "the figure looks blank"
    text = proc.stdout
    for stage in range(1, 8):
        assert re.search(rf"^\[{stage}/7\] .*done in [0-9.]+ s$", text, re.M), f"no progress line for stage {stage}"
    backend = re.search(r"running on cpu with the '(cpp|torch)' backend", text)
    assert backend
    assert "gradient norms: conv1.weight" in text
    if backend.group(1) == "cpp":  # the C++ kernels served the neuron and fused ops
        assert re.search(r"compiled kernels run: snnspx::srm_forward x[1-9].*snnspx::srm_suppix_pool_bwd x[1-9]", text)


def test_superpixel_demo_rejects_a_missing_device(tmp_path):
    """A failure is a non-zero exit with a message, not a traceback with status 0."""
    pytest.importorskip("skimage")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    env = dict(os.environ, PYTHONPATH=str(Path(snnspx.__file__).resolve().parent.parent))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "superpixel_snn.py"), "--small", "--device", "cuda",
         "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
    )
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_train_digits_small():
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    proc = run_example("train_digits.py", "--small", "--seed", "0", "--device", "cpu")
    m = re.search(r"^final test accuracy: ([0-9.]+) after 1 epoch", proc.stdout, re.M)
    assert m, f"no accuracy line in:\n{proc.stdout[-2000:]}"
    acc = float(m.group(1))
    assert 0.0 <= acc <= 1.0
    assert re.search(r"^epoch 1: .*test accuracy [0-9.]+", proc.stdout, re.M)
