"""Thin adapters of ``keepset.GradMimic`` to training frameworks (optional extras).

- ``keepset.integrations.lightning.GradMimicCallback``: a PyTorch Lightning ``Callback``.
- ``keepset.integrations.transformers.GradMimicTrainer``: a Hugging Face ``Trainer`` subclass.

The maths stays in ``GradMimic``; each adapter only hands it the batch's ids and labels and the loss the
framework backpropagates.
"""
