"""`VReason`: lmms-eval's chat model interface over `VReasonGenerator.generate_samples`.

`lmms-eval --model vreason --model_args pretrained=DIR,mode=switch,lr=1e-2,every_k=2,prune_ratio=0.5,max_frames=16`
(README, "lmms-eval"). Each request's chat is turned into model inputs by the project's own path
(`vreason.data.items.model_inputs`: the project's video reader and frame sampling), so a question
asked the way `vreason predict` asks it gets the same tokens. Requests with the same generation
settings are decoded together, `batch_size` at a time (`--batch_size`), and answers are returned
in request order, each with its token counts (`traces.py`).

Several GPUs run as lmms-eval runs them: `accelerate launch -m lmms_eval ...`; lmms-eval gives
each rank its own shard of requests and gathers the results; each rank holds a whole model on its
own GPU. Weights never get a gradient, so nothing is wrapped for data parallelism.

A request that cannot run (an unreadable video, an unsupported medium, a failed generation)
answers the empty string, as lmms-eval's chat wrappers do, with its reason logged and kept in
its trace; the run goes on. `loglikelihood` and multi-round generation are refused.
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

import torch
from loguru import logger as eval_logger
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from tqdm import tqdm

from vreason.config import ControllerConfig, DecodeConfig, VideoConfig
from vreason.data.items import for_decoded_frames, model_inputs, one_line
from vreason.generation import VReasonGenerator
from vreason.lmms_eval.requests import plan_batches, project_chat
from vreason.lmms_eval.settings import decode_settings, settings_key, video_settings
from vreason.lmms_eval.stops import apply_stops, tokens_until
from vreason.lmms_eval.traces import THINK_END, TraceFile, run_metrics, summary_line, trace_record

_CONTROL, _VIDEO, _DECODE = ControllerConfig(), VideoConfig(), DecodeConfig()


class VReason(lmms):
    """V-Reason (the test-time controller on the last layer's video value cache) as lmms-eval's
    `--model vreason`. Model arguments: `pretrained` (a local model folder, `vreason.load_model`);
    the controller's `mode`, `every_k`, `steps`, `lr`, `ema_beta`, `prune_ratio`; the video's
    `max_frames` (frames sampled uniformly; with `fps`, the cap on frames at that rate),
    `max_pixels`, `min_pixels` (defaults: the Video-R1 protocol's 16 frames of at most
    256·28·28 pixels), `video_reader`, `video_timeout`, `frame_cache`; decoding defaults a request
    may override (`max_new_tokens`, `seed`, `repetition_penalty`); `dtype`, `device`,
    `device_map`, `max_memory`; `system_prompt`; `trace_dir` (per-sample traces, `traces.py`);
    `max_seconds_per_sample`. lmms-eval adds `batch_size` (`--batch_size`) and `max_batch_size`
    (unused: batches are `batch_size` requests)."""

    is_simple = False

    def __init__(self, pretrained: str, mode: str = _CONTROL.mode, every_k: int = _CONTROL.every_k,
                 steps: int = _CONTROL.steps, lr: float = _CONTROL.lr, ema_beta: float = _CONTROL.ema_beta,
                 prune_ratio: float = _CONTROL.prune_ratio, max_frames: int = _VIDEO.num_frames,
                 fps: Optional[float] = None, max_pixels: int = _VIDEO.max_pixels, min_pixels: int = _VIDEO.min_pixels,
                 video_reader: str = _VIDEO.video_reader, video_timeout: float = _VIDEO.video_timeout,
                 frame_cache: Optional[str] = None, max_new_tokens: int = _DECODE.max_new_tokens,
                 seed: int = _DECODE.seed, repetition_penalty: float = _DECODE.repetition_penalty,
                 dtype: str = "auto", device: Optional[str] = None, device_map: Optional[str] = None,
                 max_memory: Optional[str] = None, batch_size: Any = 1, max_batch_size: Any = None,
                 system_prompt: Optional[str] = None, trace_dir: Optional[str] = None,
                 max_seconds_per_sample: Optional[float] = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"vreason: unknown model_args {', '.join(sorted(unknown))}")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"vreason: batch_size must be a positive integer, got {batch_size!r}")
        from vreason import load_model

        self.controller = ControllerConfig(mode=mode, every_k=int(every_k), steps=int(steps), lr=float(lr),
                                           ema_beta=float(ema_beta), prune_ratio=float(prune_ratio))
        self.video = video_settings(max_frames, fps, max_pixels, min_pixels, video_reader, video_timeout, frame_cache)
        self.decode = DecodeConfig(max_new_tokens=int(max_new_tokens), seed=int(seed),
                                   repetition_penalty=float(repetition_penalty))
        # The process's place as lmms-eval reads it (accelerate launch and torchrun set these);
        # lmms-eval brings its own accelerator or process group to gather the ranks' results.
        self._rank, self._world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if self._world_size > 1 and device_map is not None:
            raise ValueError("vreason: device_map spreads one model over a node's GPUs: run one process per node")
        self._device = _device(device, self._world_size)
        self._model, processor = load_model(pretrained, dtype=dtype, device=None if device_map else self._device,
                                            device_map=device_map, max_memory=max_memory)
        self.processor = for_decoded_frames(processor)
        self._batch_size = int(batch_size)
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None
        self._max_seconds = None if max_seconds_per_sample is None else float(max_seconds_per_sample)
        self._generators: dict[tuple, VReasonGenerator] = {}
        self._traces = TraceFile(trace_dir)
        self._ignored: set[str] = set()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    def loglikelihood(self, requests):
        raise NotImplementedError("vreason generates answers only: loglikelihood (multiple_choice output_type) is not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("vreason answers one question per request: multi-round generation is not supported")

    # ------------------------------------------------------------------ generate_until

    def generate_until(self, requests) -> list[GenerationResult]:
        settings = [self._settings(request.args[2]) for request in requests]
        keys = [settings_key(decode, until) for decode, until in settings]
        order = [(str(r.args[4]), str(r.args[5]), _sortable(r.args[3])) for r in requests]
        names = _sample_names(requests)
        answers: list[Optional[GenerationResult]] = [None] * len(requests)
        records: list[dict] = []
        elapsed = 0.0
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="V-Reason responding")
        for batch in plan_batches(keys, order, self.batch_size):
            start = time.perf_counter()
            done = self._run_batch([requests[i] for i in batch], [names[i] for i in batch], *settings[batch[0]])
            elapsed += time.perf_counter() - start
            for i, (answer, record) in zip(batch, done):
                answers[i] = answer
                records.append(record)
                self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[2]), answer.text)
            self._traces.write([record for _, record in done], self.rank)
            bar.update(len(batch))
        bar.close()
        generated = sum(record["num_new_tokens"] for record in records)
        log_metrics(total_elapsed_time=elapsed, total_gen_tokens=generated,
                    avg_speed=generated / elapsed if elapsed > 0 else 0.0, additional_metrics=run_metrics(records))
        return answers

    def _settings(self, gen_kwargs: Optional[dict]) -> tuple[DecodeConfig, list[str]]:
        decode, until, ignored = decode_settings(gen_kwargs, self.decode)
        new = set(ignored) - self._ignored
        if new:
            eval_logger.warning(f"vreason ignores generation kwargs it has no use for: {', '.join(sorted(new))}")
            self._ignored |= new
        return decode, until

    def _run_batch(self, requests: list, names: list[str], decode: DecodeConfig, until: list[str]) -> list[tuple]:
        """The batch's requests decoded together; one `(answer, trace)` per request, in order.
        `names` key each request's sampling seed (`DecodeConfig.seed_for`)."""
        inputs, errors = [], []
        for request in requests:
            try:
                inputs.append(self._inputs(request))
                errors.append(None)
            except Exception as exc:  # this request fails alone, with its reason
                inputs.append(None)
                errors.append(one_line(exc))
        ready = [j for j, x in enumerate(inputs) if x is not None]
        seeds = [decode.seed_for(names[j]) for j in ready]
        self._synchronize()
        start = time.perf_counter()
        results = self._generate(self._generator(decode), [inputs[j] for j in ready], seeds)
        self._synchronize()
        latency = (time.perf_counter() - start) / max(len(ready), 1)
        outcome = dict(zip(ready, results))
        return [self._answer(request, outcome.get(j, errors[j]), until, latency) for j, request in enumerate(requests)]

    def _inputs(self, request) -> dict:
        _, doc_to_messages, _, doc_id, task, split = request.args
        messages = doc_to_messages(self.task_dict[task][split][doc_id])
        if self.system_prompt:
            messages = self._apply_system_prompt(messages, self.system_prompt)
        chat, media = project_chat(messages)
        inputs, _ = model_inputs(self.processor, chat, media, self.video)
        device = self._model.get_input_embeddings().weight.device  # also under a device_map
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}

    def _generator(self, decode: DecodeConfig) -> VReasonGenerator:
        """One generator per decoding setting (the model and controller are shared)."""
        key = settings_key(decode, [])
        if key not in self._generators:
            self._generators[key] = VReasonGenerator(self._model, controller=self.controller, decode=decode,
                                                     max_seconds=self._max_seconds)
        return self._generators[key]

    @staticmethod
    def _generate(generator, inputs: list[dict], seeds: list) -> list:
        """Results (or one-line reasons) for `inputs` decoded together; a batch that fails is run
        again one request at a time, so a request that fails costs only itself."""
        if not inputs:
            return []
        try:
            return generator.generate_samples(inputs, seeds=seeds)
        except Exception as exc:
            if len(inputs) == 1:
                return [one_line(exc)]
            eval_logger.warning(f"vreason: a batch of {len(inputs)} failed ({one_line(exc)[:300]}); one at a time")
        out = []
        for sample, seed in zip(inputs, seeds):
            try:
                out.extend(generator.generate_samples([sample], seeds=[seed]))
            except Exception as exc:
                out.append(one_line(exc))
        return out

    def _answer(self, request, result: Any, until: list[str], latency: float) -> tuple[GenerationResult, dict]:
        task, split, doc_id = request.args[4], request.args[5], request.args[3]
        if result is None or isinstance(result, str):
            eval_logger.warning(f"vreason {task}/{doc_id} failed: {result}")
            record = trace_record(task, split, doc_id, self.controller.mode, None, 0, None, 0.0, result or "no result")
            return GenerationResult(text="", token_counts=TokenCounts(output_tokens=0)), record
        tokens = result.sequences[0, result.prompt_length:].tolist()
        text = self._text(tokens)
        text, output_tokens = apply_stops(text, tokens, self._text, until)
        reasoning = tokens_until(tokens[:output_tokens], self._text, [THINK_END]) if THINK_END in text else None
        record = trace_record(task, split, doc_id, self.controller.mode, result, output_tokens, reasoning, latency, None)
        eval_logger.debug(summary_line(record))
        counts = TokenCounts(input_tokens=result.prompt_length, output_tokens=output_tokens, reasoning_tokens=reasoning)
        return GenerationResult(text=text, token_counts=counts), record

    def _text(self, tokens) -> str:
        # As `vreason predict` decodes its answers (VReasonModule).
        return self.processor.batch_decode(torch.tensor([list(tokens)], dtype=torch.long), skip_special_tokens=True)[0]

    def _synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)


def _device(device: Optional[str], world_size: int) -> torch.device:
    """The `device` asked for in one process; with several, each its local GPU (the CPU without)."""
    if world_size > 1:
        local = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sample_names(requests: list) -> list[str]:
    """`task/doc_id`, and for lmms-eval's repeats of a request (`--repeats`, the same request k
    times) `task/doc_id#k` from the second on: each repeat samples from its own seed."""
    seen: dict[str, int] = {}
    names = []
    for request in requests:
        name = f"{request.args[4]}/{request.args[3]}"
        k = seen.get(name, 0)
        seen[name] = k + 1
        names.append(name if k == 0 else f"{name}#{k}")
    return names


def _sortable(doc_id: Any) -> tuple:
    return (0, doc_id, "") if isinstance(doc_id, int) else (1, 0, str(doc_id))
