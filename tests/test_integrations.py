"""GradMimic in PyTorch Lightning and in a Hugging Face Trainer: the real packages, checked against a plain
loop over the same micro-batches (gradient accumulation included) and against each other's recordings."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keepset.recorder import DynamicsRecorder
from keepset.training import GradMimic


def _replay(model, reference, batches, accumulate, lr, record, make_inputs):
    """A plain loop: micro-batches in the given order, the loss divided by the accumulation steps, SGD."""
    gm = GradMimic(reference, temperature=0.5, record_to=record)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for k, (x, y, ids, epoch) in enumerate(batches):
        (gm.loss(model, make_inputs(x), y, ids, epoch=epoch) / accumulate).backward()
        if (k + 1) % accumulate == 0:
            opt.step()
            opt.zero_grad()
    gm.close()
    return model


# ---------------------------------------------------------------------------------------------- Lightning
lightning = pytest.importorskip("lightning.pytorch", reason="PyTorch Lightning is not installed (keepset[lightning])")


class LitNet(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def _lightning_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    ids = torch.arange(32) + 1000
    return x, y, ids


def _trainer(tmp_path, **kw):
    return lightning.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_lightning_callback_equals_a_plain_loop_with_accumulation(tmp_path):
    from keepset.integrations.lightning import GradMimicCallback

    x, y, ids = _lightning_data()
    torch.manual_seed(1)
    module, reference = LitNet(), LitNet()
    start = copy.deepcopy(module)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, ids), batch_size=4, shuffle=False)
    gm = GradMimic(reference, layers="all", temperature=0.5, record_to=tmp_path / "lit")
    _trainer(tmp_path, accumulate_grad_batches=2, callbacks=[GradMimicCallback(gm)]).fit(module, loader)
    batches = [(x[s:s + 4], y[s:s + 4], ids[s:s + 4].numpy(), e) for e in range(2) for s in range(0, 32, 4)]
    ref2 = copy.deepcopy(reference)
    gm_ref = GradMimic(ref2, layers="all", temperature=0.5, record_to=tmp_path / "plain")
    opt = torch.optim.SGD(start.parameters(), lr=0.2)
    for k, (xb, yb, ib, e) in enumerate(batches):
        (gm_ref.loss(start, xb, yb, ib, epoch=e) / 2).backward()
        if k % 2 == 1:
            opt.step()
            opt.zero_grad()
    gm_ref.close()
    for (n, p), q in zip(module.named_parameters(), start.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    a, b = DynamicsRecorder.open(tmp_path / "lit").read(), DynamicsRecorder.open(tmp_path / "plain").read()
    assert np.array_equal(a["id"], b["id"]) and np.array_equal(a["epoch"], b["epoch"])
    np.testing.assert_allclose(a["mimic"], b["mimic"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["weight"], b["weight"], rtol=1e-5, atol=1e-7)
    assert len(a["id"]) == 64 and not np.allclose(a["weight"], 0.25)  # re-weighted, not uniform


def test_lightning_callback_under_bf16_mixed_precision(tmp_path):
    from keepset.integrations.lightning import GradMimicCallback

    x, y, ids = _lightning_data()
    torch.manual_seed(1)
    module, reference = LitNet(), LitNet()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, ids), batch_size=8)
    gm = GradMimic(reference, temperature=0.5, record_to=tmp_path / "bf16")
    _trainer(tmp_path, precision="bf16-mixed", callbacks=[GradMimicCallback(gm)]).fit(module, loader)
    rec = DynamicsRecorder.open(tmp_path / "bf16").read()
    assert len(rec["id"]) == 64 and np.isfinite(rec["mimic"]).all()
    assert np.allclose(np.bincount(rec["step"], rec["weight"]), 1.0, atol=1e-4)


def test_lightning_callback_refuses_unsupported_layers(tmp_path):
    from keepset.integrations.lightning import GradMimicCallback

    class Normed(LitNet):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)

        def forward(self, x):
            return self.head(self.norm(self.features(x)))

    x, y, ids = _lightning_data()
    module, reference = Normed(), Normed()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, ids), batch_size=8)
    gm = GradMimic(reference, layers="all")
    with pytest.raises(ValueError, match="fused Grad-Mimic step does not apply"):
        _trainer(tmp_path, callbacks=[GradMimicCallback(gm)]).fit(module, loader)


# ---------------------------------------------------------------------------------------------- transformers
def _tiny_bert():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (keepset[transformers])")
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=16, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(2)
    model = transformers.BertForSequenceClassification(cfg)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.classifier.weight.add_(torch.randn_like(reference.classifier.weight))
    return transformers, model, reference


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(3)
        self.tokens = torch.randint(0, 40, (n, 8), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "labels": self.labels[i], "ids": torch.tensor(500 + i)}


def test_hf_trainer_equals_a_plain_loop_over_its_batches(tmp_path):
    transformers, model, reference = _tiny_bert()
    from keepset.integrations.transformers import GradMimicTrainer

    start = copy.deepcopy(model)
    data = _Rows()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        num_train_epochs=2, learning_rate=0.05, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=0.0, warmup_steps=0, report_to=[], remove_unused_columns=False, use_cpu=True, seed=0,
        save_strategy="no", logging_strategy="no", disable_tqdm=True)
    gm = GradMimic(reference, temperature=0.5, record_to=tmp_path / "trainer")
    GradMimicTrainer(gradmimic=gm, model=model, args=args, train_dataset=data).train()
    rec = DynamicsRecorder.open(tmp_path / "trainer").read()
    assert len(rec["id"]) == 48 and sorted(set(rec["id"].tolist())) == list(range(500, 524))
    # replay the Trainer's micro-batches (read back from its recording, by id) in a plain loop
    batches = []
    for step in np.unique(rec["step"]):
        ids = rec["id"][rec["step"] == step]
        pos = torch.as_tensor(ids - 500)
        batches.append((data.tokens[pos], data.labels[pos], ids, int(rec["epoch"][rec["step"] == step][0])))
    _replay(start, copy.deepcopy(reference), batches, 2, 0.05, tmp_path / "plain",
            lambda tok: {"input_ids": tok, "attention_mask": torch.ones_like(tok)})
    plain = DynamicsRecorder.open(tmp_path / "plain").read()
    np.testing.assert_allclose(rec["mimic"], plain["mimic"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rec["weight"], plain["weight"], rtol=1e-4, atol=1e-6)
    for (n, p), q in zip(model.named_parameters(), start.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_hf_trainer_needs_the_id_column(tmp_path):
    transformers, model, reference = _tiny_bert()
    from keepset.integrations.transformers import GradMimicTrainer

    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        GradMimicTrainer(gradmimic=GradMimic(reference), model=model, args=args, train_dataset=_Rows())
