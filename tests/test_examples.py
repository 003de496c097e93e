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
        assert re.search(r"compiled kernels run: snnspx::srm_neuron_fwd x[1-9].*snnspx::srm_suppix_pool_bwd x[1-9]", text)


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
    """One seed, three epochs of the CI subset, with the LIF comparison: both accuracy lines."""
    pytest.importorskip("sklearn")
    proc = run_example("train_digits.py", "--small", "--seeds", "0", "--device", "cpu", "--compare")
    text = proc.stdout
    assert re.search(r"^\[srm seed 0\] .*init: layer 0: x[0-9.e+-]+ -> [0-9.]+ spikes, layer 3: ", text, re.M), text[-2000:]
    assert re.search(r"^\[srm seed 0\] epoch 3: .*test accuracy [0-9.]+", text, re.M), text[-2000:]
    for kind in ("srm", "lif"):
        assert re.search(rf"^{kind} seed 0: test accuracy [0-9.]+ after 3 epoch", text, re.M), text[-2000:]
    m = re.search(r"^snnspx SRM \(event-driven gradient\): mean test accuracy ([0-9.]+) over seeds 0 "
                  r"\(min ([0-9.]+), max ([0-9.]+), std ([0-9.]+); [0-9]+ s\)$", text, re.M)
    assert m, f"no summary line in:\n{text[-2000:]}"
    acc, lo, hi, std = map(float, m.groups())
    assert lo == acc == hi and std == 0.0  # one seed
    # 30 steps on 300 images: far from the full run's 97 %, but well above chance (10 %);
    # seeds 0-3 give 0.58-0.75
    assert 0.4 <= acc <= 1.0
    assert re.search(r"^PyTorch LIF \(surrogate gradient\): mean test accuracy [0-9.]+ over seeds 0 ", text, re.M)
    assert re.search(r"^ +0 \| +[0-9.]+ \| +[0-9.]+$", text, re.M), "no side-by-side table"


def test_train_vgg_ci():
    """The VGG at CI size: rate_init reaches every SRM layer, and the loss of the batch falls."""
    pytest.importorskip("sklearn")
    proc = run_example("train_vgg.py", "--ci", "--device", "cpu")
    text = proc.stdout
    rates = re.findall(r"^  layer +[0-9]+ (SRMConv2d|SRMLinear) scale +[0-9.e+-]+  rate ([0-9.]+)$", text, re.M)
    assert [k for k, _ in rates] == ["SRMConv2d"] * 8 + ["SRMLinear"] * 3, text[-3000:]
    # rate_init aims at about one spike per neuron over the window
    assert all(0.5 <= float(r) <= 3.0 for _, r in rates), rates
    steps = re.findall(r"^step ([0-9]+): loss ([0-9.]+) \(dropout on\)", text, re.M)
    assert [int(n) for n, _ in steps] == list(range(1, 9))
    m = re.search(r"^loss of the batch without dropout: ([0-9.]+) -> ([0-9.]+) \(falling\) in 8 steps", text, re.M)
    assert m, f"the loss did not fall:\n{text[-3000:]}"
    assert float(m.group(2)) < float(m.group(1))
