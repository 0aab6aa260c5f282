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

An explicit `device_map` (a dict of module name → device, accelerate's format) is used as given,
once checked. Either way the controller calls the last layer, the final norm and the lm_head
itself, outside accelerate's weight-loading hooks, and the generator puts the prompt, the
switch's state and the sampler's generator on the token embedding's device, where the logits
must arrive: so these four must hold real weights (not `disk`, nor `cpu` while GPUs run the
model) on one device. A map that splits them is refused in one line before any weight is loaded
(`check_device_map`; **ours**: refused, not moved, since a map given by hand is what its author
measured to fit), and `check_placement` checks the loaded model the same way.
"""
from __future__ import annotations

import torch

__all__ = ["plan_device_map", "check_device_map", "check_placement", "controller_modules"]

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


def _named_parts(num_layers: int) -> list[tuple[str, str]]:
    """(what, module name) of the modules that must share a device (see the module docstring)."""
    last = f"{_TEXT}.layers.{num_layers - 1}"
    return [(f"the token embedding ({_TEXT}.embed_tokens)", f"{_TEXT}.embed_tokens"),
            (f"the last decoder layer ({last})", last), (f"the final norm ({_TEXT}.norm)", f"{_TEXT}.norm"),
            ("lm_head", "lm_head")]


def _refuse_split(placed: list[tuple[str, set[str]]]) -> None:
    """ValueError (one line) unless every part is on exactly one real device, the same for all."""
    for what, devices in placed:
        if devices & {"disk", "meta"}:
            raise ValueError(f"{what} is offloaded by the device_map: the controller and the generator use it "
                             "directly, so keep it on a device (device_map auto does)")
    devices = sorted(set().union(*(d for _, d in placed)))
    if len(devices) > 1:
        where = "; ".join(f"{what} on {', '.join(sorted(d))}" for what, d in placed)
        raise ValueError(f"the device_map spreads over {devices} what must share one device: {where} "
                         "(the prompt, sampler and logits meet there; device_map auto does this)")


def _device_name(value) -> str:
    """accelerate's device values (0, "cuda:1", "cpu", "disk", torch.device) as one spelling."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"cuda:{value}"
    name = str(value)
    return "cuda:0" if name == "cuda" else name


def check_device_map(device_map: dict, num_layers: int) -> None:
    """ValueError (one line) for an explicit map that offloads or splits the modules the
    controller and generator use directly. A module is where its closest entry (its own or an
    ancestor's) and every entry of a submodule put it; modules the map does not place are left to
    transformers' own error."""
    placed = []
    for what, name in _named_parts(num_layers):
        above = [k for k in device_map if k in ("", name) or name.startswith(k + ".")]
        below = [k for k in device_map if k.startswith(name + ".")]
        keys = below + ([max(above, key=len)] if above else [])
        devices = {_device_name(device_map[k]) for k in keys}
        if devices:
            placed.append((what, devices))
    if placed:
        _refuse_split(placed)


def check_placement(model: torch.nn.Module) -> None:
    """ValueError (one line) unless the token embedding, the last decoder layer, the final norm and
    the lm_head of a loaded model hold real weights, all on one device."""
    num_layers = len(model.get_submodule(f"{_TEXT}.layers"))
    _refuse_split([(what, {str(p.device) for p in model.get_submodule(name).parameters()})
                   for what, name in _named_parts(num_layers)])
