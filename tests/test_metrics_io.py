
import numpy as np
import pytest

from keepset.evaluation import auroc, detection_metrics
from keepset.io import (
    OutputExistsError, datacomp_to_uids, read_keep_list, read_score_table, uids_to_datacomp, write_keep_list,
    write_score_table,
)


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 300).astype(float)
    y = rng.random(300) < 0.3
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))  # sklearn's order: (y_true, y_score)
    assert auroc(y.astype(int), s) == pytest.approx(roc_auc_score(y, s))  # 0/1 integers too
    assert np.isnan(auroc(np.zeros(300, bool), s))
    with pytest.raises(ValueError, match=r"y_true .*\(y_true, y_score\)"):
        auroc(s, y)  # the old (scores, positives) order is refused, not silently wrong


def test_detection_metrics_follow_sklearn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(1)
    y_true = rng.random(200) < 0.2
    y_pred = rng.random(200) < 0.5  # many more flags than corrupted samples: precision != recall
    m = detection_metrics(y_true, y_pred)
    assert m["precision"] == pytest.approx(precision_score(y_true, y_pred))
    assert m["recall"] == pytest.approx(recall_score(y_true, y_pred))
    assert m["f1"] == pytest.approx(f1_score(y_true, y_pred))
    assert m["precision"] < m["recall"] and m["flagged"] == int(y_pred.sum())


def test_detection_metrics_by_hand():
    # corrupted = [1, 0, 1, 0, 1], flagged = [1, 1, 0, 0, 0]: tp 1, fp 1, fn 2
    m = detection_metrics(np.array([1, 0, 1, 0, 1], bool), np.array([1, 1, 0, 0, 0], bool))
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert detection_metrics(np.ones(3, bool), np.zeros(3, bool)) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                                       "flagged": 0}


def test_score_table_roundtrip_and_no_silent_overwrite(tmp_path):
    p = tmp_path / "s.parquet"
    write_score_table(p, np.array([5, 6, 7]), {"a": np.array([0.1, 0.2, 0.3]), "k": np.array([1, 0, 1], bool)},
                      labels=[0, 1, 0], directions={"a": "higher_drops"})
    t = read_score_table(p)
    assert t["id"].tolist() == [5, 6, 7] and t["a"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert t["label"].tolist() == [0, 1, 0]
    from keepset.io import column_direction, read_table_metadata

    meta = read_table_metadata(p)
    assert column_direction("a", meta) == "higher_drops" and column_direction("k", meta) is None
    before = p.read_bytes()
    with pytest.raises(OutputExistsError):
        write_score_table(p, [1], {"a": np.array([1.0])})
    with pytest.raises(ValueError, match="shape"):
        write_score_table(tmp_path / "bad.parquet", [1, 2], {"a": np.array([1.0])}, overwrite=True)
    with pytest.raises(ValueError, match="duplicate"):
        write_score_table(tmp_path / "dup.parquet", [1, 1], {"a": np.array([1.0, 2.0])})
    assert p.read_bytes() == before and not (tmp_path / "bad.parquet").exists()
    assert [f.name for f in tmp_path.iterdir()] == ["s.parquet"]  # no temp files left behind
    # a foreign table keyed by DataComp's uid, without labels
    import pyarrow as pa
    import pyarrow.parquet as pq

    uids = [f"{i:032x}" for i in range(3)]
    pq.write_table(pa.table({"uid": uids, "clip_score": [0.3, 0.2, 0.1]}), tmp_path / "dc.parquet")
    with pytest.raises(ValueError, match="--id-column"):
        read_score_table(tmp_path / "dc.parquet")
    dc = read_score_table(tmp_path / "dc.parquet", id_column="uid")
    assert dc["id"].tolist() == uids and "label" not in dc
    with pytest.raises(IsADirectoryError):
        read_score_table(tmp_path)
    (tmp_path / "corrupt.parquet").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="parquet"):
        read_score_table(tmp_path / "corrupt.parquet")


def test_keep_lists_and_datacomp_uids(tmp_path):
    write_keep_list(tmp_path / "k.npy", np.array(["a/1.png", "b/2.png"]))
    assert read_keep_list(tmp_path / "k.npy").tolist() == ["a/1.png", "b/2.png"]
    uids = ["ffffffffffffffff0000000000000001", "00000000000000010000000000000002"]
    pairs = uids_to_datacomp(uids)
    assert pairs.dtype == np.dtype("u8,u8")
    assert pairs[0][0] == 1 and pairs[0][1] == 2  # sorted
    assert sorted(datacomp_to_uids(pairs)) == sorted(uids)
    with pytest.raises(ValueError, match="32 hex"):
        uids_to_datacomp(["xyz"])


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os

    from keepset.io import write_text_atomic

    p = write_text_atomic(tmp_path / "a.txt", "x")
    umask = os.umask(0); os.umask(umask)
    assert (p.stat().st_mode & 0o777) == 0o666 & ~umask
