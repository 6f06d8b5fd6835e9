"""MoILCallback: the observer inside a transformers Trainer equals the MoIL recipe, saves
beside the Trainer's checkpoints, resumes with it and exports the students."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import SequentialSampler
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from moil.approx import Hybrid, LowRank
from moil.backbones import from_model
from moil.export import load_student
from moil.integrations.trainer import OBSERVER_FILE, STUDENTS_DIR, MoILCallback
from moil.observer import ImitationObserver
from moil.optim import AdamW
from moil.recipes import MoIL, Student
from moil.train import train

pytest.importorskip("accelerate")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

QKV = r"bert\.encoder\.layer\.\d+\.attention\.self\.(query|key|value)"
HEADS = ["classifier", "bert.pooler"]
STEPS, BATCH, LR = 6, 4, 1e-2


def tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=20, max_position_embeddings=16, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def data(n: int):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, 50, (6,), generator=g), "attention_mask": torch.ones(6, dtype=torch.long),
             "labels": int(torch.randint(0, 2, (), generator=g))} for _ in range(n)]


def students():
    return {"h": Hybrid(2), "l": Student(LowRank(2), momentum=0.8)}


class InOrder(Trainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def run_trainer(model, out, *, steps=STEPS, resume=False, save_steps=3):
    chosen = from_model(model, QKV, HEADS)
    trained = set(chosen.heads) | {f"{t}.{p}" for t in chosen.targets for p in ("weight", "bias")}
    for n, p in model.named_parameters():
        p.requires_grad_(n in trained)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.98),
                            eps=1e-8, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                             save_strategy="steps", save_steps=save_steps, logging_steps=1, report_to=[],
                             use_cpu=True, max_grad_norm=0.0, seed=0, disable_tqdm=True)
    callback = MoILCallback(ImitationObserver(students(), targets=QKV, momentum=0.5, optimizer=AdamW(lr=LR)))
    trainer = InOrder(model=model, args=args, train_dataset=data(STEPS * BATCH), optimizers=(opt, sched),
                      callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume or None)
    return callback


def recipe_students():
    model = tiny_bert()
    backbone = from_model(model, QKV, HEADS)
    items = data(STEPS * BATCH)
    batches = [{k: torch.stack([torch.as_tensor(x[k]) for x in items[i:i + BATCH]]) for k in items[0]}
               for i in range(0, len(items), BATCH)]

    def loss(outputs, batch):
        return F.cross_entropy(outputs["logits"], batch["labels"])

    recipe = MoIL(loss, students(), momentum=0.5, optimizer=AdamW(lr=LR))
    return train(recipe, backbone, batches, steps=STEPS).students


def test_callback_students_equal_the_recipes(tmp_path):
    """Law: a Trainer run (torch AdamW ≡ moil's, same batches in order) with MoILCallback
    trains the same students as moil's own MoIL recipe; they are exported at the end."""
    callback = run_trainer(tiny_bert(), tmp_path)
    ours = recipe_students()
    for name in ("h", "l"):
        for k, v in ours[name].items():
            torch.testing.assert_close(callback.state.students[name][k], v, rtol=1e-4, atol=1e-5)
        saved = load_student(tmp_path / STUDENTS_DIR / name)
        assert all(torch.equal(saved.params[k], callback.state.students[name][k]) for k in ours[name])
    assert (tmp_path / "checkpoint-3" / OBSERVER_FILE).exists()


def test_resumed_trainer_resumes_the_students(tmp_path):
    """Stopped at step 3 and resumed from its checkpoint, the run ends with the students
    of an uninterrupted run."""
    straight = run_trainer(tiny_bert(), tmp_path / "a")
    run_trainer(tiny_bert(), tmp_path / "b", steps=3)
    resumed = run_trainer(tiny_bert(), tmp_path / "b", resume=True)
    for name in ("h", "l"):
        for k, v in straight.state.students[name].items():
            torch.testing.assert_close(resumed.state.students[name][k], v, rtol=1e-5, atol=1e-6)
