"""Generation benchmark: V-Reason `switch` vs plain decoding (`off`), CPU, side by side.

A random-weight model with Qwen2.5-VL-7B's text shapes (hidden 3584, 28 query / 4 KV heads of
128, intermediate 18944, vocab 152,064), cut to 4 decoder layers, in bfloat16 (float32 would be
8 GB of weights), with a tiny vision tower and ~1,000 video tokens, generates 64 new tokens
(greedy; eos disabled so both runs generate all of them). Each mode runs in its own process so
peak RSS is measured separately.

Reported per mode: prefill time, time per generated token, the components (one decoder layer,
lm_head, one optimization round), process peak RSS and the peak RSS of the generate call alone
(VmHWM reset before it). The 28-layer overhead is extrapolated as
    (t_rest + 28·t_layer + t_round/every_k) / (t_rest + 28·t_layer),
with t_rest = t_token(off) − 4·t_layer (embedding, lm_head, final norm, entropy, sampling, loop).

    python experiments/bench/generation.py [--new-tokens 64] [--every-k 2] [--steps 1] [--device cpu]

`--device cuda` runs the same on a GPU: each component's timing then synchronizes the device at
its start and end (so the sum of the parts is slower than a free-running token), and the peak
memory columns are the GPU's allocated memory (`torch.cuda.max_memory_allocated`) instead of RSS.

Batched decoding (`--batch`): per mode (off, switch; each in its own process), batches of
`--batch-sizes` samples (default 1, 4, 8; size 1 runs `generate`, the others `generate_batch`)
of different clips of the same shape, side by side: decode tokens/s (all rows' new tokens over
the decode time, prefill excluded), samples/s end to end (prefill included) and the peak RSS of
each generate call, with the ratios to batch size 1 and switch/off.

    python experiments/bench/generation.py --batch [--batch-sizes 1,4,8] [--frames 4] [--new-tokens 32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_METADATA_OPS: set = set()  # filled in the worker: aten ops that only make views

SHAPES = dict(
    hidden_size=3584,
    num_attention_heads=28,
    num_key_value_heads=4,
    intermediate_size=18944,
    vocab_size=152064,
    num_hidden_layers=4,
    max_position_embeddings=32768,
)
FULL_LAYERS = 28
# Run as a script from a checkout: make the package importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args) -> dict:
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
    from vreason.controller import ValueController
    from vreason.models.tiny import tiny_config

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(args.processor_dir, local_files_only=True)
    config = tiny_config(processor.tokenizer, **SHAPES)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval().to(device)
    model.requires_grad_(False)
    build_s = time.perf_counter() - t0
    cuda = device.type == "cuda"
    clock = (lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]) if cuda else time.perf_counter
    # An id no tokenizer entry uses: the run always generates --new-tokens tokens.
    model.generation_config.eos_token_id = [SHAPES["vocab_size"] - 1]

    frames = torch.randint(0, 256, (args.frames, 3, args.side, args.side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which direction does the square move?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = {k: v.to(device) for k, v in processor(text=[text], videos=[frames], return_tensors="pt",
                                                     do_sample_frames=False).items()}

    timings: dict[str, list[float]] = {"forward": [], "layer": [], "lm_head": [], "round": []}
    starts: dict[str, float] = {}

    def timed_hooks(module, key):
        def pre(*_a, **_k):
            starts[key] = clock()

        def post(*_a, **_k):
            timings[key].append(clock() - starts[key])

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    timed_hooks(model, "forward")
    for layer in model.model.language_model.layers:
        timed_hooks(layer, "layer")
    timed_hooks(model.lm_head, "lm_head")
    original_round = ValueController.round

    # Where each round falls among the component timings: its floor is priced with the layer and
    # lm_head calls of the forward just before it, run moments earlier under the same load.
    round_marks: list[tuple[int, int]] = []

    def timed_round(self, *a, **k):
        round_marks.append((len(timings["layer"]), len(timings["lm_head"])))
        t = clock()
        out = original_round(self, *a, **k)
        timings["round"].append(clock() - t)
        return out

    ValueController.round = timed_round

    controller = ControllerConfig(mode=args.mode, every_k=args.every_k, steps=args.steps)
    generator = VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=args.new_tokens))
    if cuda:  # a short warm-up (first-use checks, cuBLAS handles); then the peak of generate alone
        VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=2)).generate(**inputs)
        for values in timings.values():
            values.clear()
        round_marks.clear()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = torch.cuda.memory_allocated(device) / 2**20 if cuda else _rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak of generate alone
    t0 = clock()
    result = generator.generate(**inputs)
    total = clock() - t0
    n_layers = SHAPES["num_hidden_layers"]
    prefill = timings["forward"][0]
    decode_layers = timings["layer"][n_layers:]  # the prefill's layer calls come first
    n = result.num_new_tokens
    # Medians: the machine is shared, and a neighbour's burst should not decide a component.
    row = dict(
        mode=args.mode,
        steps=args.steps,
        build_s=build_s,
        prefill_s=prefill,
        new_tokens=n,
        video_tokens=result.num_video_tokens,
        prompt_tokens=result.prompt_length,
        t_token=(total - prefill) / n,
        t_token_without_rounds=(total - prefill - sum(timings["round"])) / n,
        t_layer=statistics.median(decode_layers),
        t_lm_head=statistics.median(timings["lm_head"][1:]),
        t_round=statistics.median(timings["round"]) if timings["round"] else 0.0,
        rounds=len(timings["round"]),
        round_over_floor=_round_over_floor(timings, round_marks, n_layers),
        skipped=result.skipped_rounds,
        rss_before_mb=rss_before,
        peak_generate_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _vm_hwm_mb(),
        peak_process_mb=torch.cuda.max_memory_reserved(device) / 2**20 if cuda else
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        load=os.getloadavg()[0],
    )
    row.update(_count_ops(args, model, inputs, timings))
    return row


def batch_worker(args) -> dict:
    """One mode, each batch size in turn (ascending, so an earlier call's freed memory cannot hide
    a later call's peak): prefill and decode times, tokens, and the call's peak RSS."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
    from vreason.models.tiny import tiny_config

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(args.processor_dir, local_files_only=True)
    model = Qwen2_5_VLForConditionalGeneration._from_config(tiny_config(processor.tokenizer, **SHAPES),
                                                            dtype=torch.bfloat16).eval()
    model.requires_grad_(False)
    model.generation_config.eos_token_id = [SHAPES["vocab_size"] - 1]  # never generated: all rows run to the end
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which direction does the square move?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def sample(seed, frames=args.frames, side=args.side):
        clip = torch.randint(0, 256, (frames, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        return dict(processor(text=[text], videos=[clip], return_tensors="pt", do_sample_frames=False))

    forwards: list[float] = []  # end of each model forward
    model.register_forward_hook(lambda *_: forwards.append(time.perf_counter()))
    controller = ControllerConfig(mode=args.mode, every_k=args.every_k, steps=args.steps)
    # Warm-up on small clips (first-use costs: kernels, the ops' first-use check, allocator growth).
    warm = VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=3))
    small = [sample(100 + i, frames=2, side=112) for i in range(2)]
    warm.generate(**small[0])
    warm.generate_samples(small)
    generator = VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=args.new_tokens))
    rows = {}
    for size in (int(b) for b in args.batch_sizes.split(",")):
        samples = [sample(seed) for seed in range(size)]
        forwards.clear()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak of this call alone
        t0 = time.perf_counter()
        results = generator.generate_samples(samples) if size > 1 else [generator.generate(**samples[0])]
        total = time.perf_counter() - t0
        prefill = forwards[0] - t0  # the prompt's forward (vision tower included)
        rows[size] = dict(total_s=total, prefill_s=prefill, new_tokens=sum(r.num_new_tokens for r in results),
                          video_tokens=results[0].num_video_tokens, prompt_tokens=results[0].prompt_length,
                          peak_mb=_vm_hwm_mb(), load=os.getloadavg()[0])
    return rows


