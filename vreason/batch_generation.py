"""V-Reason over a left-padded batch of samples: one prefill, one decode loop, B independent
samples (`VReasonGenerator.generate_batch`).

Every row is the sample it would be alone (`generation.py`): its own video tokens, Lite
(`batch_cache.py`), ΔV, Adam state and guard (`batch_controller.py`), EMA, running peak and α
(`switching.py`, element-wise), every-k schedule, sampling generator (seeded per sample as at
batch size 1, so a sample's tokens do not depend on its batch) and eos stop. The rows share the
model's forward passes, a round's tensor operations, and the host sync of the eos check.

All rows start decoding together, so generated token k is the same k for every row still
running: `controller.due(k)` is one host-side decision for the batch, and a round updates every
running row. A row that stops (eos) leaves the batch before the next decode step: its cache rows
and all its per-sample state are dropped (`index_select`), so it costs no more work.

The wall-clock budget (`max_seconds`) is the batch's: all rows still running stop together with
`stop_reason="time"` once it is spent (**ours**: their generation is one shared computation).
"""
from __future__ import annotations

import dataclasses
import time

import torch

from vreason import ops
from vreason.batch_cache import keep_rows, prune_batch, rerun_last_prompt_tokens
from vreason.batch_controller import BatchValueController
from vreason.config import ControllerConfig, DecodeConfig
from vreason.models.adapter import DecoderAdapter
from vreason.pruning import num_pruned
from vreason.sampling import TokenSampler
from vreason.switching import EntropySwitch

__all__ = ["BatchRun"]


