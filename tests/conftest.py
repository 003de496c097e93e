"""The device x backend grid, the seeded random source, the cpp library loaded once per session,
and the helpers that tell which kernels ran (profiler op names, forced strategies), shared by
all tests.

Every test that draws random inputs takes the ``gen`` fixture: a fresh
``torch.Generator`` seeded from ``SNNSPX_TEST_SEED`` (default 0, so runs repeat;
``SNNSPX_TEST_SEED=random`` draws a new seed per test, for fuzzing). The seed is
printed (pytest shows it with any failure) so a failure can be replayed with
``SNNSPX_TEST_SEED=<seed> pytest ...``. The global torch and ``random`` generators
are seeded with the same value before every test.
"""

from __future__ import annotations

import collections
import os
import random

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import snnspx

HAS_CUDA = torch.cuda.is_available()

# (backend, device) pairs that are compared against snnspx.reference.
GRID = [
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("cpp", "cpu", id="cpp-cpu"),
    pytest.param("torch", "cuda", marks=pytest.mark.cuda, id="torch-cuda"),
    pytest.param("cuda", "cuda", marks=pytest.mark.cuda, id="cuda-cuda"),
]
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


def pytest_terminal_summary(terminalreporter):
    """One line per skip reason with its count, instead of one line per skipped test."""
    reasons: dict[str, int] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.write_sep("-", "skipped, by reason")
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{n:5d}  {reason}")


@pytest.fixture(autouse=True, scope="session")
def _cpp_loaded():
    """The cpp library is loaded before the first test (where it builds), as in any process of a
    user who has it: backend="torch" on the CPU then runs the PyTorch kernels chosen per call
    over the loaded C++ ones, under the same autograd formula. A failed build leaves the CPU to
    the PyTorch kernels (the cpp tests then fail with the build's message)."""
    try:
        snnspx._build.load_library("cpu")
    except snnspx.BuildError:
        return
    assert torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::srm_forward", "CPU")


# --------------------------------------------------------------------------- which kernels ran
def profiled_ops(fn) -> collections.Counter:
    """How often each profiler event (``snnspx::srm_forward``, ``aten::mul``,
    ``PythonDispatchMode``...) ran while fn() ran, its autograd backward included (the
    profiler follows autograd's worker threads)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return collections.Counter(e.name for e in prof.events())


def snnspx_ops(prof) -> list[str]:
    """The snnspx operator calls in a torch.profiler profile, in order. A call that a
    dispatch mode (ForceStrategy) dispatches again appears once: an event inside an event
    of the same name is the same call."""
    ev = sorted((e for e in prof.events() if e.name.startswith("snnspx::")),
                key=lambda e: (e.time_range.start, -e.time_range.end))
    calls, open_ = [], []  # open_: (name, end) of the calls that may still contain later events
    for e in ev:
        open_ = [(n, end) for n, end in open_ if end >= e.time_range.end]
        if not any(n == e.name for n, _ in open_):
            calls.append(e.name)
        open_.append((e.name, e.time_range.end))
    return calls


def op_calls(fn) -> collections.Counter:
    """Runs fn() and counts the snnspx operators the dispatcher ran, by name
    ("snnspx::suppix_pool"...), from torch.profiler: proves a compiled op ran (the torch
    backend runs PyTorch ops instead) without instrumenting the library."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return collections.Counter(snnspx_ops(prof))


# What a PyTorch kernel of an snnspx op computes with (every one uses some of these), and the
# dispatch mode through which backend="torch" forces them; a compiled kernel calls at most
# allocations, copies and a label-range check (aten::max, aten::item).
_PYTORCH_KERNEL_OPS = {"PythonDispatchMode", "aten::mul", "aten::add", "aten::sub", "aten::div", "aten::where",
                       "aten::gather", "aten::segment_reduce", "aten::searchsorted", "aten::index_add_"}


