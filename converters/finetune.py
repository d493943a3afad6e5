"""Fine-tune a (pruned) model on labeled folders with the reference training pieces.

Why reuse ``reference_model.train``: the loss (thin-core BCE + Dice with an ignore band),
the augmentation for other cameras, the normalisation and the validation (threshold chosen
on the held-out split) must be exactly those the model was trained with, or the fine-tune
would pull it somewhere else. Budget: epochs or minutes, whichever ends first; the learning
rate follows a cosine over that budget so a time-boxed run still anneals.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from converters.errors import ConvertError
from edge_agent.contract import InferenceContract


@dataclass
class FinetuneReport:
    steps: int
    epochs_done: float
    seconds: float
    final_loss: float
    threshold: float
    val_f1: float | None
    val_per_set: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def finetune(model, data_dirs: Sequence[str | Path], contract: InferenceContract, epochs: int = 5,
             minutes: float | None = None, lr: float = 1e-3, batch_size: int = 8, crop: int = 256,
             max_half_width: float = 3.0, seed: int = 0, max_steps: int | None = None,
             progress: bool = True):
    """A fine-tuned copy of ``model`` and a report; the contract threshold is re-chosen on val."""
    import torch
    from tqdm import tqdm

    from reference_model.dataset import Augmenter
    from reference_model.train import (
        LabeledSet,
        crack_loss,
        lr_at,
        normalize_batch,
        validate,
    )

    if epochs < 1 and not minutes and not max_steps:
        raise ConvertError("fine-tune needs a budget: --finetune-epochs >= 1 or --finetune-minutes > 0")
    torch.manual_seed(seed)
    try:
        train_sets = [LabeledSet(Path(d), "train", max_half_width) for d in data_dirs]
        val_sets = [s for s in (LabeledSet(Path(d), "val", max_half_width) for d in data_dirs) if s.images]
    except (FileNotFoundError, ValueError) as exc:
        raise ConvertError(f"fine-tune data: {exc}") from exc
    index = [(si, i) for si, ds in enumerate(train_sets) for i in range(len(ds.images))]
    if not index:
        raise ConvertError(f"fine-tune data {', '.join(map(str, data_dirs))}: no image in the train split")
    model = copy.deepcopy(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    aug = Augmenter(crop=crop, seed=seed)
    rng = np.random.default_rng(seed)
    steps_per_epoch = max(1, len(index) // batch_size)
    total_steps = steps_per_epoch * max(epochs, 1)
    if max_steps:
        total_steps = min(total_steps, max_steps)
    budget_s = (minutes or 0.0) * 60.0
    t0 = time.time()
    step, running = 0, float("nan")
    bar = tqdm(total=total_steps, desc="fine-tune", disable=not progress, mininterval=5)
    done = False
    while not done:
        order = rng.permutation(len(index))
        for b in range(steps_per_epoch):
            elapsed = time.time() - t0
            progress_frac = max(step / total_steps, elapsed / budget_s if budget_s else 0.0)
            if progress_frac >= 1.0:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(progress_frac, lr, warmup=0.05)
            chosen = [index[j] for j in order[b * batch_size:(b + 1) * batch_size]]
            batch = [aug(train_sets[si].images[i], train_sets[si].targets[i], train_sets[si].bands[i])
                     for si, i in chosen]
            x = normalize_batch(np.stack([s[0] for s in batch]), contract)
            y = torch.from_numpy(np.stack([s[1] for s in batch])).float()[:, None]
            band = torch.from_numpy(np.stack([s[2] for s in batch])).float()[:, None]
            loss = crack_loss(model(x), y, band)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running = loss.item() if step == 0 else 0.9 * running + 0.1 * loss.item()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    model.eval()
    threshold, val_f1, per_set = contract.threshold, None, {}
    if val_sets:
        val = validate(model, val_sets, contract.model_copy(update={"input_size": None}))
        threshold, val_f1, per_set = float(val["threshold"]), float(val["score"]), val["per_set"]
    report = FinetuneReport(step, step / steps_per_epoch, time.time() - t0, float(running), threshold, val_f1,
                            per_set)
    return model, report
