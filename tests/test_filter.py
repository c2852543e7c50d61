"""``keepset filter`` on a user's own data: string ids end to end, trusted ids, a given reference, joins by id,
refusals before any work."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from keepset.cli.main import main
from keepset.data import add_label_noise, load_spec
from keepset.io import read_keep_list, read_score_table


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """Digits as a user's own npz: 32-hex-digit uids, 30% of the non-trusted labels flipped (known to the test only)."""
    d = tmp_path_factory.mktemp("own")
    s = load_spec("digits")
    rng = np.random.default_rng(3)
    uids = np.array([f"{v:032x}" for v in rng.choice(2**62, len(s), replace=False)])
    trusted = rng.choice(len(s), 300, replace=False)
    others = np.setdiff1d(np.arange(len(s)), trusted)
    labels = s.labels.copy()
    noisy, corrupted = add_label_noise(labels[others], 0.3, "symmetric", 10, seed=1)
    labels[others] = noisy
    np.savez(d / "mine.npz", features=s.get_inputs().reshape(len(s), -1), labels=labels, ids=uids)
    np.save(d / "trusted.npy", uids[trusted])
    truth = dict(zip(uids[others].tolist(), corrupted.tolist()))
    out = d / "run"
    assert main(["filter", "--data", f"npz:{d / 'mine.npz'}", "--trusted-ids", str(d / "trusted.npy"),
                 "--out", str(out), "--quiet"]) == 0
    return d, out, uids, trusted, truth


def test_filter_finds_the_flipped_labels_by_id(own_data):
    d, out, uids, trusted, truth = own_data
    t = read_score_table(out / "scores.parquet")
    assert set(t["id"].tolist()) == set(truth) and t["id"].dtype.kind == "U"  # the trusted ids are not filtered
    flagged = ~t["keep"]
    corrupted = np.array([truth[i] for i in t["id"]])
    tp = (flagged & corrupted).sum()
    precision, recall = tp / flagged.sum(), tp / corrupted.sum()
    assert precision > 0.85 and recall > 0.8, (precision, recall)
    keep = read_keep_list(out / "keep.npy")
    assert set(keep.tolist()) == set(t["id"][t["keep"]].tolist())
    assert set(read_keep_list(out / "trusted.npy").tolist()) == set(uids[trusted].tolist())
    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == len(truth) and s["n_trusted"] == 300 and s["n_holdout"] == 60
    assert abs(s["quality"]["estimated"] - (1 - np.mean(list(truth.values())))) < 0.06
    assert abs(s["quality"]["reference_check"] - 0.7) < 0.06
    for f in ("manifest.json", "model.safetensors", "reference.safetensors", "dynamics/recorder.json"):
        assert (out / f).exists()


def test_shuffled_table_gives_the_same_keep_set_and_another_runs_table_is_refused(own_data, tmp_path, capsys):
    d, out, *_ = own_data
    table = pq.read_table(out / "scores.parquet")
    perm = np.random.default_rng(0).permutation(table.num_rows)
    pq.write_table(table.take(pa.array(perm)), tmp_path / "shuffled.parquet")
    assert main(["select", "--scores", str(tmp_path / "shuffled.parquet"), "--method", "stage2", "--dynamics",
                 str(out / "dynamics"), "--out", str(tmp_path / "k.npy")]) == 0
    assert set(read_keep_list(tmp_path / "k.npy").tolist()) == set(read_keep_list(out / "keep.npy").tolist())
    # another run's table (the demo's digits, integer ids): refused, nothing written
    other = tmp_path / "other.parquet"
    from keepset.io import write_score_table

    write_score_table(other, np.arange(50), {"x": np.zeros(50)}, labels=np.zeros(50, int))
    assert main(["select", "--scores", str(other), "--method", "stage2", "--dynamics", str(out / "dynamics"),
                 "--out", str(tmp_path / "k2.npy")]) == 2
    assert "cannot be the same run" in capsys.readouterr().err
    # the same kind of ids, but only part of them: names how many differ
    pq.write_table(table.take(pa.array(perm[:100])), tmp_path / "part.parquet")
    assert main(["select", "--scores", str(tmp_path / "part.parquet"), "--method", "stage2", "--dynamics",
                 str(out / "dynamics"), "--out", str(tmp_path / "k3.npy")]) == 2
    err = capsys.readouterr().err
    assert f"record {table.num_rows - 100} ids that the samples lack" in err
    assert not (tmp_path / "k2.npy").exists() and not (tmp_path / "k3.npy").exists()


