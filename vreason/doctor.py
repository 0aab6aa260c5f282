"""`vreason doctor`: the first command to run on a new machine, above all on a GPU.

It prints what the run will use (torch and its CUDA, the GPU, the compiled extension's kernels
and architectures, the CPU's SIMD level, the libraries), then checks on one device what the
tests check here: every compiled op against the plain-torch oracle (`vreason.ops.reference`) in
float32 and bfloat16, the CUDA backend's vecmat arithmetic run on the host (on any machine), a
tiny model's `off` decoding against transformers' `generate`, and the controller's gradient of
one `switch` round against autograd through the real last layer. The CUDA kernels are tested
without a GPU (cuda/tests, an emulation of the GPU on the host); this is where they first meet
real hardware. Exit 0 only if every check passes.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import math
import struct
import sys
import tempfile
import traceback
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import torch

VOCAB = 152_064
SIMD_NAMES = {0: "scalar", 1: "AVX2", 2: "AVX-512F"}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def fatbin_archs(library: Path) -> list[str]:
    """The GPU code in a shared library's CUDA fat binaries: `sm_XY` (machine code) and
    `compute_XY` (PTX, which the driver compiles for newer GPUs)."""
    data = library.read_bytes()
    magic = struct.pack("<I", 0xBA55ED50)
    found, i = set(), data.find(magic)
    while i != -1:
        _, header, size = struct.unpack_from("<HHQ", data, i + 4)
        j, end = i + header, i + header + size
        while j < end:
            kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, j)
            arch = struct.unpack_from("<I", data, j + 28)[0]
            found.add(f"{'compute' if kind == 1 else 'sm'}_{arch}")
            j += entry_header + entry_size
        i = data.find(magic, end)
    return sorted(found)


def environment() -> list[tuple[str, str]]:
    from vreason import ops

    rows = [("python", sys.version.split()[0]),
            ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU-only build'})")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            rows.append((f"GPU {i}", f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})"))
    else:
        rows.append(("GPU", "none visible to torch"))
    library = Path(ops._C.__file__)
    archs = ", ".join(fatbin_archs(library)) if ops.built_with_cuda() else ""
    rows.append(("vreason._C", f"CUDA kernels {'built: ' + archs if ops.built_with_cuda() else 'not built'}"))
    rows.append(("CPU SIMD", f"{SIMD_NAMES[ops._C.simd_level()]} in use (best available: "
                             f"{SIMD_NAMES[ops._C.max_simd_level()]})"))
    rows += [(name, _version(name)) for name in ("transformers", "lightning", "decord")]
    return rows


# ---- checks: each returns a detail line, or raises AssertionError with what went wrong --------

def _vreason_ops():
    """The compiled ops as registered (not the first-use guard's choice): what is checked."""
    return torch.ops.vreason


def _close(what: str, got: torch.Tensor, want: torch.Tensor, rtol: float) -> str:
    """|got − want| <= rtol·(|want| + max|want|): relative per element, with an absolute floor
    at the tensor's own scale (a gradient's entries span many decades)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float(((got - want).abs() / (rtol * (want.abs() + scale) + 1e-30)).max()) if want.numel() else 0.0
    assert not got.isnan().any() and err <= 1.0, f"{what}: off by {err:.3g}x the tolerance ({rtol:g} relative)"
    return f"{what} ok"


def _tol(dtype: torch.dtype) -> float:
    return 2 ** -7 if dtype == torch.bfloat16 else 1e-4


def check_entropy(device: torch.device, dtype: torch.dtype) -> str:
    from vreason.ops import reference

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, VOCAB, generator=gen) * 4
    z[1, torch.rand(VOCAB, generator=gen) < 0.9] = -math.inf
    z = z.to(device=device, dtype=dtype)
    g = torch.randn(3, generator=gen).to(device)
    leaf, ref_leaf = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    h = _vreason_ops().entropy.default(leaf)
    (grad,) = torch.autograd.grad(h, leaf, grad_outputs=g)
    want = reference.entropy(ref_leaf)
    (want_grad,) = torch.autograd.grad(want, ref_leaf, grad_outputs=g)
    _close("forward", h, want, 1e-4)
    _close("backward", grad, want_grad.to(dtype), _tol(dtype))
    return f"[3, {VOCAB}] forward and backward"


def check_value_update(device: torch.device, dtype: torch.dtype) -> str:
    from vreason.ops import reference

    gen = torch.Generator().manual_seed(1)
    v0, delta, g = (torch.randn(1, 4, 300, 128, generator=gen).to(device) for _ in range(3))
    delta = 0.2 * delta
    leaf, ref = delta.clone().requires_grad_(True), delta.clone().requires_grad_(True)
    v = _vreason_ops().value_update.default(v0, leaf)
    (grad,) = torch.autograd.grad(v, leaf, grad_outputs=g)
    want = reference.value_update(v0, ref)
    (want_grad,) = torch.autograd.grad(want, ref, grad_outputs=g)
    _close("forward", v, want, 1e-4)
    _close("backward", grad, want_grad, 1e-4)
    # The in-place update into a cache of this dtype (value_update itself is float32 only).
    cache = torch.randn(1, 4, 1000, 128, generator=gen).to(device=device, dtype=dtype)
    positions = torch.randperm(1000, generator=gen)[:300].to(device)
    expected = reference.value_update_(cache.clone(), positions, v0, delta)
    _vreason_ops().value_update_.default(cache, positions, v0, delta)
    _close("value_update_", cache, expected, _tol(dtype))
    return "[1, 4, 300, 128] forward, backward; value_update_ into a " + str(dtype).removeprefix("torch.") + " cache"


def _tiny_model(device: torch.device, folder: Path):
    import vreason
    from vreason.models.tiny import build_tiny_model

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a table is the output, not bars for a 1-second build
    path = build_tiny_model(folder / "tiny", seed=3, num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                            num_key_value_heads=2)
    model, processor = vreason.load_model(path, dtype="float32", device=device)
    # The check's frames are 112 px already: the video processor's per-frame cap (and its
    # notice about it) has nothing to do.
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is not None and hasattr(video_processor, "cap_pixels_per_frame"):
        video_processor.cap_pixels_per_frame = False
    return model, processor


def _video_inputs(processor, device: torch.device) -> dict:
    video = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], videos=[video], return_tensors="pt", do_sample_frames=False)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def check_off_generation(model, processor, device: torch.device) -> str:
    from vreason import ControllerConfig, DecodeConfig, VReasonGenerator

    inputs = _video_inputs(processor, device)
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=12)
    got = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=12)).generate(**inputs)
    assert torch.equal(got.sequences.cpu(), expected.cpu()), "off decoding differs from transformers' generate"
    return "12 tokens identical to transformers' generate"


def check_switch_gradient(model, processor, device: torch.device) -> str:
    """∂L/∂ΔV of the controller against autograd through the real last decoder layer, re-run on
    the current token over a cache whose video values are V(ΔV); then a `switch` generation."""
    from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
    from vreason.controller import ValueController
    from vreason.models import adapter_for
    from vreason.ops import reference

    adapter = adapter_for(model)
    inputs = adapter.prepare_inputs(_video_inputs(processor, device))
    hook = adapter.capture_last_layer_input()
    with torch.no_grad():
        pre = adapter.prefill(inputs)
    layer_input = hook.latest
    hook.remove()
    ctrl = ValueController(adapter, ControllerConfig(), pre.cache, pre.video_positions)
    alpha = torch.tensor(1.0, device=device)
    _, grad = ctrl.gradient(layer_input, pre.cache, pre.logits, alpha)

    last = adapter.num_layers - 1
    keys, values = adapter.cache_kv(pre.cache, last)
    past = copy.deepcopy(pre.cache)
    entry = past.layers[last]  # the layer appends the current token's key/value itself
    entry.keys, entry.values = keys[..., :-1, :].clone(), values[..., :-1, :].clone()
    delta = ctrl.delta.clone().requires_grad_(True)
    with torch.enable_grad():
        new_values = reference.value_update(ctrl.v0, delta)
        index = pre.video_positions.view(1, 1, -1, 1).expand(1, ctrl.v0.shape[1], -1, ctrl.v0.shape[-1])
        entry.values = entry.values.float().scatter(-2, index, new_values).to(values.dtype)
        # transformers 5.24 renamed the layers' `past_key_values` keyword to `cache`.
        cache_kw = "cache" if "cache" in inspect.signature(adapter.last_layer.forward).parameters else "past_key_values"
        out = adapter.last_layer(layer_input.hidden, attention_mask=None,
                                 position_embeddings=(layer_input.cos, layer_input.sin), use_cache=True,
                                 **{cache_kw: past})
        out = out[0] if isinstance(out, tuple) else out
        logits = model.lm_head(adapter.text_model.norm(out))[:, -1]
        loss = alpha * (math.log(logits.shape[-1]) - reference.entropy(logits.float()))
        (want,) = torch.autograd.grad(loss.sum(), delta)
    err = float((grad - want).norm() / want.norm())
    assert err <= 1e-3, f"relative error {err:.2e} against autograd"
    res = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1), DecodeConfig(max_new_tokens=4)).generate(
        **_video_inputs(processor, device))
    assert bool(res.updated.any()), "a switch generation made no ΔV update"
    return f"relative error {err:.1e} against autograd; a switch generation updates ΔV"


# ---- the command ---------------------------------------------------------------------------

def check_vecmat(device: torch.device, dtype: torch.dtype) -> str:
    from vreason.ops import reference

    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(4099, 515, generator=gen).to(device=device, dtype=dtype)
    g = torch.randn(2, 4099, generator=gen).to(device)
    _close("g @ weight", _vreason_ops().vecmat.default(g, weight), reference.vecmat(g, weight), 1e-4)
    return "[2, 4099] @ [4099, 515]"


def check_vecmat_split(dtype: torch.dtype) -> str:
    """The CUDA backend's vecmat arithmetic for a bf16/fp16 weight (`vecmat_split`), run on the
    host: a GPU-only rounding (g or the product in bf16, ~2e-3) shows on any machine."""
    from vreason.ops import reference

    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(4099, 515, generator=gen).to(dtype)
    g = torch.randn(2, 4099, generator=gen) * torch.logspace(-8, 0, 4099)[torch.randperm(4099, generator=gen)]
    _close("g @ weight", _vreason_ops().vecmat_split.default(g, weight), reference.vecmat(g, weight), 1e-4)
    return "[2, 4099] @ [4099, 515] on the host, g spanning 8 decades"


def run_checks(device: torch.device) -> list[tuple[str, str, bool, str]]:
    """(check, dtype, passed, detail) per check; a check that raises fails with its message."""
    results = []

    def run(name: str, dtype: str, fn: Callable[[], str]) -> None:
        try:
            results.append((name, dtype, True, fn()))
        except Exception as exc:  # every failure is a row of the table, not a traceback
            detail = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, AssertionError):
                traceback.print_exc(file=sys.stderr)
            results.append((name, dtype, False, " ".join(detail.split())[:160]))

    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        run("ops.entropy vs reference", name, lambda: check_entropy(device, dtype))
        run("ops.value_update vs reference", name, lambda: check_value_update(device, dtype))
        run("ops.vecmat vs reference", name, lambda: check_vecmat(device, dtype))
    for dtype in (torch.bfloat16, torch.float16):
        run("vecmat's CUDA arithmetic vs reference", str(dtype).removeprefix("torch."), lambda: check_vecmat_split(dtype))
    with tempfile.TemporaryDirectory(prefix="vreason-doctor-") as tmp:
        loaded: list = []
        run("tiny model: build and load", "float32", lambda: (loaded.extend(_tiny_model(device, Path(tmp))), "ok")[1])
        if loaded:
            model, processor = loaded
            run("off decoding vs transformers generate", "float32", lambda: check_off_generation(model, processor, device))
            run("switch round vs exact gradient", "float32", lambda: check_switch_gradient(model, processor, device))
    return results


def table(rows: Sequence[tuple[str, str, bool, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'check':<{width}} | dtype    | result | detail", f"|{'-' * (width + 2)}|----------|--------|-------"]
    lines += [f"| {n:<{width}} | {d:<8} | {'PASS' if ok else 'FAIL':<6} | {detail}" for n, d, ok, detail in rows]
    return "\n".join(lines)


def doctor(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="vreason doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to run the checks (default: cuda when a GPU is visible, else cpu)")
    try:
        opts = parser.parse_args(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    name = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        print("vreason doctor: error: --device cuda but torch sees no GPU (see the environment above)", file=sys.stderr)
        for key, value in environment():
            print(f"{key:>13}: {value}", file=sys.stderr)
        return 2
    from vreason import ops

    if name == "cuda" and not ops.built_with_cuda():
        print("vreason doctor: error: vreason._C was built without its CUDA kernels; rebuild with FORCE_CUDA=1",
              file=sys.stderr)
        return 2
    for key, value in environment():
        print(f"{key:>13}: {value}")
    device = torch.device(name)
    print(f"\nchecks on {device}:\n")
    results = run_checks(device)
    print(table(results))
    failed = sum(not ok for _, _, ok, _ in results)
    print(f"\n{len(results) - failed} of {len(results)} checks passed" + ("" if not failed else
          "; please report the failing rows with the environment above"))
    return 0 if failed == 0 else 1
