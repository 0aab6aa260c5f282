"""Host-device synchronizations of a generation on a GPU, per token, `off` against `switch`.

A tiny random model (the test model's shapes) generates the same tokens twice on `cuda` under
`torch.cuda.set_sync_debug_mode("warn")`, which warns at every operation that waits for the GPU;
the warnings are counted per generated token. Decoding needs one sync per token (the eos check,
as transformers' `generate`); a round should add none, so `switch` per token should equal `off`.

    python experiments/gpu/sync_debug.py [--new-tokens 16]

Prints one table; where each sync comes from is listed under it (the first call site in vreason
of each warning's stack). Without a GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def count_syncs(generator, inputs) -> tuple[int, int, collections.Counter]:
    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchronizing" not in str(message).lower() and "sync" not in str(message).lower():
            return
        frames = [f for f in traceback.extract_stack()[:-1] if "/vreason/" in f.filename]
        sites[f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "outside vreason"] += 1

    previous = warnings.showwarning
    warnings.showwarning = record
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            result = generator.generate(**inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = previous
    return sum(sites.values()), result.num_new_tokens, sites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("sync_debug: no GPU visible to torch: nothing to count (CPU operations never wait for a device)")
        return 0
    import vreason
    from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
    from vreason.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model, processor = vreason.load_model(build_tiny_model(Path(tmp) / "m", seed=0), dtype="bfloat16", device="cuda")
    model.generation_config.eos_token_id = [model.config.get_text_config().vocab_size - 1]  # run all tokens
    frames = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way does it move?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = {k: v.cuda() for k, v in processor(text=[text], videos=[frames], return_tensors="pt",
                                                 do_sample_frames=False).items()}
    rows = {}
    for mode in ("off", "switch"):
        gen = VReasonGenerator(model, ControllerConfig(mode=mode, every_k=1), DecodeConfig(max_new_tokens=args.new_tokens))
        gen.generate(**inputs)  # warm-up: first-use checks and allocations are not the steady state
        rows[mode] = count_syncs(gen, inputs)
    print("| mode | syncs | new tokens | syncs / token |\n|---|---:|---:|---:|")
    for mode, (syncs, n, _) in rows.items():
        print(f"| {mode} | {syncs} | {n} | {syncs / max(n, 1):.2f} |")
    for mode, (_, _, sites) in rows.items():
        print(f"\n{mode}: " + ", ".join(f"{site} x{count}" for site, count in sites.most_common()))
    off, switch = (rows[m][0] / max(rows[m][1], 1) for m in ("off", "switch"))
    print(f"\nswitch/off syncs per token: {switch:.2f} / {off:.2f}" + ("" if switch <= off else "  (a round syncs)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
