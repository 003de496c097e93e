"""The device x backend grid and the seeded random source shared by all tests.

Every test that draws random inputs takes the ``gen`` fixture: a fresh
``torch.Generator`` seeded from ``SNNSPX_TEST_SEED`` or, if unset, from the OS.
The seed is printed (pytest shows it with any failure) so a failure can be
replayed with ``SNNSPX_TEST_SEED=<seed> pytest ...``. The global torch and
``random`` generators are seeded with the same value before every test.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# (backend, device) pairs that are compared against snnspx.reference.
GRID = [
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("cpp", "cpu", id="cpp-cpu"),
    pytest.param("torch", "cuda", marks=pytest.mark.cuda, id="torch-cuda"),
    pytest.param("cuda", "cuda", marks=pytest.mark.cuda, id="cuda-cuda"),
]
# GRID and the reference backend itself (for edge cases the oracle must survive too).
ALL_BACKENDS = [pytest.param("reference", "cpu", id="reference-cpu"), *GRID]
# Only the compiled ones (for opcheck, sentinels, torch.compile).
COMPILED = [
    pytest.param("cpp", "cpu", id="cpp-cpu"),
    pytest.param("cuda", "cuda", marks=pytest.mark.cuda, id="cuda-cuda"),
]
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed(request) -> int:
    env = os.environ.get("SNNSPX_TEST_SEED")
    value = int(env) if env else random.SystemRandom().randrange(2**31)
    print(f"\n[snnspx] {request.node.nodeid}: SNNSPX_TEST_SEED={value}")
    return value


@pytest.fixture
def gen(seed) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _seeded_global_rng(seed):
    """Global generators (e.g. the initial weights of torch.nn layers) follow the printed seed
    too, so every failure replays from it."""
    torch.manual_seed(seed)
    random.seed(seed)


# --------------------------------------------------------------------------- random inputs (superpixels)
def rand_x(gen, shape, dtype=torch.float32, device="cpu"):
    """Gaussian values drawn in float64 (no ties, with probability 1), then cast."""
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def rand_labels(gen, form, T, B, H, W, K, device="cpu", low=-1, dtype=torch.int64):
    """Labels in [low, K - 2]: some pixels ignored (-1), superpixel K - 1 always empty."""
    shape = {"shared": (H, W), "per_image": (B, H, W), "per_step": (T, B, H, W)}[form]
    return torch.randint(low, K - 1, shape, generator=gen).to(dtype).to(device)
