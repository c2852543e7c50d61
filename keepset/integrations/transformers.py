"""Grad-Mimic in a Hugging Face ``Trainer``: ``GradMimicTrainer``.

    gm = keepset.GradMimic(reference, record_to="runs/gm")
    args = TrainingArguments(..., remove_unused_columns=False)      # so the id column reaches the loss
    trainer = GradMimicTrainer(gradmimic=gm, model=model, args=args, train_dataset=ds)
    trainer.train()

``compute_loss`` takes the ids (``id_column``, default "ids") and the labels (``label_column``, default
"labels") out of the batch, calls the model on the rest (``model(**inputs)``, its ``.logits``) and returns
Grad-Mimic's loss; the Trainer's own scaling (gradient accumulation, mixed precision) reaches Grad-Mimic
through the loss's gradient. Integer ids collate with the default collator; string ids need a collator
that keeps them as a list. Evaluation batches (no gradient) get the plain mean loss, unrecorded.
"""

from __future__ import annotations

import torch

try:
    from transformers import Trainer
except ImportError:
    raise ImportError("GradMimicTrainer needs transformers: pip install 'keepset[transformers]'") from None

from keepset.training.gradmimic import GradMimic
from keepset.training.online import model_outputs, per_sample_losses


class GradMimicTrainer(Trainer):
    """A ``transformers.Trainer`` whose training loss is Grad-Mimic's (``keepset.GradMimic.loss``).

    Parameters (besides the Trainer's own)
    ----------
    gradmimic : the ``keepset.GradMimic`` doing the work.
    id_column, label_column : batch keys of the sample ids and the labels.
    """

    def __init__(self, *args, gradmimic: GradMimic, id_column: str = "ids", label_column: str = "labels", **kwargs):
        if not isinstance(gradmimic, GradMimic):
            raise ValueError(f"GradMimicTrainer needs gradmimic=keepset.GradMimic(...), got {type(gradmimic).__name__}")
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError("set TrainingArguments(remove_unused_columns=False): otherwise the Trainer drops the "
                             f"{id_column!r} column before the loss sees it")
        self.gradmimic, self.id_column, self.label_column = gradmimic, id_column, label_column
        # the returned loss is a batch mean: let the Trainer divide it by the accumulation steps itself
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        for key in (self.id_column, self.label_column):
            if key not in inputs:
                raise ValueError(f"the batch has no {key!r} column (it has {sorted(inputs)}); name the columns with "
                                 "id_column= / label_column=")
        ids = inputs.pop(self.id_column)
        labels = inputs.pop(self.label_column)
        if torch.is_grad_enabled() and model.training:
            loss = self.gradmimic.loss(model, inputs, labels, ids, epoch=int(self.state.epoch or 0))
            outputs = self.gradmimic.last_batch.logits
        else:
            outputs = model_outputs(model(**inputs))
            loss = per_sample_losses(self.gradmimic.loss_fn, outputs, labels.long(), len(labels)).mean()
        return (loss, {"logits": outputs}) if return_outputs else loss

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self.gradmimic.close()
