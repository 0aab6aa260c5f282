"""`VReasonGenerator`: prefill, Lite pruning, and the decode loop with entropy switching and the
test-time controller (docs/method.md §2; README, "Using it").

With Lite (`prune_ratio` > 0) the cache is pruned right after prefill and the last prompt token
is run again over the pruned cache (`pruning.py`), so every new token sees the pruned cache.

Per generated token k (k = 0 is the token after the prompt):
1. `H_k = ops.entropy(z_k)` of the model's logits; EMA, running peak and α (`switching.py`).
2. If the controller is on and its schedule says so (`controller.due(k)`: k = 0, every_k,
   2·every_k, ...), `steps` Adam steps on ΔV (`controller.py`); the
   updated values go into the cache and z_k is recomputed.
3. Token k is chosen from the (recomputed) logits (`sampling.py`); generation stops after an eos
   token of the generation config (kept in `sequences`, as `generate` does) or after
   `max_new_tokens`. Otherwise the token is fed back with its explicit position ids.

The loop holds everything on the model's device; the one host sync per token is the eos check,
as in transformers' `generate`. Traces are returned as CPU tensors.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vreason import ops
from vreason.config import ControllerConfig, DecodeConfig
from vreason.controller import ValueController
from vreason.models import adapter_for
from vreason.pruning import num_pruned, prune_video_tokens, rerun_last_prompt_token
from vreason.sampling import TokenSampler
from vreason.switching import EntropySwitch

__all__ = ["VReasonGenerator", "GenerationResult"]


@dataclass
class GenerationResult:
    """One sample's output. Per-token traces are 1-D CPU tensors of length `num_new_tokens`.

    sequences: `[1, prompt_length + num_new_tokens]` int64 (CPU), prompt then new tokens.
    entropy: H_k of the model's logits before token k's round (float32): what EMA and α use.
    entropy_after: entropy of the distribution token k was drawn from (after the round; equal to
        `entropy` where no round ran).
    ema: E_k (float32). alpha: α_k as int8 ±1 (in `off` mode the switch rule's α, informational).
    updated: bool, a round ran at token k.
    skipped_rounds: Adam steps the numerical guard skipped (a non-finite loss or gradient), so with
        `steps=1` the number of skipped rounds; ΔV kept its last good value each time.
    stop_reason: "eos" or "max_new_tokens".
    num_video_tokens / num_video_tokens_kept: video tokens in the prompt / left after Lite.
    """

    sequences: torch.Tensor
    entropy: torch.Tensor
    entropy_after: torch.Tensor
    ema: torch.Tensor
    alpha: torch.Tensor
    updated: torch.Tensor
    num_new_tokens: int
    prompt_length: int
    skipped_rounds: int
    stop_reason: str
    num_video_tokens: int
    num_video_tokens_kept: int


class VReasonGenerator:
    """Generate with V-Reason on a Qwen2.5-VL / Qwen2-VL model (batch size 1).

    The model's parameters are frozen here (`requires_grad_(False)`): the controller never needs
    a weight gradient and frozen weights keep autograd from recording anything for them.
    """

    def __init__(self, model: torch.nn.Module, controller: ControllerConfig | None = None, decode: DecodeConfig | None = None):
        self.model = model
        self.adapter = adapter_for(model)
        self.controller_config = controller if controller is not None else ControllerConfig()
        self.decode_config = decode if decode is not None else DecodeConfig()
        model.requires_grad_(False)

    @torch.no_grad()
    def generate(self, seed: int | None = None, **inputs) -> GenerationResult:
        """Generate for one sample given the processor's outputs as keywords.

        seed: overrides `DecodeConfig.seed` for this sample's sampling generator (e.g. a
        per-sample seed); unused with greedy decoding.
        """
        adapter = self.adapter
        cfg, dcfg = self.controller_config, self.decode_config
        if seed is not None:
            dcfg = dataclasses.replace(dcfg, seed=int(seed))
        inputs = adapter.prepare_inputs(inputs)
        prompt = inputs["input_ids"]
        device = prompt.device
        control = cfg.mode != "off" and cfg.steps > 0

        capture = adapter.capture_last_layer_input() if control else None
        try:
            prefill = adapter.prefill(inputs)
            cache = prefill.cache
            n_video = int(prefill.video_positions.numel())
            video_index = prefill.video_positions
            logits = prefill.logits
            if num_pruned(n_video, cfg.prune_ratio) > 0:
                video_index = prune_video_tokens(adapter, cache, prefill.video_positions, cfg.prune_ratio)[-1]
                logits = rerun_last_prompt_token(adapter, cache, prompt, prefill.next_position_ids - 1)
            controller = ValueController(adapter, cfg, cache, video_index) if control else None
            switch = EntropySwitch(cfg.mode, cfg.ema_beta, device)
            sampler = TokenSampler(dcfg, device, prompt_ids=prompt[0], vocab_size=logits.shape[-1])

            max_new = dcfg.max_new_tokens
            tokens = torch.zeros(max_new, dtype=torch.int64, device=device)
            entropy = torch.zeros(max_new, dtype=torch.float32, device=device)
            entropy_after = torch.zeros_like(entropy)
            ema_trace = torch.zeros_like(entropy)
            alpha_trace = torch.zeros_like(entropy)
            updated = torch.zeros(max_new, dtype=torch.bool, device=device)
            eos = set(adapter.eos_token_ids)

            next_positions = prefill.next_position_ids
            stop_reason = "max_new_tokens"
            num_new = 0
            for k in range(max_new):
                h = ops.entropy(logits).reshape(())
                ema, alpha = switch.update(h)
                entropy[k], ema_trace[k], alpha_trace[k] = h, ema, alpha
                if control and controller.due(k):
                    logits = controller.round(capture.latest, cache, logits, alpha)
                    entropy_after[k] = ops.entropy(logits).reshape(())
                    updated[k] = True
                else:
                    entropy_after[k] = h
                token = sampler(logits)
                tokens[k] = token[0]
                num_new = k + 1
                if int(token[0]) in eos:
                    stop_reason = "eos"
                    break
                if num_new == max_new:
                    break
                logits = adapter.decode_step(token, cache, next_positions + k)
        finally:
            if capture is not None:
                capture.remove()

        n = num_new
        sequences = torch.cat([prompt[0], tokens[:n]]).unsqueeze(0).cpu()
        return GenerationResult(
            sequences=sequences,
            entropy=entropy[:n].cpu(),
            entropy_after=entropy_after[:n].cpu(),
            ema=ema_trace[:n].cpu(),
            alpha=alpha_trace[:n].to(torch.int8).cpu(),
            updated=updated[:n].cpu(),
            num_new_tokens=n,
            prompt_length=int(prompt.shape[1]),
            skipped_rounds=int(controller.skipped) if controller is not None else 0,
            stop_reason=stop_reason,
            num_video_tokens=n_video,
            num_video_tokens_kept=int(video_index.numel()),
        )
