"""Small CUDA pooling calls for compute-sanitizer (memcheck, racecheck, synccheck).

Each new pooling kernel, on small planes: the 4-pixel no-sort kernel (vector loads at
P = 1440, scalar loads at P = 1443) for sum, avg and avg_spike; the key max kernel, also
with 8 channels a block (that needs T * B * C >= 32768 planes); the tiled gather
(unpooling and the pooling backward); the label check. Every call names its backend, the
opt-in strategies are forced (each must have run), and the results are compared with the CPU library within
float32 rounding of a sum of the plane's pixels (the GPU adds in another order).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck python benchmarks/sanitize_suppix.py
"""

from __future__ import annotations

import torch

from snnspx import functional as F

from common import force_strategies

# Each forced in turn where it applies (csrc/cuda/strategy.h); each must run at least once.
STRATEGIES = ("nosort", "nosort_quad", "max_key", "tiled", "tiled_reuse")


def check(T: int, B: int, C: int, H: int, W: int, K: int, modes, gen: torch.Generator) -> None:
    for label_dtype in (torch.int32, torch.int64):
        labels = torch.randint(-1, K, (B, H, W), generator=gen).to(label_dtype)
        x = torch.randn((T, B, C, H, W), generator=gen)
        w = torch.randn((T, B, C, K), generator=gen)
        for mode, grad in modes:
            out = {}
            for dev, backend in (("cuda", "cuda"), ("cpu", "cpp")):
                xg = x.to(dev).requires_grad_()
                y = F.suppix_pool(xg, labels.to(dev), num_superpixels=K, mode=mode, grad=grad, backend=backend)
                (y * w.to(dev)).sum().backward()
                z = F.suppix_unpool(y.detach(), labels.to(dev), backend=backend)
                out[dev] = (y.detach().cpu(), xg.grad.cpu(), z.cpu())
            for name, a, b in zip(("y", "grad", "unpool"), out["cuda"], out["cpu"]):
                torch.testing.assert_close(
                    a, b, rtol=1e-5, atol=1e-4,
                    msg=lambda m: f"{mode}/{grad} {T},{B},{C},{H},{W} {label_dtype} {name}: {m}",
                )


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    every = (("sum", "exact"), ("avg", "exact"), ("avg", "spike"), ("max", "exact"))
    missing = []
    for strategy in STRATEGIES:
        with force_strategies(strategy, lenient=True) as mode:
            for H, W in ((36, 40), (37, 39)):  # P = 1440 (vector loads), P = 1443 (scalar loads)
                check(2, 2, 3, H, W, 7, every, gen)
            if strategy == "max_key":
                check(1, 512, 64, 4, 4, 5, (("max", "exact"),), gen)  # 8 channels a block
            torch.cuda.synchronize()
        if not mode.runs:
            missing.append(strategy)
        print(f"sanitize_suppix: {strategy}: {dict(mode.runs)}")
    if missing:
        raise SystemExit(f"sanitize_suppix: these strategies did not run: {missing}")
    print("sanitize_suppix: ok")


if __name__ == "__main__":
    main()
