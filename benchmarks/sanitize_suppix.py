"""Small CUDA pooling calls for compute-sanitizer (memcheck, racecheck, synccheck).

Each new pooling kernel once, on small planes: the 4-pixel no-sort kernel (vector loads at
P = 1440, scalar loads at P = 1443) for sum, avg and avg_spike; the key max kernel; the tiled
gather (unpooling and the pooling backward); the label check. Results are compared with the
CPU library so a run that the sanitizer lets through is also checked for values.

    compute-sanitizer --tool racecheck python benchmarks/sanitize_suppix.py
"""

from __future__ import annotations

import torch

import snnspx
from snnspx import functional as F


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    T, B, C, K = 2, 2, 3, 7
    for H, W in ((36, 40), (37, 39)):  # P = 1440 (vector loads), P = 1443 (scalar loads)
        for label_dtype in (torch.int32, torch.int64):
            labels = torch.randint(-1, K, (B, H, W), generator=gen).to(label_dtype)
            x = torch.randn((T, B, C, H, W), generator=gen)
            w = torch.randn((T, B, C, K), generator=gen)
            for mode, grad in (("sum", "exact"), ("avg", "exact"), ("avg", "spike"), ("max", "exact")):
                out = {}
                for dev in ("cuda", "cpu"):
                    xg = x.to(dev).requires_grad_()
                    y = F.suppix_pool(xg, labels.to(dev), K, mode, grad=grad)
                    (y * w.to(dev)).sum().backward()
                    z = F.suppix_unpool(y.detach(), labels.to(dev))
                    out[dev] = (y.detach().cpu(), xg.grad.cpu(), z.cpu())
                for name, a, b in zip(("y", "grad", "unpool"), out["cuda"], out["cpu"]):
                    torch.testing.assert_close(a, b, msg=lambda m: f"{mode}/{grad} P={H * W} {label_dtype} {name}: {m}")
    torch.cuda.synchronize()
    counters = ("cuda.suppix_pool_nosort_quad", "cuda.suppix_pool_max_key", "cuda.suppix_gather_tiled")
    print("sanitize_suppix: ok;", ", ".join(f"{n} {snnspx.kernel_calls(n)}" for n in counters))


if __name__ == "__main__":
    main()
