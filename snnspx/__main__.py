"""``python -m snnspx build [--cuda]`` and ``python -m snnspx info``.

``build`` compiles the kernels into the cache ahead of time (a Docker image, a cluster's
login node); ``info`` prints the backends, versions, the cache folder and the state of
each library's cache entry, and builds nothing.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import __version__, _build


def _info() -> int:
    print(f"snnspx {__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"Python {sys.version.split()[0]}")
    print(f"cache: {_build._cache_root()}")
    states = {}  # each entry is read and checksummed once
    for kind in ("cpu", "cuda"):
        if kind == "cuda" and torch.version.cuda is None:
            print("  cuda library: not for this PyTorch (a CPU-only build)")
            continue
        entry = _build.cache_entry(kind)
        states[kind] = _build.entry_state(entry, kind)
        print(f"  {kind} library: {states[kind]} ({entry})")
    print("backends (nothing is built or loaded to tell):")
    for name, avail in _available_without_building(states).items():
        print(f"  {name}: {avail}")
    return 0


def _available_without_building(states: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, kind in (("cpp", "cpu"), ("cuda", "cuda")):
        if kind == "cuda" and not torch.cuda.is_available():
            out[name] = "no (no CUDA device is visible)"
        elif states.get(kind) == "complete":
            out[name] = "yes (cached build)"
        else:
            out[name] = "compiled on first use" if kind in states else "no"
    out["torch"] = "yes (always)"
    return out


def _build_libraries(cuda: bool) -> int:
    kinds = ["cpu", "cuda"] if cuda else ["cpu"]
    for kind in kinds:
        try:
            _build.load_library(kind)
        except _build.BuildError as exc:
            print(f"snnspx: the {kind} library did not build:\n{exc}", file=sys.stderr)
            return 1
        print(f"{kind} library: {_build.entry_state(_build.cache_entry(kind), kind)} in {_build.cache_entry(kind)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snnspx", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the kernels into the cache")
    b.add_argument("--cuda", action="store_true", help="also the CUDA library (needs nvcc; no GPU needed)")
    sub.add_parser("info", help="backends, versions, cache folder and state; builds nothing")
    args = parser.parse_args(argv)
    return _build_libraries(args.cuda) if args.command == "build" else _info()


if __name__ == "__main__":
    sys.exit(main())