def test_a_given_reference_checkpoint_is_checked_on_every_trusted_sample(own_data, tmp_path):
    d, out, *_ = own_data
    run2 = tmp_path / "run2"
    assert main(["filter", "--data", f"npz:{d / 'mine.npz'}", "--trusted-ids", str(d / "trusted.npy"),
                 "--reference", str(out / "reference.safetensors"), "--out", str(run2), "--quiet"]) == 0
    s = json.loads((run2 / "summary.json").read_text())
    assert s["n_holdout"] == 300  # the given reference never trained on them here
    assert abs(s["quality"]["reference_check"] - 0.7) < 0.08


def test_bad_input_is_refused_before_any_work(own_data, tmp_path, capsys):
    d, out, *_ = own_data
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    data = f"npz:{d / 'mine.npz'}"
    np.save(tmp_path / "strangers.npy", np.array(["0" * 32, "1" * 32]))
    cases = [
        (["filter", "--data", data, "--out", str(tmp_path / "a")], "give --trusted SPEC"),
        (["filter", "--data", data, "--trusted-ids", str(tmp_path / "strangers.npy"), "--out", str(tmp_path / "b")],
         "2 of 2 ids are not in the data"),
        (["filter", "--data", data, "--trusted-ids", str(d / "trusted.npy"), "--out", str(out)], "already holds"),
        (["filter", "--data", data, "--trusted-ids", str(d / "trusted.npy"), "--holdout", "1.5",
          "--out", str(tmp_path / "c")], "holdout"),
        (["filter", "--data", data, "--trusted-ids", str(d / "trusted.npy"), "--temperature", "0",
          "--out", str(tmp_path / "d")], "temperature"),
        (["filter", "--data", data, "--trusted-ids", str(d / "trusted.npy"), "--device", "cuda:7",
          "--out", str(tmp_path / "e")], None),
        (["filter", "--data", data, "--trusted-ids", str(d / "nothing.npy"), "--out", str(tmp_path / "f")],
         "not found"),
    ]
    import torch

    for argv, words in cases:
        if words is None:
            if torch.cuda.is_available():
                continue
            words = "CUDA is not available"
        assert main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["strangers.npy"]  # no output folder was created
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_make_noisy_copy_then_filter_reports_detection_against_the_recorded_corruption(tmp_path, capsys):
    ids = load_spec("digits").ids
    trusted = np.random.default_rng(0).choice(ids, 300, replace=False)
    np.save(tmp_path / "trusted.npy", trusted)
    copy = tmp_path / "noisy.npz"
    assert main(["make-noisy", "--data", "digits", "--noise", "0.3", "--exclude-ids", str(tmp_path / "trusted.npy"),
                 "--out", str(copy)]) == 0
    with np.load(copy) as z:
        corrupted, labels, true_labels, copy_ids = z["corrupted"], z["labels"], z["true_labels"], z["ids"]
        assert z["images"].shape == (1797, 1, 8, 8)
    assert np.array_equal(corrupted, labels != true_labels)
    assert not corrupted[np.isin(copy_ids, trusted)].any()  # the excluded samples are untouched
    assert abs(corrupted[~np.isin(copy_ids, trusted)].mean() - 0.3) < 0.01
    out = tmp_path / "run"
    assert main(["filter", "--data", f"npz:{copy}", "--trusted-ids", str(tmp_path / "trusted.npy"), "--out", str(out),
                 "--quiet"]) == 0
    assert "against the recorded corruption" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    t = read_score_table(out / "scores.parquet")
    truth = dict(zip(copy_ids.tolist(), corrupted.tolist()))
    c = np.array([truth[i] for i in t["id"]])
    flagged = ~t["keep"]
    assert s["detection"]["precision"] == pytest.approx((flagged & c).sum() / flagged.sum())
    assert s["detection"]["recall"] == pytest.approx((flagged & c).sum() / c.sum())
    assert s["detection"]["f1"] > 0.85 and s["quality"]["true"] == pytest.approx(1 - c.mean())
    # damaged images are recorded the same way
    assert main(["make-noisy", "--data", "digits", "--damage", "blank", "--damage-fraction", "0.1",
                 "--out", str(tmp_path / "blank.npz")]) == 0
    with np.load(tmp_path / "blank.npz") as z:
        assert z["corrupted"].sum() == round(0.1 * 1797) and (z["labels"] == z["true_labels"]).all()
        blanked = z["images"][z["corrupted"]]
        assert np.allclose(blanked, blanked[:, :, :1, :1])  # each damaged image is one constant
    for argv, words in ((["--noise", "0"], "nothing to corrupt"), (["--noise", "1.2"], "[0, 1)"),
                        (["--damage-fraction", "0.2"], "needs --damage"), (["--noise", "0.2", "--out", "x.txt"], ".npz")):
        full = ["make-noisy", "--data", "digits", "--out", str(tmp_path / "y.npz")] + argv
        assert main(full) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "y.npz").exists()
