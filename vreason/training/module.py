"""`TinyTrainingModule`: the LightningModule that trains the tiny Qwen2.5-VL on chains of thought.

Unlike `VReasonModule` (evaluation: frozen weights, the model outside Lightning's children), here
the model is a registered child whose weights Lightning optimizes. Loss: next-token cross-entropy
on the answer tokens (the batch's `labels`). AdamW with a linear warm-up and a cosine decay to a
tenth of the peak rate (**ours**: a short run from scratch learns fastest at a high rate, then
settles).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from lightning.pytorch import LightningModule


class TinyTrainingModule(LightningModule):
    """model_dir: the folder whose (random) weights start the run; lr, weight_decay: AdamW's;
    warmup_steps / max_steps: the learning-rate schedule."""

    def __init__(self, model_dir: str, lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 100,
                 max_steps: int = 1000) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import Qwen2_5_VLForConditionalGeneration

        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        self.model.train()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch, use_cache=False).loss
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        keep = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                       {"params": keep, "weight_decay": 0.0}], lr=hp.lr)

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, hp.max_steps - hp.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def save(self, folder: str | Path, storage_dtype: torch.dtype | None = None) -> None:
        """Write the trained weights (safetensors) and config into `folder`, in eval mode.

        `storage_dtype` (float16) halves the file while the config keeps float32, so that loading
        with dtype "auto" computes in float32 from the rounded weights (**ours**: the package data
        of two shipped models stays under 8 MB)."""
        self.model.eval()
        self.model.save_pretrained(folder, safe_serialization=True)
        if storage_dtype is not None:
            from safetensors.torch import load_file, save_file

            path = Path(folder) / "model.safetensors"
            weights = {k: v.to(storage_dtype) if v.is_floating_point() else v for k, v in load_file(path).items()}
            save_file(weights, path, metadata={"format": "pt"})