def kernels_run(fn) -> dict[str, list[str]]:
    """Run fn() under torch.profiler: ``{"snnspx::<op>": ["compiled" | "torch", ...]}``, one
    entry per call of the op, in call order: "torch" where the op's PyTorch kernel ran (its
    aten ops show under the op), "compiled" where a C++/CUDA kernel did. A call that a dispatch
    mode (ForceStrategy) dispatches again counts once, as in snnspx_ops."""

    def inside(e):
        for c in e.cpu_children:
            yield c.name
            yield from inside(c)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = sorted((e for e in prof.events() if e.name.startswith("snnspx::")),
                key=lambda e: (e.time_range.start, -e.time_range.end))
    out: dict[str, list[str]] = {}
    open_ = []  # (name, end) of the calls that may still contain later events
    for e in ev:
        open_ = [(n, end) for n, end in open_ if end >= e.time_range.end]
        if not any(n == e.name for n, _ in open_):
            out.setdefault(e.name, []).append("torch" if _PYTORCH_KERNEL_OPS & set(inside(e)) else "compiled")
        open_.append((e.name, e.time_range.end))
    return out


# The ops with a trailing `str strategy` argument ("" = the op's strategy function chooses).
STRATEGY_OPS = (
    "suppix_pool", "suppix_pool_backward", "suppix_unpool", "srm_suppix_pool", "srm_suppix_pool_fwd",
    "srm_suppix_pool_bwd",
)


class ForceStrategy(TorchDispatchMode):
    """Within ``with ForceStrategy({"suppix_unpool": "tiled"}):`` the named ops run the named
    strategy wherever their caller left the choice to the op (strategy ""); an unknown or
    inapplicable strategy raises, as the op does. ``runs`` counts the forced calls per op.
    With lenient=True, a str forces that strategy on every op of STRATEGY_OPS that has it and
    where it applies, and leaves the other calls to the op's own choice."""

    def __init__(self, strategies, lenient: bool = False):
        super().__init__()
        self.strategies = dict.fromkeys(STRATEGY_OPS, strategies) if isinstance(strategies, str) else strategies
        self.lenient = lenient
        self.runs: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ns, _, op = func._schema.name.partition("::")
        name = self.strategies.get(op) if ns == "snnspx" else None
        if name is None or not args or args[-1] != "":
            return func(*args, **kwargs)
        try:
            out = func(*args[:-1], name, **kwargs)
        except RuntimeError as exc:  # unknown here or not for these inputs
            if not self.lenient or f"strategy '{name}'" not in str(exc):
                raise
            return func(*args, **kwargs)
        self.runs[op] += 1
        return out


# SNNSPX_TEST_STRATEGY (benchmarks/gpu_check.sh sets it): every test runs inside a lenient
# ForceStrategy of it, either one name for every op ("tiled") or op=name pairs
# ("suppix_pool=nosort_quad,suppix_unpool=tiled_reuse"). How many calls ran each forced
# strategy is appended to SNNSPX_TEST_STRATEGY_LOG ("op strategy calls" lines) at the end of
# the session. Test machinery only: the library reads no environment variable.
def _forced_strategies(spec: str):
    if "=" not in spec:
        return spec
    return dict(pair.split("=", 1) for pair in spec.split(",") if pair)


FORCED_STRATEGY = _forced_strategies(os.environ.get("SNNSPX_TEST_STRATEGY", ""))
FORCED_RUNS: collections.Counter = collections.Counter()


@pytest.fixture(autouse=True)
def _forced_strategy():
    if not FORCED_STRATEGY:
        yield
        return
    mode = ForceStrategy(FORCED_STRATEGY, lenient=True)
    with mode:
        yield
    FORCED_RUNS.update(mode.runs)


def pytest_sessionfinish(session, exitstatus):
    log = os.environ.get("SNNSPX_TEST_STRATEGY_LOG")
    if not FORCED_STRATEGY or not log:
        return
    names = FORCED_STRATEGY if isinstance(FORCED_STRATEGY, dict) else dict.fromkeys(STRATEGY_OPS, FORCED_STRATEGY)
    with open(log, "a") as f:
        for op, name in sorted(names.items()):
            f.write(f"{op} {name} {FORCED_RUNS[op]}\n")


@pytest.fixture
def seed(request) -> int:
    env = os.environ.get("SNNSPX_TEST_SEED", "0")
    value = random.SystemRandom().randrange(2**31) if env == "random" else int(env)
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
