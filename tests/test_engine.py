"""The one decode engine: `generate` is `generate_samples([s])[0]` bit for bit; a controller round
adds no host sync and writes nothing from the host; Lite and row compaction index each layer's
cache on that cache's device (a fake placement: one layer's cache on `meta`)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.controller import ValueController
from vreason.models import adapter_for
from vreason.models.adapter import DecoderAdapter
from vreason.models.tiny import build_tiny_model
from vreason.pruning import prune_video_tokens
from inputs import video_inputs

TRACES = ("sequences", "entropy", "entropy_after", "ema", "alpha", "updated")
FACTS = ("num_new_tokens", "prompt_length", "skipped_rounds", "stop_reason", "num_video_tokens",
         "num_video_tokens_kept", "lite_layers", "num_layers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return vreason.load_model(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=3, num_hidden_layers=3), device="cpu")


# Every mode, Lite, steps 1–2, every_k 1–3 (and sampling with a repetition penalty).
CASES = {
    "off k1": dict(mode="off", every_k=1),
    "switch k1 s1": dict(mode="switch", every_k=1, steps=1, lr=0.05),
    "switch k2 s2 lite": dict(mode="switch", every_k=2, steps=2, lr=0.05, prune_ratio=0.5),
    "minimize k3 s1 lite": dict(mode="minimize", every_k=3, steps=1, lr=0.1, prune_ratio=0.5),
    "maximize k2 s2": dict(mode="maximize", every_k=2, steps=2, lr=0.1),
    "switch k3 s2 lite sampled": dict(mode="switch", every_k=3, steps=2, lr=0.05, prune_ratio=0.5, sample=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generate_is_a_batch_of_one_bit_for_bit(tiny, case):
    model, processor = tiny
    cfg = dict(CASES[case])
    sample = cfg.pop("sample", False)
    decode = DecodeConfig(max_new_tokens=7, do_sample=sample, temperature=0.9, top_k=30, repetition_penalty=1.2)
    gen = VReasonGenerator(model, ControllerConfig(**cfg), decode)
    inputs = video_inputs(processor, seed=2)
    alone = gen.generate(seed=11, **inputs)
    for other in (gen.generate_samples([inputs], seeds=[11])[0], gen.generate_batch(seeds=[11], **inputs)[0]):
        for name in TRACES:
            assert torch.equal(getattr(other, name), getattr(alone, name)), name
        for name in FACTS:
            assert getattr(other, name) == getattr(alone, name), name
    assert alone.num_new_tokens == 7 or alone.stop_reason == "eos"
    assert bool(alone.updated.any()) == (cfg["mode"] != "off")


# ---- host syncs ------------------------------------------------------------------------------

# Ops that read a device value back to the host (a stall on a GPU) or write a host value into a
# device tensor through an index (`tensor[index] = python_scalar`).
SYNCS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero", "aten::equal",
         "aten::masked_select"}
HOST_WRITES = {"aten::index_put_", "aten::index_put"}


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs = self.host_writes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.syncs += name in SYNCS
        self.host_writes += name in HOST_WRITES
        return func(*args, **(kwargs or {}))


def test_a_round_adds_no_host_sync(tiny, monkeypatch):
    model, processor = tiny
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [model.config.get_text_config().vocab_size + 5]  # never: both runs make 8 tokens
    try:
        inputs = video_inputs(processor, seed=1)
        totals = {}
        for mode in ("off", "switch"):
            with Count() as count:
                res = VReasonGenerator(model, ControllerConfig(mode=mode, every_k=1, steps=2),
                                       DecodeConfig(max_new_tokens=8)).generate(**inputs)
            assert res.num_new_tokens == 8
            totals[mode] = count.syncs
        assert totals["switch"] <= totals["off"]
        # Inside the rounds themselves: no sync, no write of a host value, at all.
        inside = Count()
        real = ValueController.round

        def counted(self, *args, **kwargs):
            with inside:
                return real(self, *args, **kwargs)

        monkeypatch.setattr(ValueController, "round", counted)
        samples = [video_inputs(processor, seed=s, frames=f) for s, f in ((1, 4), (2, 2))]
        res = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, prune_ratio=0.5),
                               DecodeConfig(max_new_tokens=4)).generate_samples(samples)
        assert all(r.updated.all() for r in res)
        assert inside.syncs == 0 and inside.host_writes == 0
    finally:
        model.generation_config.eos_token_id = saved


# ---- device placement ------------------------------------------------------------------------

class OneLayerElsewhere:
    """The adapter with layer 0's cache on another device (`meta`: shapes only), as a device_map
    puts each layer's cache on its layer's device; positions and rows stay on the main device."""

    def __init__(self, adapter, cache):
        self.adapter, self.num_layers = adapter, adapter.num_layers
        keys, values = adapter.cache_kv(cache, 0)
        adapter.set_cache_kv(cache, 0, keys.to("meta"), values.to("meta"))

    def kv_layers(self):
        return self.adapter.kv_layers()

    def cache_kv(self, cache, layer):
        return self.adapter.cache_kv(cache, layer)

    def set_cache_kv(self, cache, layer, keys, values):
        self.adapter.set_cache_kv(cache, layer, keys, values)


class SameDevice(TorchDispatchMode):
    """Raises where an op mixes tensors of two devices (other than a move), as CUDA does between
    two GPUs; the CPU would let `meta` tensors take CPU indices."""

    MOVES = {"aten::_to_copy", "aten::copy_", "aten::to", "aten::lift_fresh"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name not in self.MOVES:
            flat = torch.utils._pytree.tree_leaves((args, kwargs or {}))
            devices = {t.device for t in flat if isinstance(t, torch.Tensor) and t.dim() > 0}
            if len(devices) > 1:
                raise RuntimeError(f"{func._schema.name} mixes devices {sorted(map(str, devices))}")
        return func(*args, **(kwargs or {}))


def test_lite_and_row_compaction_index_each_cache_on_its_own_device(tiny):
    model, processor = tiny
    adapter = adapter_for(model)
    samples = [video_inputs(processor, seed=s, frames=f) for s, f in ((1, 4), (2, 2))]
    with torch.no_grad():
        plain = adapter.prefill_batch(adapter.prepare_batch(adapter.collate_inputs(samples)))
        placed = adapter.prefill_batch(adapter.prepare_batch(adapter.collate_inputs(samples)))
    elsewhere = OneLayerElsewhere(adapter, placed.cache)
    mask, kept = prune_video_tokens(adapter, plain.cache, plain.visual_positions, 0.5, plain.attention_mask)
    with SameDevice():
        mask_placed, kept_placed = prune_video_tokens(elsewhere, placed.cache, placed.visual_positions, 0.5,
                                                      placed.attention_mask)
    assert torch.equal(mask_placed, mask)
    assert adapter.cache_kv(placed.cache, 0)[1].device.type == "meta"
    assert adapter.cache_kv(placed.cache, 0)[1].shape == adapter.cache_kv(plain.cache, 0)[1].shape
    for layer in range(1, adapter.num_layers):  # the layers on the main device: as unsplit
        assert torch.equal(adapter.cache_kv(placed.cache, layer)[1], adapter.cache_kv(plain.cache, layer)[1])
        assert all(torch.equal(a, b) for a, b in zip(kept_placed[layer], kept[layer]))
    with SameDevice():
        DecoderAdapter.keep_cache_rows(elsewhere, placed.cache, torch.tensor([1]))
    adapter.keep_cache_rows(plain.cache, torch.tensor([1]))
    assert adapter.cache_kv(placed.cache, 0)[0].shape[0] == 1
    assert torch.equal(adapter.cache_kv(placed.cache, 2)[0], adapter.cache_kv(plain.cache, 2)[0])


# ---- the round's products over a reduced-precision cache ----------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_product_keeps_float32_accuracy_without_widening_the_cache(dtype):
    """The CUDA composition (`mixed.split_product`), with the GPU's product emulated exactly
    (products of `dtype` values summed in float32), against float64: float32-level accuracy,
    where rounding the float32 rows once to `dtype` would not be."""
    from vreason.mixed import f32_product, split_product

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4, 7, 128, generator=g)
    b = (torch.randn(2, 4, 128, 600, generator=g)).to(dtype)
    want = a.double() @ b.double()
    seen = []

    def emulated(x, y):
        seen.append((x.dtype, y.dtype))
        return x.float() @ y.float()

    got = split_product(a, b, emulated)
    assert seen == [(dtype, dtype)]  # one product, both operands in the cache's dtype
    scale = want.abs().max()
    assert (got.double() - want).abs().max() <= 1e-5 * scale
    assert (a.to(dtype).double() @ b.double() - want).abs().max() > 1e-4 * scale  # one rounding is not enough
    assert torch.equal(f32_product(a, b), a @ b.float())  # the CPU widens, as before
