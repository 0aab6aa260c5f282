"""Compiled vreason ops vs the plain-torch eager composition, side by side in one run.

    python experiments/bench/ops.py [--repeats 30] [--device cpu] [--threads N]

Prints the machine, then a table of median times (ms) and eager/fused ratios: entropy forward and
forward+backward at vocab 152,064 (batch 1 and 8, float32 and bfloat16), value_update
forward+backward and value_update_ at [1, 4, 2048, 128], and vecmat (`g @ W` for one token's
gradient row, the controller's backward products) against torch's `g @ W` over the bf16 lm_head
and MLP shapes of a 7B model. Eager entropy is
`-(softmax · log_softmax).sum(-1)` in float32 (bf16 logits upcast first, as the op computes).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from vreason import ops

VOCAB = 152_064
SIMD_NAMES = {0: "scalar", 1: "AVX2", 2: "AVX-512F (float32; AVX2 for bf16)"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def paired_median_ms(fused, eager, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median ms of each; the two alternate run by run, so both see the same background load
    (the cores here are shared, and load shifts between separate timing loops)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {fused: [], eager: []}
    for _ in range(3):
        fused(), eager()
    sync()
    for _ in range(repeats):
        for fn in (fused, eager):
            start = time.perf_counter()
            fn()
            sync()
            times[fn].append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[fused]), 1e3 * statistics.median(times[eager])


def eager_entropy(z: torch.Tensor) -> torch.Tensor:
    z = z.float()
    return -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)


def eager_value_update(v0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    u = v0 + delta
    return u / torch.linalg.vector_norm(u, dim=-1, keepdim=True) * torch.linalg.vector_norm(v0, dim=-1, keepdim=True)


def entropy_cases(device, repeats):
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for batch in (1, 8):
            z = (torch.randn(batch, VOCAB, device=device) * 4).to(dtype)
            g = torch.randn(batch, device=device)
            name = f"entropy fwd      [{batch}, {VOCAB}] {str(dtype).removeprefix('torch.')}"
            rows.append((name, *paired_median_ms(lambda: ops.entropy(z), lambda: eager_entropy(z), repeats, device)))

            def fwd_bwd(fn):
                leaf = z.detach().requires_grad_(True)
                torch.autograd.grad(fn(leaf), leaf, grad_outputs=g)

            name = f"entropy fwd+bwd  [{batch}, {VOCAB}] {str(dtype).removeprefix('torch.')}"
            rows.append((name, *paired_median_ms(lambda: fwd_bwd(ops.entropy), lambda: fwd_bwd(eager_entropy),
                                                 repeats, device)))
    return rows


def value_update_cases(device, repeats):
    shape = (1, 4, 2048, 128)
    v0 = torch.randn(shape, device=device)
    delta = 0.1 * torch.randn(shape, device=device)
    g = torch.randn(shape, device=device)

    def fwd_bwd(fn):
        leaf = delta.detach().requires_grad_(True)
        torch.autograd.grad(fn(v0, leaf), leaf, grad_outputs=g)

    rows = [(f"value_update fwd+bwd {list(shape)} float32",
             *paired_median_ms(lambda: fwd_bwd(ops.value_update), lambda: fwd_bwd(eager_value_update), repeats, device))]

    cache = torch.randn(1, 4, 4096, 128, device=device, dtype=torch.bfloat16)
    positions = torch.randperm(4096, device=device)[:2048]

    def eager_inplace():
        cache[:, :, positions] = eager_value_update(v0, delta).to(cache.dtype)

    rows.append(("value_update_ into bf16 cache [1, 4, 4096, 128] @2048",
                 *paired_median_ms(lambda: ops.value_update_(cache, positions, v0, delta), eager_inplace, repeats, device)))
    return rows


def vecmat_cases(device, repeats):
    """The round's backward products at Qwen2.5-VL-7B shapes, bf16 weights: vecmat (float32 out)
    vs torch's `g @ W` in the weight's dtype."""
    rows = []
    for name, (out_rows, cols) in (("lm_head", (VOCAB, 3584)), ("down_proj", (3584, 18944)),
                                   ("gate_proj", (18944, 3584))):
        weight = (0.02 * torch.randn(out_rows, cols, device=device)).to(torch.bfloat16)
        g = torch.randn(1, out_rows, device=device)
        g_bf16 = g.to(torch.bfloat16)
        rows.append((f"vecmat g@W {name} [{out_rows}, {cols}] bf16",
                     *paired_median_ms(lambda: ops.vecmat(g, weight), lambda: g_bf16 @ weight, repeats, device)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives stable numbers on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    machine = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"machine: {machine} | torch threads: {torch.get_num_threads()} | torch {torch.__version__}"
          f" | vreason._C: CUDA kernels {'built' if ops.built_with_cuda() else 'not built'},"
          f" CPU path {SIMD_NAMES[ops._C.simd_level()]} | device: {device}")
    rows = entropy_cases(device, args.repeats) + value_update_cases(device, args.repeats) + vecmat_cases(device, args.repeats)
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'case':<{width}} | fused ms | eager ms | eager/fused |")
    print(f"|{'-' * (width + 2)}|---------:|---------:|------------:|")
    for name, fused, eager in rows:
        print(f"| {name:<{width}} | {fused:8.3f} | {eager:8.3f} | {eager / fused:10.2f}x |")


if __name__ == "__main__":
    main()
