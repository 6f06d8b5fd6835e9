"""The digit-pairs benchmark's "vision-language pre-trained" start: a shared, cached pre-alignment.

The paper adapts models pre-trained on image–text pairs; the benchmark's model is a text-only
BERT (all-MiniLM-L6-v2) whose visual projection has never seen an image. Without this stage
every arm trains that new projection from scratch together with its heads, so head-only already
learns a visual encoder of its own and comes close to full fine-tuning: the benchmark then says
little about how the targets are adapted (issue 11, item 3).

Pre-alignment is image–text matching of **single** training digits (their captions from the
training templates, one wrong-digit caption per image; the same 2 × 2 pooled tokens the pairs use):
every VisualBERT weight but the word embeddings trains, the pretrained ones at ``lr``, the new
projection and matching head at ``new_lr`` (AdamW β = (0.9, 0.98), decay 0.01, 10 % warm-up then
linear decay). Its ``visual_bert`` weights start every arm; the projection is then a pretrained,
frozen weight like any other, so arms differ only in how the targets are adapted and store only
adapters and task heads. The pair relations (sum, larger, equal...) are never seen here.

The result is cached by content (:func:`moil.harness.data.cache.load_or_compute`: a key over the
spec, the split and its images, checksummed, written atomically); two workers that
miss at once both compute the same tensors and the second write replaces the first.
"""

from __future__ import annotations

import time

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from moil.backbones import visualbert
from moil.harness.config import PrealignSpec
from moil.harness.data import tasks
from moil.harness.data.cache import content_key, load_or_compute
from moil.harness.data.demo import DemoData, prepare_demo_data
from moil.harness.data.pairs import POOLED_SIDE, pool_grid
from moil.harness.data.text import minilm_path
from moil.harness.threads import CACHED_THREADS, intra_op_threads
from moil.schedules import WarmupLinearDecay

__all__ = ["ALIGN_METRICS", "EVAL_SEED", "prealign", "prealigned_model"]

FORMAT = "prealign-v4"  # bump when the stage's recipe changes: old entries are then ignored (v4: fixed threads)
EVAL_SEED = 2024
#: Metrics stored with the weights (shape (1,): the cache hashes bytes), read back by :func:`prealigned_model`.
ALIGN_METRICS = ("val_itm_accuracy", "train_loss_last_tenth", "seconds")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "visual_embeds", "visual_attention_mask")


def _new_model(dim: int, task: str, num_answers: int | None, seed: int):
    return visualbert.from_bert(minilm_path(), dim, task=task, num_answers=num_answers, seed=seed)


def _logits(model, batch: dict[str, Tensor]) -> Tensor:
    return model(**{k: batch[k] for k in _INPUTS}, return_dict=True).logits


def prealign(spec: PrealignSpec, demo: DemoData) -> dict[str, Tensor]:
    """Train the pre-alignment on ``demo.train``; ``visual_bert`` state dict plus :data:`ALIGN_METRICS`.

    Visual tokens: ``(N, 16, D)`` grids pooled to ``(N, 4, D)``; batches of ``spec.batch_size``
    rows (half as many images). ``val_itm_accuracy``: matching accuracy on ``demo.val`` (every
    image with one matching and one wrong caption of the validation templates). Runs at
    :data:`~moil.harness.threads.CACHED_THREADS` intra-op threads whatever the caller's: its
    result is cached and starts every arm, so it must not depend on the caller's count.
    """
    with intra_op_threads(CACHED_THREADS):
        return _prealign(spec, demo)


def _prealign(spec: PrealignSpec, demo: DemoData) -> dict[str, Tensor]:
    t0 = time.perf_counter()
    train_visual = pool_grid(demo.train.visual_embeds)
    model, new = _new_model(train_visual.shape[-1], "itm", None, spec.seed)
    model.eval()  # no dropout: as every arm trains
    fresh, old = [], []
    for name, p in model.named_parameters():
        if name.endswith("word_embeddings.weight"):
            p.requires_grad_(False)  # 11.7 M rows the digit captions barely touch
        else:
            (fresh if name in new else old).append(p)
    opt = torch.optim.AdamW([{"params": old, "lr": spec.lr}, {"params": fresh, "lr": spec.new_lr}],
                            betas=(0.9, 0.98), weight_decay=0.01)
    # The factor on each group's rate: the library's own warm-up + linear decay at peak 1.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupLinearDecay(1.0, spec.steps, warmup=0.1))
    losses: list[float] = []
    step, epoch = 0, 0
    while step < spec.steps:
        batches = tasks.itm_batches(train_visual, demo.train.images.labels, demo.train.captions,
                                    batch_size=spec.batch_size, generator=spec.seed * 10_007 + epoch, drop_last=True)
        for batch in batches:
            if step == spec.steps:
                break
            loss = F.cross_entropy(_logits(model, batch), batch["itm_labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
        epoch += 1
        if step == 0:
            raise ValueError(f"model.prealign.batch_size = {spec.batch_size} is larger than the training split "
                             f"makes ({len(train_visual)} images, two rows each); lower it or raise data.limit.")
    tail = losses[-max(1, len(losses) // 10):]
    state = {k: v.detach().clone() for k, v in model.visual_bert.state_dict().items()}
    return state | {
        "val_itm_accuracy": torch.tensor([_val_accuracy(model, demo)]),
        "train_loss_last_tenth": torch.tensor([sum(tail) / len(tail)]),
        "seconds": torch.tensor([time.perf_counter() - t0]),
    }


@torch.no_grad()
def _val_accuracy(model, demo: DemoData) -> float:
    visual = pool_grid(demo.val.visual_embeds)
    right = total = 0
    for batch in tasks.itm_batches(visual, demo.val.images.labels, demo.val.captions, batch_size=250,
                                   generator=EVAL_SEED, shuffle=False):
        right += int((_logits(model, batch).argmax(-1) == batch["itm_labels"]).sum())
        total += batch["itm_labels"].numel()
    return right / total


def _key(spec: PrealignSpec, demo: DemoData, split_seed: int, limit: int) -> str:
    config = {"format": FORMAT, "bert": minilm_path().name, "pooled_side": POOLED_SIDE,
              "split_seed": split_seed, "limit": limit, **attrs.asdict(spec)}
    # Keyed on the images: the features are a function of them (the extractor's fixed configuration
    # and thread count).
    return content_key(config, {"images": demo.train.images.images, "labels": demo.train.images.labels,
                                "val_images": demo.val.images.images})


def prealigned_model(spec: PrealignSpec, task: str, num_answers: int | None, *, split_seed: int = 0,
                     limit: int = 0, cache_dir=None):
    """``(model, new, metrics)``: the ``task`` VisualBERT started from the cached pre-alignment.

    ``new`` names only the task head's parameters (the visual projection is pretrained now);
    ``metrics`` are the stage's :data:`ALIGN_METRICS` as floats. Computes the stage on a miss.
    """
    demo = prepare_demo_data("digits", split_seed, cache_dir=cache_dir, limit=limit or None)
    key = _key(spec, demo, split_seed, limit)
    stored = load_or_compute("prealign-visualbert", key, lambda: prealign(spec, demo), cache_dir=cache_dir)
    metrics = {k: float(stored[k]) for k in ALIGN_METRICS}
    model, new = _new_model(demo.train.visual_embeds.shape[-1], task, num_answers, spec.seed)
    model.visual_bert.load_state_dict({k: v for k, v in stored.items() if k not in ALIGN_METRICS}, strict=True)
    return model.eval(), [n for n in new if not n.startswith("visual_bert.")], metrics
