"""Does this PyTorch install propagate C++ exceptions out of JIT-built extensions?

On the GPU machine used for this project's checks (torch 2.11.0+cu130 wheel, built
with gcc-toolset-13, Ubuntu 24.04 g++ 13.3) any exception thrown inside a JIT-built
extension -- a three-line load_inline op with TORCH_CHECK, a plain
std::runtime_error, with or without -static-libstdc++ -- killed the process with
SIGSEGV, while PyTorch's own errors raised normally. This script shows which case
a machine is in: every line should say "raised". On such a machine, snnspx's Python
checks still raise, but the errors found inside the compiled ops crash the process:
direct calls of torch.ops.snnspx.* with bad arguments, and the label range check
(check_labels=True, done inside the ops so that it never delays a launch).

One suspect, after a known failure mode of other packages: a second unwinder (e.g.
LLVM's or nongnu libunwind) loaded into the process before the extension, which then
binds its _Unwind_* calls to it instead of libgcc_s. The script lists the unwinder
libraries mapped after `import torch`, and tries the tiny extension loaded with
RTLD_DEEPBIND (its own dependencies first), which would sidestep that.

    python benchmarks/diag_extension_exceptions.py
"""
import os, subprocess, sys, textwrap, time
def sh(c): return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
print(sh("g++ --version | head -1; ldd --version | head -1; uname -r"))
print(sh("python3 -c \"import torch; c=torch.__config__.show().splitlines(); print([l for l in c if 'GCC' in l or 'clang' in l or 'CXX_COMPILER' in l or 'CXX_FLAGS' in l][:3]); print('abi', torch._C._GLIBCXX_USE_CXX11_ABI)\""))
TINY = r'''
#include <torch/extension.h>
at::Tensor boom(const at::Tensor& x) { TORCH_CHECK(x.dim() == 99, "boom: x must be 99-d, got ", x.dim()); return x; }
at::Tensor boom2(const at::Tensor& x) { throw std::runtime_error("plain std error"); }
TORCH_LIBRARY(diag_VARIANT, m) { m.def("boom(Tensor x) -> Tensor"); m.def("boom2(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(diag_VARIANT, CPU, m) { m.impl("boom", &boom); m.impl("boom2", &boom2); }
'''
variants = {"default": ([], []), "staticstd": ([], ["-static-libstdc++", "-static-libgcc"]), "nocf": (["-fcf-protection=none"], []), "O0": (["-O0"], []), "deepbind": ([], [])}
procs = {}
procs["unwinders"] = ("import torch\nlibs = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'unwind' in l or 'libgcc_s' in l})"
                      "\nprint('unwinder libraries after import torch:', libs or 'none')")
procs["builtin"] = "import torch\ntry:\n    torch.zeros(2)+torch.zeros(3)\nexcept RuntimeError as e: print('raised', str(e)[:60])"
for v, (cf, lf) in variants.items():
    src = TINY.replace("VARIANT", v)
    procs["tiny_" + v] = f"""
import os, torch
from torch.utils.cpp_extension import load_inline
if {v!r} == "deepbind":
    import ctypes
    torch.ops.load_library = lambda path: ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND)
load_inline('diag_{v}', cpp_sources=[{src!r}], extra_cflags={cf!r}, extra_ldflags={lf!r}, is_python_module=False, build_directory=None)
for op in ('boom', 'boom2'):
    try:
        getattr(torch.ops.diag_{v}, op)(torch.zeros(2))
    except RuntimeError as e: print(op, 'raised', str(e).splitlines()[0][:60])
"""
ours = "import torch\nfrom snnspx import _build\n_build.load_library('cpu')\ntry:\n    torch.ops.snnspx.srm_forward(torch.randn(3,2), 3.0, 3.0, 2.5, 1.0, 0)\nexcept Exception as e: print('raised', type(e).__name__, str(e)[:60])"
procs["ours_staticstd"] = ours
running = {}
for name, code in procs.items():
    env = dict(os.environ)
    if name == "ours_staticstd":
        env.update(SNNSPX_EXTRA_LDFLAGS="-static-libstdc++ -static-libgcc", SNNSPX_CACHE_DIR="/tmp/snnspx-static")
    running[name] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
for name, p in running.items():
    out, err = p.communicate(timeout=150)
    print(f"{name}: rc={p.returncode} {out.strip()[-200:]} {err.strip()[-250:] if p.returncode else ''}")