def batch_main(args) -> None:
    from vreason.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        pixels = args.side * args.side
        build_tiny_model(Path(tmp) / "proc", seed=0, video_max_pixels=pixels, video_min_pixels=pixels)
        modes = {}
        for mode in ("off", "switch"):
            cmd = [sys.executable, __file__, "--batch-worker", mode, "--processor-dir", str(Path(tmp) / "proc"),
                   "--new-tokens", str(args.new_tokens), "--every-k", str(args.every_k), "--steps", str(args.steps),
                   "--frames", str(args.frames), "--side", str(args.side), "--batch-sizes", args.batch_sizes]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            modes[mode] = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    first = next(iter(modes["off"].values()))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(load average now {os.getloadavg()[0]:.2f}); bfloat16 weights")
    print(f"model: Qwen2.5-VL-7B text shapes, {SHAPES['num_hidden_layers']} decoder layers, random weights; per sample "
          f"{first['prompt_tokens']} prompt tokens of which {first['video_tokens']} video; {args.new_tokens} new tokens; "
          f"switch: every_k={args.every_k}, steps={args.steps}")
    print()
    print("| mode | B | prefill s | decode s | decode tok/s | vs B=1 | samples/s (with prefill) | vs B=1 "
          "| peak RSS MB | switch/off peak |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for mode, rows in modes.items():
        base = rows[min(rows)]
        base_tps = base["new_tokens"] / (base["total_s"] - base["prefill_s"])
        base_sps = min(rows) / base["total_s"]
        for size, r in rows.items():
            tps = r["new_tokens"] / (r["total_s"] - r["prefill_s"])
            sps = size / r["total_s"]
            peak = r["peak_mb"] / modes["off"][size]["peak_mb"]
            print(f"| {mode} | {size} | {r['prefill_s']:.1f} | {r['total_s'] - r['prefill_s']:.1f} | {tps:.2f} | "
                  f"{tps / base_tps:.2f}x | {sps:.4f} | {sps / base_sps:.2f}x | {r['peak_mb']:.0f} | {peak:.4f} |")
    print()
    print("targets: decode tok/s at the largest B >= 4x B=1 (off and switch); peak RSS switch/off <= 1.02 at each B")


def _round_over_floor(timings, round_marks, n_layers) -> float:
    """Median over rounds of t_round / (2·t_lm_head + 2·t_layer), each round against the
    one-token forward that produced its logits (the first round, after the prefill, is left out)."""
    ratios = []
    for t_round, (n_layer_calls, n_lm_calls) in zip(timings["round"], round_marks):
        layers = timings["layer"][n_layer_calls - n_layers:n_layer_calls]
        if n_lm_calls < 2 or len(layers) < n_layers:
            continue
        ratios.append(t_round / (2 * timings["lm_head"][n_lm_calls - 1] + 2 * statistics.median(layers)))
    return statistics.median(ratios) if ratios else float("nan")


def _count_ops(args, model, inputs, timings) -> dict:
    """Tensor operations dispatched per round and per decode token, counted with a dispatch mode
    over a short separate run (the mode's Python overhead must not reach the timed run): all of
    them, and the kernels alone (views and other metadata-only operations left out; on a GPU each
    kernel is a launch)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import torch

    from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
    from vreason.controller import ValueController

    _METADATA_OPS.update({torch.ops.aten._unsafe_view.default, torch.ops.aten.split.Tensor})

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0
            self.kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            self.kernels += not (func.is_view or func in _METADATA_OPS)
            return func(*args, **(kwargs or {}))

    counter = OpCounter()
    marks: dict[str, list] = {"round": [], "forward": []}
    timed_round = ValueController.round

    def counted_round(self, *a, **k):
        before = (counter.count, counter.kernels)
        out = timed_round(self, *a, **k)
        marks["round"].append((counter.count - before[0], counter.kernels - before[1]))
        return out

    def pre(*_a, **_k):
        marks["forward"].append((counter.count, counter.kernels))

    def post(*_a, **_k):
        start = marks["forward"][-1]
        marks["forward"][-1] = (counter.count - start[0], counter.kernels - start[1])

    ValueController.round = counted_round
    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    saved = {k: list(v) for k, v in timings.items()}
    try:
        n = 2 * args.every_k + 1
        with counter:
            controller = ControllerConfig(mode=args.mode, every_k=args.every_k, steps=args.steps)
            result = VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=n)).generate(**inputs)
    finally:
        ValueController.round = timed_round
        for h in handles:
            h.remove()
        timings.update(saved)
    out = {}
    for i, key in enumerate(("ops", "kernels")):
        rounds = [r[i] for r in marks["round"]]
        total = (counter.count, counter.kernels)[i]
        # Everything but the prefill's forward and the rounds, per generated token.
        out[f"{key}_token"] = (total - marks["forward"][0][i] - sum(rounds)) / result.num_new_tokens
        out[f"{key}_round"] = statistics.median(rounds) if rounds else 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--every-k", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--side", type=int, default=448, help="frame side in pixels (448 px: 32x32 patches)")
    parser.add_argument("--batch", action="store_true", help="batched decoding: batch sizes side by side")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (single-sample runs)")
    parser.add_argument("--worker", dest="mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-worker", dest="batch_mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--processor-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_mode is not None:
        args.mode = args.batch_mode
        print(json.dumps(batch_worker(args)))
        return
    if args.batch:
        batch_main(args)
        return
    if args.mode is not None:
        print(json.dumps(worker(args)))
        return

    from vreason.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        # Only the processor (tokenizer, chat template, video resizing) is taken from this folder.
        pixels = args.side * args.side
        build_tiny_model(Path(tmp) / "proc", seed=0, video_max_pixels=pixels, video_min_pixels=pixels)
        rows = {}
        runs = [("off", "off", args.steps), ("switch", "switch", args.steps)]
        if args.steps == 1:
            runs.append(("switch steps=2", "switch", 2))
        for label, mode, steps in runs:
            cmd = [sys.executable, __file__, "--worker", mode, "--processor-dir", str(Path(tmp) / "proc"),
                   "--new-tokens", str(args.new_tokens), "--every-k", str(args.every_k), "--steps", str(steps),
                   "--frames", str(args.frames), "--side", str(args.side), "--device", args.device]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows[label] = json.loads(out.stdout.strip().splitlines()[-1])

    off, sw = rows["off"], rows["switch"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs "
          f"(load average now {os.getloadavg()[0]:.2f}: rerun when quieter if it is well above 1); bfloat16 weights")
    if args.device != "cpu":
        import torch

        print(f"device: {args.device} ({torch.cuda.get_device_name(torch.device(args.device))}); the peak columns are "
              "GPU memory (reserved / allocated by generate), component timings synchronize the device")
    print(f"model: Qwen2.5-VL-7B text shapes, {SHAPES['num_hidden_layers']} decoder layers, random weights; "
          f"prompt {off['prompt_tokens']} tokens of which {off['video_tokens']} video; {off['new_tokens']} new tokens; "
          f"switch: every_k={args.every_k}, steps={args.steps}")
    print()
    print("| mode | prefill s | s/token | t_layer ms | t_lm_head ms | t_round ms | rounds | ops (kernels) / round "
          "| ops (kernels) / token | peak RSS MB (process) | peak RSS MB (generate) | load avg after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['prefill_s']:.2f} | {r['t_token']:.4f} | {1e3 * r['t_layer']:.2f} | {1e3 * r['t_lm_head']:.2f} | "
              f"{1e3 * r['t_round']:.2f} | {r['rounds']} | {r['ops_round']:.0f} ({r['kernels_round']:.0f}) "
              f"| {r['ops_token']:.0f} ({r['kernels_token']:.0f}) "
              f"| {r['peak_process_mb']:.0f} | {r['peak_generate_mb']:.0f} | {r['load']:.2f} |")
    print()
    print(f"round vs its floor, t_round / (2*t_lm_head + 2*t_layer), median over rounds, each against the forward "
          f"just before it: {sw['round_over_floor']:.3f}   target <= 1.2")
    if "switch steps=2" in rows:
        s2 = rows["switch steps=2"]
        print(f"steps=2, same measure: {s2['round_over_floor']:.3f}; the second step costs "
              f"{s2['round_over_floor'] - sw['round_over_floor']:.3f} floors (one tail + one lm_head fwd+bwd "
              "<= 2*t_lm_head + 2*t_layer: target <= 1.0)")
    print(f"ops dispatched (kernels): {off['ops_token']:.0f} ({off['kernels_token']:.0f}) per plain decode token (off), "
          f"{sw['ops_round']:.0f} ({sw['kernels_round']:.0f}) per round (switch)")
    print()
    n_layers = SHAPES["num_hidden_layers"]
    mem = sw["peak_process_mb"] / off["peak_process_mb"]
    mem_gen = sw["peak_generate_mb"] / off["peak_generate_mb"]
    print(f"peak RSS switch/off: {mem:.4f} (process), {mem_gen:.4f} (generate call)   target <= 1.02")
    print(f"measured at {n_layers} layers: s/token switch/off = {sw['t_token'] / off['t_token']:.3f}")
    print("28-layer overhead = (t_rest + 28*t_layer + t_round/every_k) / (t_rest + 28*t_layer), "
          f"t_rest = s/token without rounds - {n_layers}*t_layer")
    # Primary: every component from the switch process, measured under the same machine load;
    # the second line takes t_layer and t_rest from the off process instead.
    for label, r in (("switch process", sw), ("off process t_layer/t_rest", off)):
        t_layer = r["t_layer"]
        t_rest = r["t_token_without_rounds"] - n_layers * t_layer
        base = t_rest + FULL_LAYERS * t_layer
        ratio = (base + sw["t_round"] / args.every_k) / base
        print(f"  [{label}] ({1e3 * t_rest:.1f} + 28*{1e3 * t_layer:.2f} + {1e3 * sw['t_round']:.1f}/{args.every_k}) / "
              f"({1e3 * t_rest:.1f} + 28*{1e3 * t_layer:.2f}) = {ratio:.3f}   target <= 1.10")


if __name__ == "__main__":
    main()
