"""PyTorch side of `benchmarks/step_breakdown.py`: time ResNet-20's convolutions.

Runs in its own interpreter (a venv with a CPU build of torch; imports
neither kpjax nor absl). For each layer shape given as H,C_in,C_out,stride it
times, at batch B, NCHW float32 with padding 1 and no bias: the forward
convolution, its input gradient alone and its weight gradient alone
(`torch.autograd.grad` of a forward computed once, with one of the two
requiring a gradient, so autograd computes only that half). Prints one JSON line:
``{"layers": {"32,16,16,1": {"forward": s, "input_grad": s, "weight_grad": s}, ...}}``
(seconds per call, the median of --repeats rounds of --calls calls).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F


def _seconds(fn, calls: int, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", required=True, help="H,C_in,C_out,stride;...")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {}
    for layer in args.layers.split(";"):
        h, cin, cout, stride = (int(v) for v in layer.split(","))
        x = torch.randn(args.batch_size, cin, h, h)
        w = torch.randn(cout, cin, 3, 3) * 0.1
        g = torch.randn_like(F.conv2d(x, w, stride=stride, padding=1))
        xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

        def forward():
            with torch.no_grad():
                return F.conv2d(x, w, stride=stride, padding=1)

        # The forward runs once, outside the clock: only the backward is timed.
        y_x = F.conv2d(xg, w, stride=stride, padding=1)
        y_w = F.conv2d(x, wg, stride=stride, padding=1)

        def input_grad():
            return torch.autograd.grad(y_x, xg, g, retain_graph=True)

        def weight_grad():
            return torch.autograd.grad(y_w, wg, g, retain_graph=True)

        out[layer] = {name: _seconds(fn, args.calls, args.repeats)
                      for name, fn in (("forward", forward), ("input_grad", input_grad),
                                       ("weight_grad", weight_grad))}
    print(json.dumps({"layers": out, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
