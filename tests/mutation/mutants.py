"""The curated mutants of the method's core that the suite must kill (`python tests/mutation/run.py`).

Each mutant is one exact text replacement in one file under vreason/, and the test selection
that must fail when it is applied (pytest node ids or files, run with `-x -q`). A mutant whose
`old` text is no longer found fails the check too: after a refactor the list is updated by hand
(new text, same behaviour broken), never silently dropped. Keep selections small: the whole check
runs in CI. How to add one: README, "Tests".
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # exact text, must occur exactly once
    new: str
    tests: tuple[str, ...]
    why: str


SWITCHING = "vreason/switching.py"
CONTROLLER = "vreason/controller.py"
DECODE = "vreason/decode.py"
ADAM = "vreason/adam.py"
PRUNING = "vreason/pruning.py"
SAMPLING = "vreason/sampling.py"
SCORING = "vreason/scoring.py"
TAIL = "vreason/tail.py"
# Batched rows against each sample alone (float64): padding, Lite re-padding, seeds.
BATCH_EXACT = "tests/test_batch.py::test_every_row_equals_its_sample_alone_float64"
FAMILY_BATCH = "tests/test_family_batch.py::"
QWEN3_5 = "vreason/models/qwen3_5.py"
LLAVA_ONEVISION = "vreason/models/llava_onevision.py"
# The controller-round oracle (float32; bf16 runs in the suite): exact ΔV, cache and logits.
ORACLE_F32 = "tests/test_controller_oracle.py::test_round_equals_torch_adam_on_brute_force_gradients[1.0-float32]"

MUTANTS: list[Mutant] = [
    # ---- switching rule -----------------------------------------------------------------------
    Mutant("switch-at-peak-explores-less", SWITCHING,
           "torch.where(self.ema < self.peak, -1.0, 1.0)", "torch.where(self.ema <= self.peak, -1.0, 1.0)",
           ("tests/test_switching.py",), "at the running peak α must be +1 (explore)"),
    Mutant("ema-weights-swapped", SWITCHING,
           "self.ema = self.beta * self.ema + (1.0 - self.beta) * h",
           "self.ema = (1.0 - self.beta) * self.ema + self.beta * h",
           ("tests/test_switching.py",), "E_k = β·E_{k−1} + (1−β)·H_k"),
    Mutant("peak-tracks-raw-entropy", SWITCHING,
           "torch.maximum(self.peak, self.ema)", "torch.maximum(self.peak, h)",
           ("tests/test_switching.py",), "the peak is the running max of the EMA, not of H"),
    # ---- scoring ------------------------------------------------------------------------------
    Mutant("mra-threshold-inclusive", SCORING,
           "(rel < (1 - thresholds))", "(rel <= (1 - thresholds))",
           ("tests/test_scoring.py",), "MRA counts a threshold only when the relative error is strictly below it"),
    Mutant("mra-drops-the-last-threshold", SCORING,
           "torch.arange(0.5, 0.95 + 0.025, 0.05, dtype=torch.float32)",
           "torch.arange(0.5, 0.95, 0.05, dtype=torch.float32)",
           ("tests/test_scoring.py",), "ten thresholds 0.50 … 0.95"),
    Mutant("numerical-compares-unrounded", SCORING,
           "round(p, 2) == round(g, 2)", "p == g",
           ("tests/test_scoring.py",), "numerical answers agree to two decimals"),
    # ---- sampling filters ---------------------------------------------------------------------
    Mutant("temperature-multiplies", SAMPLING,
           "TemperatureLogitsWarper(decode.temperature)", "TemperatureLogitsWarper(1.0 / decode.temperature)",
           ("tests/test_sampling.py",), "temperature divides the logits"),
    Mutant("top-p-threshold-not-plumbed", SAMPLING,
           "TopPLogitsWarper(top_p=decode.top_p)", "TopPLogitsWarper(top_p=decode.top_p ** 2)",
           ("tests/test_sampling.py",), "top-p keeps the smallest set of best tokens reaching mass top_p"),
    Mutant("min-p-threshold-not-plumbed", SAMPLING,
           "MinPLogitsWarper(min_p=decode.min_p)", "MinPLogitsWarper(min_p=decode.min_p / 10)",
           ("tests/test_sampling.py",), "min-p drops tokens below min_p times the top probability"),
    Mutant("repetition-penalty-wrong-way", SAMPLING,
           "RepetitionPenaltyLogitsProcessor(penalty=decode.repetition_penalty)",
           "RepetitionPenaltyLogitsProcessor(penalty=1.0 / decode.repetition_penalty)",
           ("tests/test_sampling.py",), "a penalty lowers a seen token's score whatever its sign"),
    Mutant("top-h-not-plumbed", SAMPLING,
           "TopHLogitsWarper(top_h=decode.top_h)", "TopHLogitsWarper(top_h=1.0)",
           ("tests/test_sampling.py",), "top-H bounds the kept tokens' entropy by top_h times the full entropy"),
    # ---- Lite ---------------------------------------------------------------------------------
    Mutant("lite-keeps-the-smallest-norms", PRUNING,
           "torch.sort(norms, descending=True, stable=True)", "torch.sort(norms, descending=False, stable=True)",
           ("tests/test_pruning.py",), "Lite drops the lowest value-norm video tokens"),
    Mutant("lite-rounds-up", PRUNING,
           "return int(n_video * ratio)", "return -int(-n_video * ratio // 1)",
           ("tests/test_pruning.py",), "floor(r · n_video) tokens are dropped"),
    Mutant("lite-video-index-not-renumbered", PRUNING,
           "kept_index.append(new_index.index_select(0, positions.index_select(0, kept_video)))",
           "kept_index.append(positions.index_select(0, kept_video))",
           ("tests/test_pruning.py",), "kept video tokens' cache indices shift down after pruning"),
    # ---- resume keys --------------------------------------------------------------------------
    Mutant("resume-key-without-controller", "vreason/module.py",
           '"controller": plain(self.controller), ', "",
           ("tests/test_cli.py::test_a_run_that_failed_before_any_sample_does_not_lock_its_folder",),
           "a resume with another controller setting is refused"),
    Mutant("resume-key-without-file-hash", "vreason/data/datamodule.py",
           '"files": [{"path": f, "sha256": _sha256(f)} for f in self.files]',
           '"files": [{"path": f} for f in self.files]',
           ("tests/test_cli.py::test_resume_refuses_other_inputs",),
           "a benchmark file edited in place is another benchmark"),
    Mutant("resume-keeps-error-records", "vreason/callbacks.py",
           'self._kept = [r for r in existing if not (self.retry_errors and r.error)]',
           "self._kept = existing",
           ("tests/test_cli.py::test_broken_samples_complete_with_exit_0_and_are_counted",),
           "error samples run again on resume"),
    # ---- controller and generation (rewritten for speed: re-check these texts after a rewrite) --
    Mutant("lm-head-backward-first-rows-only", CONTROLLER,
           "return loss, ops.vecmat(grad_z.reshape(-1, grad_z.shape[-1]), self.lm_weight)",
           "return loss, ops.vecmat(grad_z.reshape(-1, grad_z.shape[-1])[:, :8192], self.lm_weight[:8192])",
           (ORACLE_F32,), "∂L/∂h sums every row of lm_head (a real vocabulary has 152,064)"),
    Mutant("tail-backward-drops-the-up-projection", TAIL,
           "ops.vecmat(grad_gate, self.gate_proj.weight) + ops.vecmat(grad_up, self.up_proj.weight)",
           "ops.vecmat(grad_gate, self.gate_proj.weight)",
           ("tests/test_controller.py::test_hand_written_tail_backward_equals_autograd_in_float64",),
           "the hand-written tail backward sums both SwiGLU branches"),
    Mutant("adam-ignores-configured-betas", CONTROLLER,
           "(config.adam_beta1, config.adam_beta2)", "(0.9, 0.999)",
           (ORACLE_F32,), "--model.controller.adam_beta1/2 reach Adam"),
    Mutant("adam-ignores-configured-eps", CONTROLLER,
           "(config.adam_beta1, config.adam_beta2), config.adam_eps,", "(config.adam_beta1, config.adam_beta2), 1e-8,",
           (ORACLE_F32,), "--model.controller.adam_eps reaches Adam"),
    Mutant("adam-without-second-moment-bias-correction", ADAM,
           "denom = exp_avg_sq.sqrt() / correction[1].sqrt() + self.eps", "denom = exp_avg_sq.sqrt() + self.eps",
           ("tests/test_controller.py::test_guarded_adam_matches_torch_adam_and_skips_non_finite_steps",),
           "Adam's update, as torch.optim.Adam"),
    Mutant("loss-sign-flipped", CONTROLLER,
           "grad_outputs=torch.neg(alpha).expand_as(entropy)", "grad_outputs=alpha.expand_as(entropy)",
           (ORACLE_F32,), "L = α(log|V| − H): α = +1 raises the entropy"),
    Mutant("gradient-ignores-norm-preservation", CONTROLLER,
           "self._values = (self.delta, leaf, ops.value_update(self.v0, leaf))",
           "self._values = (self.delta, leaf, self.v0 + leaf)",
           (ORACLE_F32,), "V(ΔV) = (V0+ΔV)/‖V0+ΔV‖·‖V0‖, differentiated as such"),
    Mutant("delta-v-never-written-to-the-cache", CONTROLLER,
           "        ops.value_update_(values_cache, self.video_index, self.v0, self.delta, counts=self.counts, "
           "check=not self._checked)\n", "",
           (ORACLE_F32,), "ΔV reaches the model through the cache"),
    Mutant("rounds-off-by-one-token", CONTROLLER,
           "return k % self.config.every_k == 0", "return (k + 1) % self.config.every_k == 0",
           ("tests/test_generation.py::test_result_traces",), "rounds at k = 0, every_k, 2·every_k, ..."),
    Mutant("ema-beta-not-plumbed", DECODE,
           "EntropySwitch(cfg.mode, cfg.ema_beta, device, batch=True)", "EntropySwitch(cfg.mode, 0.9, device, batch=True)",
           ("tests/test_config_plumbing.py::test_ema_alpha_and_rounds_follow_the_given_beta_and_every_k",),
           "--model.controller.ema_beta reaches the switch"),
    Mutant("lite-renumbers-decode-positions", DECODE,
           "adapter.decode_step(token.view(-1, 1), cache, positions + k,",
           "adapter.decode_step(token.view(-1, 1), cache, positions + k - num_pruned(max(n_video), cfg.prune_ratio),",
           ("tests/test_pruning.py::test_pruned_run_keeps_the_unpruned_positions",),
           "after Lite, new tokens keep the unpruned sequence's positions"),
    Mutant("lite-rerun-at-the-wrong-position", DECODE,
           "rerun_last_prompt_token(cache, prompt, prefill.next_position_ids - 1,",
           "rerun_last_prompt_token(cache, prompt, prefill.next_position_ids,",
           ("tests/test_pruning.py::test_pruned_run_keeps_the_unpruned_positions",),
           "the last prompt token runs again at its own position"),
    # ---- batched decoding: every row must stay the sample it is alone --------------------------
    Mutant("batch-attends-to-padding", CONTROLLER,
           'scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))', "scores = scores",
           (BATCH_EXACT,), "a row's round attends to its own tokens only, never to the batch's left padding"),
    Mutant("batch-padding-slots-attend", CONTROLLER,
           "a_video = probs.gather(-1, index).masked_fill(~self.valid[:, None, None, :], 0.0)",
           "a_video = probs.gather(-1, index)",
           (BATCH_EXACT,), "a row's padding slots (fewer video tokens than the longest) carry no attention"),
    Mutant("batch-lite-index-ignores-the-new-padding", PRUNING,
           "new_index = torch.cumsum(keep, 0) - 1 + pad", "new_index = torch.cumsum(keep, 0) - 1",
           (BATCH_EXACT,), "after Lite each row is left-padded again: its video indices shift by its padding"),
    Mutant("batch-ignores-per-sample-seeds", DECODE,
           "seeds = [dcfg.seed if seed is None else int(seed) for seed in self.seeds]",
           "seeds = [dcfg.seed for seed in self.seeds]",
           ("tests/test_generation.py::test_seed_override_per_sample",),
           "a sample draws from its own seed (the engine serves one sample and a batch alike)"),
    Mutant("batch-finished-rows-keep-their-positions", DECODE,
           "positions.index_select(-2, keep)", "positions[..., : len(stay), :]",
           ("tests/test_batch.py::test_rows_that_stop_early_leave_the_batch",),
           "a row leaving the batch takes its positions with it"),
    Mutant("hybrid-batch-rerun-rewinds-without-the-mask", QWEN3_5,
           'if k not in ("input_ids", "second_per_grid_ts")}', 'if k not in ("input_ids", "second_per_grid_ts", "attention_mask")}',
           (FAMILY_BATCH + "test_every_row_equals_its_sample_alone_and_the_decoder_runs_once_per_step[qwen3_5-switch lite]",),
           "the recurrent states Lite's re-run rewinds to are rebuilt from each row's own tokens, its padding masked"),
    Mutant("hybrid-batch-finished-rows-stay-in-the-recurrent-states", QWEN3_5,
           "cache.layers[layer].reorder_cache(rows)", "pass",
           (FAMILY_BATCH + "test_rows_that_stop_early_leave_the_batch[qwen3_5]",),
           "a row leaving the batch leaves the linear-attention layers' states too"),
    Mutant("llava-batch-videos-of-different-lengths-as-given", LLAVA_ONEVISION,
           "if videos is None:", "if True:",
           (FAMILY_BATCH + "test_every_row_equals_its_sample_alone_and_the_decoder_runs_once_per_step[llava_onevision-off]",),
           "a video zero-padded to the batch's longest is encoded over its own frames only"),
]
