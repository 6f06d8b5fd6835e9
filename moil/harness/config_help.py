"""What each config field means, and when it applies: the one place these are written.

:data:`HELP` gives every field of every spec of :mod:`moil.harness.config` one sentence
(``moil config show`` prints it as the field's comment; ``docs/config.md`` is generated
from it by :mod:`moil.harness.config_reference`, and a test refuses a field without one).
:data:`APPLIES` names the fields read only under a condition, as ``(predicate over the
field's table, the condition in words)``; a field not listed always applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["APPLIES", "HELP"]

HELP: dict[str, dict[str, str]] = {
    "DataSpec": {
        "dataset": "The demo data set: real MNIST `digits` or `fashion` (Fashion-MNIST), EfficientNet-Lite0 grid "
                   "tokens; `digit-pairs`: pairs of those digits (tasks `nlvr2` and `vqa`: the sum, the larger, "
                   "the number of odd digits..., hard one-word negatives; moil.harness.data.pairs).",
        "train": "Data from disk instead of the demo set: a `save_to_disk` folder, an image folder with "
                 "`metadata.jsonl`/`metadata.csv`, or a `.jsonl`/`.csv` of image paths (see docs/your-data.md).",
        "val": "The validation split, in the same forms as `train` (unset: no validation scores or lr sweeps).",
        "test": "The test split, in the same forms as `train` (unset: no test scores).",
        "columns": "Column names of the data on disk.",
        "epochs": "Passes over `train` (0 = run `train.steps` steps); each epoch's order and negatives "
                  "come from (seed, epoch).",
        "limit": "Images kept per split (0 = all): a smaller run for smoke tests.",
        "batch_size": "Training batch size (the global batch under torchrun); even for ITM, whose batch "
                      "takes half as many images, each with a matching and a non-matching caption.",
        "eval_batch_size": "Batch size of evaluation (no gradients: larger is faster).",
        "eval_pairs": "digit-pairs: evaluation pairs drawn per val/test image (a fixed draw); more pairs, a smaller "
                      "standard error (2: val 1 000 pairs, test 2 000 — NLVR2 rows are twice that).",
        "split_seed": "Seed of the demo set's train/val/test split.",
    },
    "ColumnsSpec": {
        "image": "The image column (an image folder's `file_name` becomes `image`).",
        "text": "The caption column (ITM, retrieval).",
        "question": "The question column (VQA).",
        "answers": "The answers column (VQA): a string, or a list of strings whose soft score is "
                   "min(1, count / 3).",
        "pair": "NLVR2: the two image columns (an image folder's `left_file_name` becomes `left`).",
        "label": "NLVR2: the label column (true / false: the sentence holds for the image pair).",
        "features": "VisualBERT: a column of (tokens, dim) visual features (lists or `.npy` paths); unset = "
                    "the EfficientNet-Lite0 grid of the image column.",
        "boxes": "VinVL/Oscar-style: a column of (tokens, 4) boxes x1, y1, x2, y2 in [0, 1], appended to "
                 "each feature row as [x1, y1, x2, y2, w, h] (the model's width is then dim + 6).",
    },
    "ModelSpec": {
        "family": "`minilm-efficientnet`: VisualBERT on the real all-MiniLM-L6-v2 weights with "
                  "EfficientNet-Lite0 grid tokens; `tiny`: a random-init small one (tests). With `pretrained`: "
                  "`auto` (from the folder's config.model_type), a family of moil.backbones, or `generic`: "
                  "any transformers class (`model_class`) with `targets`/`heads`/`outputs`.",
        "mlp": "Also adapt the feed-forward (MLP) layers, not only the attention projections q/k/v.",
        "pretrained": "A `save_pretrained` folder (model + processor) or a hub id you have; unset: the demo model.",
        "targets": "Targets replacing the family's q/k/v default: layer-name suffixes (`attention.self.query`).",
        "heads": "More parameters trained and stored with the task head (names or module paths).",
        "model_class": "The transformers class to load the folder with (`BlipForImageTextRetrieval`).",
        "outputs": "moil output key → the model output's field (`{itm_logits = \"itm_score\"}`).",
        "prealign": "A shared, cached pre-alignment stage every arm starts from (digit-pairs only).",
    },
    "PrealignSpec": {
        "steps": "Steps of image–text matching on single training digits before any arm (0 = none: every arm "
                 "then trains the new visual projection with its heads); the aligned model is cached by content.",
        "lr": "Pre-alignment learning rate of the pretrained transformer (word embeddings stay frozen).",
        "new_lr": "Pre-alignment learning rate of the new visual projection and the matching head.",
        "batch_size": "Pre-alignment batch size (half as many images, each with a matching and a wrong-digit caption).",
        "seed": "Seed of the pre-alignment's new weights and batch order (one stage shared by every run).",
    },
    "TrainSpec": {
        "steps": "Optimiser steps of each run (when `data.epochs` is 0).",
        "sweep_steps": "Steps of each learning-rate sweep run (unset = `steps`).",
        "seeds": "Seeds: each arm × task runs once per seed.",
        "tasks": "Tasks to run: `itm` (image–text matching), `vqa` (question answering), `retrieval` "
                 "(a dual encoder's recall@1/5/10), `nlvr2` (a sentence true or false of an image pair).",
        "precision": "Precision of the forward pass (`bf16`/`fp16`: under torch.autocast; losses and metrics in full precision).",
        "device": "`auto` = CUDA when available, else CPU.",
        "threads": "torch intra-op threads per run (0 = torch's default, or cores ÷ workers); results depend "
                   "on it in the last bits, so fix it (e.g. 1) to reproduce a table exactly.",
        "workers": "Runs trained at once, each in its own process (1 = in this process).",
        "checkpoint_every": "Also checkpoint every this many steps (0 = only when a run ends or is stopped): "
                            "bounds what a killed worker loses in long runs.",
        "eval_splits": "Splits every (non-sweep) run is scored on; sweeps always use `val`.",
        "eval_every": "Score each run's trained model (a teacher where the recipe has one, else the stored "
                      "candidate) on `val` every this many steps (0 = only at the end), sweep runs included: the "
                      "validation curve of `metrics.jsonl` and the report's convergence table. Each point is one "
                      "forward over `val` in training-size batches (not counted in `train s`).",
    },
    "TailDecaySpec": {
        "rank": "The rank the teacher's update is shaped for (a student's, e.g. the LowRank rank of equal size).",
        "strength": "Share of the update's part beyond `rank` removed at each decay, in (0, 1] (1 = project onto rank).",
        "every": "Steps between decays (each is one SVD per target).",
    },
    "ArmSpec": {
        "name": "The arm's name in results and reports (unique within the config).",
        "recipe": "`moil` (students imitate a momentum target), `lora`, `full` (full fine-tuning), `head` "
                  "(head only), or a PEFT library recipe `peft-lora`/`peft-dora`/`peft-pissa`.",
        "lr": "Learning rate: a number, a list (swept on val, the best used for every seed), or a table per "
              "task (`{itm = 3e-4, vqa = [1e-3, 3e-3]}`).",
        "head_lr_scale": "The task head's learning rate as a multiple of `lr`.",
        "head_lr": "The heads' (and the new visual projection's) own learning rate, absolute: one value for "
                   "every arm, whatever its `lr` (same warm-up and decay); instead of `head_lr_scale`.",
        "weight_decay": "AdamW weight decay (0 turns it off).",
        "warmup": "Learning-rate warm-up as a fraction of the run's steps, in [0, 1); then linear decay to 0.",
        "momentum": "How the momentum target follows the teacher: a number in [0, 1) or a schedule such as "
                    "`half-life:20` (see moil.harness.momentum_spec).",
        "approx": "The adapter's approximation: `lowrank` (B·A), `transform` or `hybrid`.",
        "rank": "The adapter's rank (set it for an equal stored size across arms).",
        "scale": "The adapter's scale s (PEFT: lora_alpha = s·rank); non-zero.",
        "students": "The low-rank students, one [[arms.students]] table each; only students are stored.",
        "seeds": "This arm's seeds instead of `train.seeds` (e.g. `[0]` for the extra sizes of a stored-size curve).",
        "tail_decay": "Shape the full-rank teacher for a rank-r student: an [arms.tail_decay] table (`rank`, "
                      "`strength`, `every`) decays its update beyond rank r as it trains (unset = off).",
    },
    "StudentSpec": {
        "name": "The student's name (unique within its arm).",
        "approx": "The student's approximation: `hybrid`, `lowrank` (B·A) or `transform`.",
        "rank": "The student's rank.",
        "transform_rank": "The hybrid's transform part's rank (unset = `rank`).",
        "side": "Where the transform acts: `input` (an adapter before the layer) or `output` (after it).",
        "momentum": "The target this student imitates: unset = the arm's momentum, else a momentum spec.",
        "lr": "The student's own learning rate (unset = the arm's).",
        "solver_steps": "Gradient steps of imitation per training step (0: none, the student is only set by its closed-form `refit`; needs `final_fit` or `refit_every`).",
        "refit": "A closed-form refit of the student to its target: `none`, `svd` or `als`.",
        "refit_every": "Refit with `refit` every this many steps (0 = never).",
        "final_fit": "Refit once more when the run ends.",
    },
}

Rule = tuple[Callable[[Any], bool], str]


def _is_moil(arm: Any) -> bool:
    return arm.recipe == "moil"


APPLIES: dict[str, dict[str, Rule]] = {
    "DataSpec": {
        "dataset": (lambda d: d.train is None, "`train` is unset (the demo data)"),
        "split_seed": (lambda d: d.train is None, "`train` is unset (the demo data)"),
        "eval_pairs": (lambda d: d.train is None and d.dataset == "digit-pairs", "`dataset = 'digit-pairs'`"),
        **{name: (lambda d: d.train is not None, "`train` is set (data from disk)")
           for name in ("val", "test", "columns", "epochs")},
    },
    "ModelSpec": {
        name: (lambda m: m.pretrained is not None, "`pretrained` is set")
        for name in ("targets", "heads")
    } | {
        name: (lambda m: m.family == "generic", "`family = 'generic'`")
        for name in ("model_class", "outputs")
    },
    "ArmSpec": {
        "head_lr_scale": (lambda a: a.recipe != "head", "`recipe` is not `head`"),
        "head_lr": (lambda a: a.recipe != "head", "`recipe` is not `head`"),
        "momentum": (_is_moil, "`recipe = 'moil'`"),
        "students": (_is_moil, "`recipe = 'moil'`"),
        "approx": (lambda a: a.recipe == "lora", "`recipe = 'lora'`"),
        "rank": (lambda a: a.recipe == "lora" or a.recipe.startswith("peft-"), "`recipe` is `lora` or `peft-…`"),
        "scale": (lambda a: a.recipe == "lora" or a.recipe.startswith("peft-"), "`recipe` is `lora` or `peft-…`"),
        "tail_decay": (lambda a: a.recipe in ("moil", "full"), "`recipe` is `moil` or `full`"),
    },
    "StudentSpec": {
        "transform_rank": (lambda s: s.approx == "hybrid", "`approx = 'hybrid'`"),
        "side": (lambda s: s.approx != "lowrank", "`approx` is `hybrid` or `transform`"),
        "refit_every": (lambda s: s.refit != "none", "`refit` is `svd` or `als`"),
        "final_fit": (lambda s: s.refit != "none", "`refit` is `svd` or `als`"),
    },
}
