"""Packaging hook: with ``SNNSPX_PREBUILD=1`` (and ``--no-build-isolation``, so that the build
sees the installed PyTorch) the wheel carries the compiled CPU library, and with
``SNNSPX_PREBUILD=cuda`` the CUDA one too, as complete cache entries in ``snnspx/_prebuilt``:
they load on machines with no compiler (snnspx/_build.py checks that they were made for
the PyTorch, CUDA and Python that load them). Everything else is in pyproject.toml."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution


class MaybeBinaryDistribution(Distribution):
    """A wheel with prebuilt libraries is for one platform and Python, not pure Python."""

    def has_ext_modules(self):
        return os.environ.get("SNNSPX_PREBUILD", "") in ("1", "cuda")


class BuildPyWithKernels(build_py):
    def run(self):
        super().run()
        mode = os.environ.get("SNNSPX_PREBUILD", "")
        if mode not in ("1", "cuda"):
            return
        here = Path(__file__).resolve().parent
        out = (Path(self.build_lib) / "snnspx" / "_prebuilt").resolve()
        kinds = ["cpu", "cuda"] if mode == "cuda" else ["cpu"]
        # Build (or take from $SNNSPX_CACHE_DIR) with the sources of this tree, then copy the
        # complete cache entries, library and manifest, into the package.
        script = (
            "import shutil, sys; from pathlib import Path; from snnspx import _build\n"
            f"for kind in {kinds!r}:\n"
            "    _build.load_library(kind)\n"
            "    entry = _build.cache_entry(kind)\n"
            "    shutil.copytree(entry, Path(sys.argv[1]) / entry.name, dirs_exist_ok=True)\n"
        )
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(here))
        subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True, cwd=tempfile.gettempdir())


setup(cmdclass={"build_py": BuildPyWithKernels}, distclass=MaybeBinaryDistribution)