class BatchRun:
    """One batch's generation: `BatchRun(adapter, controller, decode, seeds, deadline).run(inputs)`
    returns the rows' `(tokens, traces, facts)` for `generation.py` to turn into results."""

    def __init__(self, adapter: DecoderAdapter, cfg: ControllerConfig, dcfg: DecodeConfig, seeds, deadline) -> None:
        self.adapter, self.cfg, self.dcfg, self.seeds, self.deadline = adapter, cfg, dcfg, seeds, deadline

    def _samplers(self, prompt: torch.Tensor, lengths: list[int], vocab: int) -> list[TokenSampler]:
        samplers = []
        for row, length in enumerate(lengths):
            seed = self.seeds[row] if self.seeds is not None else None
            decode = self.dcfg if seed is None else dataclasses.replace(self.dcfg, seed=int(seed))
            samplers.append(TokenSampler(decode, prompt.device, prompt_ids=prompt[row, prompt.shape[1] - length:], vocab_size=vocab))
        return samplers

    @torch.no_grad()
    def run(self, inputs: dict) -> list[dict]:
        adapter, cfg, dcfg = self.adapter, self.cfg, self.dcfg
        inputs = adapter.prepare_batch(inputs)
        prompt = inputs["input_ids"]
        rows, device = prompt.shape[0], prompt.device
        if self.seeds is not None and len(self.seeds) != rows:
            raise ValueError(f"{len(self.seeds)} seeds for a batch of {rows} samples: give one per sample")
        control = cfg.mode != "off" and cfg.steps > 0
        capture = adapter.capture_last_layer_input() if control else None
        try:
            prefill = adapter.prefill_batch(inputs)
            cache, mask, logits = prefill.cache, prefill.attention_mask, prefill.logits
            lengths = [int(n) for n in mask.sum(-1).tolist()]
            video = prefill.visual_positions
            n_video = [int(v.numel()) for v in video]
            if any(num_pruned(n, cfg.prune_ratio) > 0 for n in n_video):
                mask, video = prune_batch(adapter, cache, mask, video, cfg.prune_ratio)
                logits = rerun_last_prompt_tokens(adapter, cache, mask, prompt, prefill.next_position_ids - 1)
            n_kept = [int(v.numel()) for v in video]
            controller = BatchValueController(adapter, cfg, cache, video) if control else None
            switch = EntropySwitch(cfg.mode, cfg.ema_beta, device, batch=True)
            samplers = self._samplers(prompt, lengths, logits.shape[-1])
            one_argmax = not dcfg.do_sample and dcfg.repetition_penalty == 1.0

            max_new = dcfg.max_new_tokens
            # [token k, row]: writing token k for the running rows is one index_copy_ per trace.
            tokens = torch.zeros(max_new, rows, dtype=torch.int64, device=device)
            traces = {name: torch.zeros(max_new, rows, dtype=torch.float32, device=device)
                      for name in ("entropy", "entropy_after", "ema", "alpha")}
            updated = torch.zeros(max_new, rows, dtype=torch.bool, device=device)
            skipped = torch.zeros(rows, dtype=torch.int64, device=device)
            eos = set(adapter.eos_token_ids)
            running = list(range(rows))  # sample index of each row still in the batch
            running_t = torch.arange(rows, device=device)
            positions = prefill.next_position_ids
            num_new, stop = [0] * rows, ["max_new_tokens"] * rows
            for k in range(max_new):
                h = ops.entropy(logits)
                ema, alpha = switch.update(h)
                for name, value in (("entropy", h), ("ema", ema), ("alpha", alpha)):
                    traces[name][k].index_copy_(0, running_t, value.float())
                if control and controller.due(k):
                    controller.set_attention_mask(mask)
                    logits = controller.round(capture.latest, cache, logits, alpha)
                    traces["entropy_after"][k].index_copy_(0, running_t, ops.entropy(logits).float())
                    updated[k].index_fill_(0, running_t, True)
                else:
                    traces["entropy_after"][k].index_copy_(0, running_t, h.float())
                if one_argmax:
                    token = torch.argmax(logits.to(torch.float32), dim=-1)
                else:
                    token = torch.cat([samplers[sample](logits[j : j + 1]) for j, sample in enumerate(running)])
                tokens[k].index_copy_(0, running_t, token)
                chosen = token.tolist()  # the one host sync per token: the eos check
                done = [j for j, t in enumerate(chosen) if t in eos]
                for j, sample in enumerate(running):
                    num_new[sample] = k + 1
                    if j in done:
                        stop[sample] = "eos"
                if k + 1 == max_new:
                    break
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    for j, sample in enumerate(running):
                        if j not in done:
                            stop[sample] = "time"
                    break
                if done:
                    stay = [j for j in range(len(running)) if j not in done]
                    if controller is not None:
                        gone = torch.tensor(done, device=device)
                        skipped.index_copy_(0, running_t.index_select(0, gone), controller.skipped.index_select(0, gone))
                    if not stay:
                        break
                    keep = torch.tensor(stay, device=device)
                    keep_rows(adapter, cache, keep)
                    mask, positions, token = mask.index_select(0, keep), positions.index_select(1, keep), token.index_select(0, keep)
                    switch.keep(keep)
                    if controller is not None:
                        controller.keep(keep)
                    running, running_t = [running[j] for j in stay], running_t.index_select(0, keep)
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
                logits = adapter.decode_step(token.view(-1, 1), cache, positions + k, attention_mask=mask)
            if controller is not None and running:
                skipped.index_copy_(0, running_t, controller.skipped)
        finally:
            if capture is not None:
                capture.remove()

        cpu = {name: t.cpu() for name, t in traces.items()}
        tokens, updated, skipped, prompt = tokens.cpu(), updated.cpu(), skipped.cpu(), prompt.cpu()
        out = []
        for row in range(rows):
            n, length = num_new[row], lengths[row]
            out.append(dict(
                sequences=torch.cat([prompt[row, prompt.shape[1] - length:], tokens[:n, row]]).unsqueeze(0),
                entropy=cpu["entropy"][:n, row].clone(), entropy_after=cpu["entropy_after"][:n, row].clone(),
                ema=cpu["ema"][:n, row].clone(), alpha=cpu["alpha"][:n, row].to(torch.int8),
                updated=updated[:n, row].clone(), num_new_tokens=n, prompt_length=length,
                skipped_rounds=int(skipped[row]), stop_reason=stop[row],
                num_video_tokens=n_video[row], num_video_tokens_kept=n_kept[row],
                lite_layers=len(adapter.kv_layers()) if n_kept[row] < n_video[row] else 0, num_layers=adapter.num_layers,
            ))
        return out
