"""`vreason train-tiny`: train the tiny Qwen2.5-VL that ships as `vreason.models.tiny.trained_path()`.

One run: a random-weight checkpoint folder (`build_tiny_model`, with the chains' words in its
tokenizer), a pool of synthetic clips read through the benchmark path, `Trainer.fit` with a
progress bar and TensorBoard loss curves, then the trained weights written back into the folder,
which then loads like any checkpoint. Deterministic for a seed (fixed thread count, seeded
shuffling, chains drawn from the seed).

Recipes: `default` (the shipped `trained_path()`: random weights, `chains.chain_of_thought`) and
`overthink` (`trained_path("overthink")`: `overthink.overthink_chain`, which reflects on most hard
clips). `overthink` starts from the shipped default model's weights and tokenizer (**ours**: it
already grounds, so a short run on this machine only has to teach the new chains; the result
therefore depends on the shipped default weights as well as on the seed) and stores its weights
in float16.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

# Sizes of the shipped model (**ours**, from short pilot runs on 2 CPU cores): large enough to
# ground direction, colour and count in a few minutes, small enough to ship in a few MB.
TRAINED_SIZES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, vision_depth=2, vision_hidden_size=64, vision_intermediate_size=128,
                     vision_num_heads=2)
BPE_VOCAB = 1000  # the chains' and the prompt's words become single tokens
RECIPES = ("default", "overthink")


def train_tiny(out: str | Path, seed: int = 0, steps: int = 6000, pool: int = 3000, batch_size: int = 16,
               lr: float = 2e-3, threads: int = 1, progress_bar: bool = True, max_minutes: Optional[float] = None,
               recipe: str = "default", **sizes) -> Path:
    """Train and return the checkpoint folder `<out>/model` (TensorBoard under `<out>/tb`).

    `max_minutes` stops the run early if the machine is slower than planned (a guard: a run that
    stops on it is no longer fixed by its seed alone; `training.json` records the steps done)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}")
    import shutil

    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from vreason.models.tiny import build_tiny_model, trained_path
    from vreason.training.chains import chain_of_thought, corpus
    from vreason.training.data import ChainDataset, Collate, build_pool
    from vreason.training.module import TinyTrainingModule

    from vreason.trainer import hide_lightning_tips

    hide_lightning_tips()
    started = time.perf_counter()
    out = Path(out)
    torch.set_num_threads(threads)
    L.seed_everything(seed, workers=True, verbose=False)
    if recipe == "overthink":
        from vreason.training.overthink import overthink_chain as chain

        if sizes:
            raise ValueError("the overthink recipe starts from the shipped model and keeps its sizes")
        model_dir = Path(shutil.copytree(trained_path(), out / "model", dirs_exist_ok=True))
    else:
        chain = chain_of_thought
        model_dir = build_tiny_model(out / "model", seed=seed, bpe_vocab_size=BPE_VOCAB, extra_corpus=tuple(corpus()),
                                     **{**TRAINED_SIZES, **sizes})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    clips = build_pool(out / "clips", n=pool, seed=seed, model_dir=model_dir)
    dataset = ChainDataset(clips, tokenizer, length=steps * batch_size, seed=seed, chain=chain)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=Collate(tokenizer.pad_token_id),
                        generator=torch.Generator().manual_seed(seed))
    module = TinyTrainingModule(str(model_dir), lr=lr, warmup_steps=min(50, steps // 10 + 1), max_steps=steps)
    limit = None if max_minutes is None else {"minutes": max_minutes}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, deterministic=True, max_time=limit,
                        gradient_clip_val=1.0, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=progress_bar, log_every_n_steps=min(5, steps),
                        logger=TensorBoardLogger(save_dir=str(out), name="tb", version="", default_hp_metric=False))
    trainer.fit(module, train_dataloaders=loader)
    module.save(model_dir, storage_dtype=torch.float16 if recipe == "overthink" else None)
    loss = trainer.callback_metrics.get("train/loss")
    record = {"recipe": recipe, "seed": seed, "steps": steps, "steps_done": trainer.global_step, "pool": pool, "batch_size": batch_size, "lr": lr,
              "final_loss": None if loss is None else round(float(loss), 4),
              "seconds": round(time.perf_counter() - started, 1), "sizes": {**TRAINED_SIZES, **sizes}}
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return model_dir


def main(args: Sequence[str]) -> Optional[int]:
    """The `vreason train-tiny` command line; returns an exit code (None: parse-only exit)."""
    parser = argparse.ArgumentParser(prog="vreason train-tiny", description=(
        "Train the tiny Qwen2.5-VL on synthetic video questions with chains of thought (CPU). Writes "
        "OUT/model (a checkpoint folder for --model.model_path), OUT/tb (TensorBoard) and OUT/training.json."))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps (default: 6000)")
    parser.add_argument("--pool", type=int, default=3000, help="distinct training clips (default: 3000)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1; see README)")
    parser.add_argument("--recipe", choices=RECIPES, default="default",
                        help="default: the shipped trained_path() model; overthink: trained_path('overthink')")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop early after this long (a guard)")
    opts = parser.parse_args(list(args))
    if min(opts.steps, opts.pool, opts.batch_size, opts.threads) < 1 or not opts.lr > 0:
        raise ValueError("--steps, --pool, --batch-size and --threads must be >= 1 and --lr > 0")
    folder = train_tiny(opts.out, seed=opts.seed, steps=opts.steps, pool=opts.pool, batch_size=opts.batch_size,
                        lr=opts.lr, threads=opts.threads, max_minutes=opts.max_minutes, recipe=opts.recipe)
    print(json.loads((Path(opts.out) / "training.json").read_text()))
    print(f"checkpoint: {folder}")
    return 0
