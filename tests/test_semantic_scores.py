"""SAS, SDS, CLIP score, min-max and the adapters' InfoNCE loss against independent computations."""

import math

import numpy as np
import pytest
import torch

from keepset.encoders.adapters import (
    ClipAdapters, average_templates, class_prompts, info_nce_loss, load_adapters, save_adapters, train_adapters,
)
from keepset.scoring.semantic import (
    clip_scores, knn_distances, minmax, sample_diversity_scores, semantic_alignment_scores,
)


def test_minmax_hand_values_and_constant():
    assert np.allclose(minmax([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    assert np.allclose(minmax([5.0, 5.0]), [0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        minmax([1.0, np.nan])


def test_sas_matches_a_python_loop():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(30, 5)), rng.normal(size=(4, 5))
    y = rng.integers(0, 4, 30)
    expected = [float(img[i] @ txt[y[i]] / (np.linalg.norm(img[i]) * np.linalg.norm(txt[y[i]]))) for i in range(30)]
    assert np.allclose(semantic_alignment_scores(img, txt, y), expected, atol=1e-5)
    assert np.allclose(clip_scores(img, txt, y), expected, atol=1e-5)


def test_clip_score_per_caption():
    rng = np.random.default_rng(1)
    img, cap = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    expected = [sum(a * b for a, b in zip(img[i], cap[i]))
                / math.sqrt(sum(a * a for a in img[i]) * sum(b * b for b in cap[i])) for i in range(7)]
    assert np.allclose(clip_scores(img, cap), expected, atol=1e-5)


def test_sas_bad_inputs():
    with pytest.raises(ValueError, match="outside"):
        semantic_alignment_scores(np.ones((3, 2)), np.ones((2, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match="dim"):
        semantic_alignment_scores(np.ones((3, 2)), np.ones((2, 3)), [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        semantic_alignment_scores(np.full((3, 2), np.nan), np.ones((2, 2)), [0, 1, 1])


def _sds_sklearn(emb, labels, k):
    from sklearn.neighbors import NearestNeighbors

    out = np.zeros(len(emb))
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        kc = min(k, len(pos))
        if kc < 2:
            continue
        dist, _ = NearestNeighbors(n_neighbors=kc, algorithm="brute").fit(emb[pos]).kneighbors(emb[pos])
        out[pos] = dist[:, 1:].mean(1)
    return out


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_sds_matches_sklearn_grouped_by_actual_labels(backend):
    if backend == "faiss":
        pytest.importorskip("faiss", reason="faiss-cpu not installed")
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(200, 6)).astype(np.float32)
    labels = rng.permutation(np.repeat([0, 1, 2, 3], [90, 60, 47, 3]))  # interleaved, one class smaller than K
    got = sample_diversity_scores(emb, labels, k=5, backend=backend)
    assert np.allclose(got, _sds_sklearn(emb, labels, 5), atol=1e-4)
    # grouping follows the labels: relabelling a sample changes its neighbours
    labels2 = labels.copy()
    labels2[0] = (labels[0] + 1) % 3
    assert not np.isclose(sample_diversity_scores(emb, labels2, 5, backend=backend)[0], got[0])


def test_sds_singleton_class_is_zero_and_k_checked():
    emb = np.array([[0.0, 0.0], [3.0, 4.0], [9.0, 9.0]], dtype=np.float32)
    got = sample_diversity_scores(emb, [0, 0, 1], k=10)
    assert np.allclose(got, [5.0, 5.0, 0.0])
    with pytest.raises(ValueError, match="k must be"):
        sample_diversity_scores(emb, [0, 0, 1], k=1)


def test_knn_torch_batches_equal_faiss_or_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    expected = np.sort(d, axis=1)[:, :4]
    assert np.allclose(knn_distances(x, 4, backend="torch", batch_size=7), expected, atol=1e-4)


def _info_nce_loop(img, txt, labels, t):
    """Independent scalar-loop computation of the loss documented in keepset.encoders.adapters."""
    classes = sorted(set(labels.tolist()))
    img = img / img.norm(dim=1, keepdim=True)
    txt = txt / txt.norm(dim=1, keepdim=True)
    b = len(labels)
    i2t = 0.0
    for i in range(b):
        logits = [float(img[i] @ txt[c]) / t for c in classes]
        i2t += -(logits[classes.index(int(labels[i]))] - math.log(sum(math.exp(v) for v in logits)))
    i2t /= b
    t2i = 0.0
    for c in classes:
        logits = [float(img[i] @ txt[c]) / t for i in range(b)]
        lse = math.log(sum(math.exp(v) for v in logits))
        pos = [i for i in range(b) if int(labels[i]) == c]
        t2i += sum(-(logits[i] - lse) for i in pos) / len(pos)
    t2i /= len(classes)
    return 0.5 * (i2t + t2i)


def test_info_nce_with_duplicate_classes_matches_loop():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(9, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 3, 3, 1, 0, 3, 1, 1, 3])  # duplicates, classes 2 and 4 absent
    got = float(info_nce_loss(img, txt, labels, 0.5))
    assert got == pytest.approx(_info_nce_loop(img, txt, labels, 0.5), rel=1e-5)


def test_adapters_identity_init_separate_modules_and_roundtrip(tmp_path):
    a = ClipAdapters(4, 4)
    assert torch.equal(a.image.weight, torch.eye(4)) and a.image is not a.text
    b = ClipAdapters(6, 10, 3)
    assert b.image.weight.shape == (3, 6) and b.text.weight.shape == (3, 10)
    path = save_adapters(b, tmp_path / "ad.safetensors")
    c = load_adapters(path)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    assert np.allclose(b.transform_images(x), c.transform_images(x))
    with pytest.raises(FileExistsError):
        save_adapters(b, path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable"):
        load_adapters(tmp_path / "bad.safetensors")


def test_train_adapters_aligns_and_is_seeded():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    labels = np.repeat([0, 1, 2], 40)
    img = (centers[labels] + 0.3 * rng.normal(size=(120, 8))).astype(np.float32)
    txt = rng.normal(size=(3, 12)).astype(np.float32)  # different dim: d_img -> d, d_txt -> d
    a1, h1 = train_adapters(img, txt, labels, dim=8, epochs=40, batch_size=32, lr=1e-2, seed=1, progress=False)
    a2, h2 = train_adapters(img, txt, labels, dim=8, epochs=40, batch_size=32, lr=1e-2, seed=1, progress=False)
    assert h1 == h2 and h1[-1] < h1[0]
    sas = semantic_alignment_scores(a1.transform_images(img), a1.transform_texts(txt), labels)
    wrong = semantic_alignment_scores(a1.transform_images(img), a1.transform_texts(txt), (labels + 1) % 3)
    assert (sas > wrong).mean() > 0.95
    with pytest.raises(ValueError, match="labels has"):
        train_adapters(img, txt, labels[:5], progress=False)


def test_prompts_and_template_average():
    assert class_prompts(["cat", "dog"], ["A photo of a {}", "a {class}"]) == [
        "A photo of a cat", "a cat", "A photo of a dog", "a dog"]
    with pytest.raises(ValueError, match="no '{}'"):
        class_prompts(["cat"], ["no slot"])
    emb = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [1.0, 0.0]])
    assert np.allclose(average_templates(emb, 2), [[0.5, 0.5], [1.0, 0.0]])


def test_sds_knn_auto_is_exact_at_todays_sizes_and_ivf_tracks_exact():
    from scipy.stats import spearmanr

    from keepset.scoring.knn import APPROX_EXACT_MAX, AUTO_EXACT_MAX

    rng = np.random.default_rng(4)
    centres = rng.normal(scale=4.0, size=(40, 16))
    emb = (centres[rng.integers(0, 40, 2400)] + rng.normal(size=(2400, 16))).astype(np.float32)
    labels = np.arange(2400) % 3  # classes of 800 <= AUTO_EXACT_MAX: "auto" (the default) is the exact search
    assert 800 <= AUTO_EXACT_MAX
    exact = sample_diversity_scores(emb, labels, 10, knn="exact")
    assert sample_diversity_scores(emb, labels, 10).tobytes() == exact.tobytes()
    assert np.allclose(exact, _sds_sklearn(emb, labels, 10), atol=1e-4)
    # one class above APPROX_EXACT_MAX: the inverted file's SDS ranks the samples as the exact one does
    big = (centres[rng.integers(0, 40, APPROX_EXACT_MAX + 1500)]
           + rng.normal(size=(APPROX_EXACT_MAX + 1500, 16))).astype(np.float32)
    one = np.zeros(len(big), dtype=np.int64)
    ivf = sample_diversity_scores(big, one, 10, knn="ivf", seed=3)
    ref = sample_diversity_scores(big, one, 10, knn="exact")
    assert spearmanr(ivf, ref)[0] >= 0.99 and np.all(ivf >= ref - 1e-4)  # approximate neighbours are never nearer


def test_sds_duplicate_is_a_neighbour_at_zero():
    emb = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    assert np.array_equal(sample_diversity_scores(emb, [0, 0, 0], k=3, knn="exact"), [2.5, 2.5, 5.0])
    with pytest.raises(ValueError, match="unknown kNN method"):
        sample_diversity_scores(emb, [0, 0, 0], k=3, knn="annoy")


def test_cli_knn_flag_is_read_by_sds_only(tmp_path, capsys):
    from keepset.cli.main import build_parser, main
    from keepset.cli.score import _method_options

    out = tmp_path / "s.parquet"
    assert main(["score", "--data", "digits", "--method", "sas", "--knn", "ivf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--knn does not apply to --method sas" in err and "clip-powered, sds" in err and not out.exists()
    for method in ("sds", "clip-powered"):
        args = build_parser().parse_args(["score", "--data", "digits", "--method", method, "--knn", "ivf",
                                          "--out", str(out)])
        assert _method_options(args)["knn"] == "ivf"
