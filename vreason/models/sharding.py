"""Layer sharding for models larger than one GPU (`--model.device_map auto`, accelerate).

`device_map="auto"` is accelerate's balanced placement of whole decoder layers over the visible
GPUs under a per-device memory cap (`max_memory`), with one change (**ours**): everything the
generator and the controller touch between two forwards sits on one device, the "main" one (the
token embedding's, normally GPU 0): the embedding, the text model's rotary embedding, the last
two decoder layers, the final norm and the lm_head. Then the prompt, the logits, the sampler's
state, the last layer's captured input (the second-to-last layer's output) and its queries, the
controller's tail and the lm_head all meet on that device with no copy in the decode loop, while
each layer's cache lives where the layer does. Their size is taken off the main device's cap
before accelerate places the rest, so the cap still holds.

An explicit `device_map` (a dict of module name → device, accelerate's format) is used as given.
Either way the controller calls the last layer, the final norm and the lm_head itself, outside
accelerate's weight-loading hooks, so those must not be offloaded (`disk`, or `cpu` while GPUs
run the model) and must share a device: `check_placement` says so in one line after loading.
"""
from __future__ import annotations

import torch

__all__ = ["plan_device_map", "check_placement", "controller_modules"]

_TEXT = "model.language_model"


def controller_modules(num_layers: int) -> list[str]:
    """Module names the controller and generator use between forwards (all families' layout)."""
    return [f"{_TEXT}.embed_tokens", f"{_TEXT}.rotary_emb", f"{_TEXT}.layers.{num_layers - 2}",
            f"{_TEXT}.layers.{num_layers - 1}", f"{_TEXT}.norm", "lm_head"]


def _parse_memory(value) -> int:
    from accelerate.utils import convert_file_size_to_int

    return value if isinstance(value, int) else convert_file_size_to_int(str(value))


def _max_memory(max_memory) -> dict | None:
    """A cap for every visible GPU (a size such as "70GiB"), or accelerate's own dict."""
    if max_memory is None or isinstance(max_memory, dict):
        return max_memory
    if torch.cuda.is_available():
        return {i: max_memory for i in range(torch.cuda.device_count())}
    return {"cpu": max_memory}


def _split_to(device_map: dict, model: torch.nn.Module, name: str, main) -> None:
    """Refine `device_map` until `name` is a key of its own: an ancestor entry is replaced by its
    direct children, on the ancestor's device, and its own parameters (e.g. LLaVA-OneVision's
    `image_newline`), on `main`: once split, the ancestor's forward runs without a hook that
    would load them."""
    while name not in device_map:
        ancestor = max((k for k in device_map if k == "" or name.startswith(k + ".")), key=len, default=None)
        if ancestor is None:
            raise ValueError(f"device_map places no module holding {name}")
        device = device_map.pop(ancestor)
        module = model.get_submodule(ancestor)
        prefix = f"{ancestor}." if ancestor else ""
        for child, _ in module.named_children():
            device_map[prefix + child] = device
        for param, _ in module.named_parameters(recurse=False):
            device_map[prefix + param] = main


def plan_device_map(config, dtype: torch.dtype, max_memory=None) -> dict:
    """An explicit device map for `device_map="auto"` (see the module docstring)."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import compute_module_sizes, get_max_memory
    from transformers import AutoModelForImageTextToText

    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    num_layers = len(model.get_submodule(f"{_TEXT}.layers"))
    if num_layers < 2:
        raise ValueError("device_map auto needs a text model of at least two decoder layers")
    keep = controller_modules(num_layers)
    memory = get_max_memory(_max_memory(max_memory))
    main = next(iter(memory))  # GPU 0 where there are GPUs, else "cpu"
    sizes = compute_module_sizes(model, dtype=dtype)
    reserved = sum(sizes.get(name, 0) for name in keep)
    budget = dict(memory)
    budget[main] = max(0, _parse_memory(budget[main]) - reserved)
    device_map = dict(infer_auto_device_map(model, max_memory=budget, dtype=dtype,
                                            no_split_module_classes=model._no_split_modules))
    for name in keep:
        _split_to(device_map, model, name, main)
        device_map[name] = main
    return device_map


def check_placement(model: torch.nn.Module) -> None:
    """ValueError (one line) unless the modules the controller calls directly (the last decoder
    layer, the final norm, the lm_head) hold real weights, all on one device."""
    text = model.get_submodule(_TEXT)
    parts = ((f"the last decoder layer ({_TEXT}.layers.{len(text.layers) - 1})", text.layers[-1]),
             (f"the final norm ({_TEXT}.norm)", text.norm), ("lm_head", model.lm_head))
    devices = set()
    for name, module in parts:
        if any(p.device.type == "meta" for p in module.parameters()):
            raise ValueError(f"{name} is offloaded by the device_map: the controller calls it directly, so keep it "
                             "on a device (device_map auto does)")
        devices |= {p.device for p in module.parameters()}
    if len(devices) > 1:
        raise ValueError(f"the last decoder layer, the final norm and lm_head are spread over {sorted(map(str, devices))}: "
                         "the controller needs them on one device (device_map auto does)")
