"""The issues table and the HTML report: values against independent computations, escaping, errors."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("matplotlib")

import keepset  # noqa: E402
from keepset.cli.main import main  # noqa: E402
from keepset.io import OutputExistsError  # noqa: E402
from keepset.report import write_report  # noqa: E402
from keepset.report.thumbnails import encode_png, positions_of, thumbnails  # noqa: E402

PAYLOADS = ["<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "</script>"]


def write_run(folder, columns: dict, *, summary: dict | None = None, directions: dict | None = None,
              meta: dict | None = None):
    """A run folder as `keepset filter` writes it: scores.parquet (+ keepset metadata) and summary.json."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    doc = dict(meta or {})
    if directions is not None:
        doc["directions"] = directions
    if doc:
        table = table.replace_schema_metadata({b"keepset": json.dumps(doc).encode()})
    pq.write_table(table, folder / "scores.parquet")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


def hand_made(n=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"s{i:03d}" for i in range(n)])
    labels = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 3, n))
    mimic = rng.normal(size=n).round(3)
    mimic[5] = mimic[6]  # a tie, broken by id
    loss = rng.random(n)
    keep = mimic > -0.3
    keep[[1, 2]] = ~keep[[1, 2]]  # the filter's decision is not a threshold on mimic_mean
    corrupted = rng.random(n) < 0.3
    cols = {"id": ids, "label": labels.astype(np.int64), "mimic_mean": mimic, "reference_loss": loss.astype(np.float32),
            "reference_pred": pred.astype(np.int64), "corrupted": corrupted, "keep": keep}
    return cols


def expected_rows(cols, names):
    """The issues table computed independently, one dict per id, in the documented order."""
    rows = []
    for i, sid in enumerate(cols["id"]):
        rows.append({"id": sid, "is_issue": not cols["keep"][i], "issue_score": -float(cols["mimic_mean"][i]),
                     "given_label": int(cols["label"][i]), "predicted_label": int(cols["reference_pred"][i]),
                     "given_class": names[cols["label"][i]], "predicted_class": names[cols["reference_pred"][i]],
                     "corrupted": bool(cols["corrupted"][i]), "mimic_mean": float(cols["mimic_mean"][i]),
                     "reference_loss": float(np.float32(cols["reference_loss"][i]))})
    rows.sort(key=lambda r: (not r["is_issue"], -r["issue_score"], r["id"]))
    return rows


def test_issues_table_matches_an_independent_computation_in_any_row_order(tmp_path):
    names = ["cat", "dog", "bird"]
    cols = hand_made()
    write_run(tmp_path / "a", cols, summary={"data": "x", "class_names": names},
              directions={"mimic_mean": "higher_keeps", "reference_loss": "higher_drops"})
    df = keepset.issues(tmp_path / "a")
    assert list(df.columns[:5]) == ["id", "is_issue", "issue_score", "given_label", "predicted_label"]
    exp = expected_rows(cols, names)
    got = df.to_dict("records")
    assert len(got) == len(exp)
    for g, e in zip(got, exp):
        for k, v in e.items():
            assert g[k] == pytest.approx(v) if isinstance(v, float) else g[k] == v, (k, g, e)
    assert df.attrs["issue_score"] == {"from": "mimic_mean", "direction": "higher_keeps"}
    # the same rows in another order give the same table (joined by id, never by position)
    perm = np.random.default_rng(1).permutation(len(cols["id"]))
    write_run(tmp_path / "b", {k: v[perm] for k, v in cols.items()}, summary={"data": "x", "class_names": names},
              directions={"mimic_mean": "higher_keeps", "reference_loss": "higher_drops"})
    pd.testing.assert_frame_equal(df, keepset.issues(tmp_path / "b"))


def test_issue_score_follows_the_direction_of_the_main_score(tmp_path):
    n = 6
    base = {"id": np.arange(n, dtype=np.int64), "label": np.zeros(n, np.int64), "keep": np.arange(n) % 2 == 0}
    loss = np.array([0.5, 2.0, 0.1, 3.0, 0.7, 0.2])
    write_run(tmp_path / "loss", {**base, "reference_loss": loss})  # no metadata: the name says higher drops
    df = keepset.issues(tmp_path / "loss")
    assert dict(zip(df["id"], df["issue_score"])) == dict(zip(range(n), loss))
    assert df["id"].tolist() == [3, 1, 5, 4, 0, 2]  # flagged (odd ids) worst first, then kept ones
    write_run(tmp_path / "custom", {**base, "quality": loss}, directions={"quality": "higher_keeps"})
    df = keepset.issues(tmp_path / "custom")
    assert dict(zip(df["id"], df["issue_score"])) == dict(zip(range(n), -loss))
    write_run(tmp_path / "none", {**base, "whatever": loss})  # no direction known: flagged = 1, kept = 0
    df = keepset.issues(tmp_path / "none")
    assert dict(zip(df["id"], df["issue_score"])) == {i: float(i % 2) for i in range(n)}
    assert df["predicted_label"].isna().all() and df["given_label"].tolist() == [0] * n


def test_todays_demo_table_and_keep_npy(tmp_path):
    n = 8
    cols = {"id": np.arange(10, 10 + n, dtype=np.int64), "label": np.arange(n) % 3, "noisy": np.arange(n) < 3,
            "true_label": np.arange(n) % 3, "mimic_mean": np.linspace(-1, 1, n)}
    write_run(tmp_path / "r", cols, summary={"data": "digits", "kept": 5})
    np.save(tmp_path / "r" / "keep.npy", np.array([17, 13, 14, 15, 16], dtype=np.int64))
    df = keepset.issues(tmp_path / "r")
    assert set(df.loc[df.is_issue, "id"]) == {10, 11, 12}
    assert dict(zip(df["id"], df["corrupted"])) == {10 + i: i < 3 for i in range(n)}
    assert df["predicted_label"].isna().all() and str(df["predicted_label"].dtype) == "Int64"
    np.save(tmp_path / "r" / "keep.npy", np.array([17, 99], dtype=np.int64))
    with pytest.raises(ValueError, match="keep list belongs to another run"):
        keepset.issues(tmp_path / "r")


@pytest.mark.parametrize("make, err, match", [
    (lambda p: None, FileNotFoundError, "run folder not found"),
    (lambda p: p.mkdir(), FileNotFoundError, "no scores.parquet"),
    (lambda p: (p.mkdir(), (p / "scores.parquet").write_bytes(b"PAR1 not really")), ValueError,
     "not a readable parquet"),
    (lambda p: write_run(p, {"id": np.array([1, 1]), "keep": np.array([True, False])}), ValueError, "unique"),
    (lambda p: write_run(p, {"id": np.array([1, 2]), "mimic_mean": np.zeros(2)}), ValueError, "no filter decision"),
    (lambda p: write_run(p, {"id": np.array([1, 2]), "label": np.array([0, 5]), "keep": np.array([True, False])},
                         summary={"class_names": ["a", "b"]}), ValueError, "outside"),
    (lambda p: (write_run(p, {"id": np.array([1]), "keep": np.array([True])}),
                (p / "summary.json").write_text("{oops")), ValueError, "not readable JSON"),
])
def test_bad_run_folders_give_one_line_errors(tmp_path, make, err, match):
    path = tmp_path / "run"
    make(path)
    with pytest.raises(err, match=match) as info:
        keepset.issues(path)
    assert "\n" not in str(info.value)


def test_cli_writes_report_and_issues_and_refuses_to_overwrite(tmp_path, capsys):
    names = ["cat", "dog", "bird"]
    cols = hand_made()
    run = write_run(tmp_path / "run", cols, summary={"data": "nowhere:x", "class_names": names})
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (run / "report.html").read_text(encoding="utf-8")
    back = pd.read_parquet(run / "issues.parquet")
    pd.testing.assert_frame_equal(back, keepset.issues(run), check_dtype=False)
    meta = json.loads(pq.read_schema(run / "issues.parquet").metadata[b"keepset"])
    assert meta["issue_score"]["from"] == "mimic_mean" and meta["directions"]["issue_score"] == "higher_drops"
    assert "no thumbnails: the data" in html  # the data can't be loaded: a note, the page still renders
    assert main(["report", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "report.html").read_text(encoding="utf-8") == html
    with pytest.raises(OutputExistsError):
        write_report(run)
    assert main(["report", str(run), "--overwrite", "--max-gallery", "3"]) == 0
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run folder not found" in err
    assert main(["report", str(run), "--out", str(tmp_path / "x.txt")]) == 2


def _tags(html: str) -> list[tuple[str, list]]:
    """Every start tag of the document with its attributes, as a browser's tokenizer sees them."""
    from html.parser import HTMLParser

    found = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    P().feed(html)
    return found


def _gallery_json(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>', html, re.S)
    assert m, "no gallery data block"
    return json.loads(m.group(1))


def test_every_string_from_the_data_is_escaped(tmp_path):
    n = 9
    ids = np.array([PAYLOADS[i % 3] + str(i) for i in range(n)])
    cols = {"id": ids, "label": np.arange(n) % 3, "caption": np.array([PAYLOADS[(i + 1) % 3] for i in range(n)]),
            "mimic_mean": np.linspace(-1, 1, n), "reference_pred": (np.arange(n) + 1) % 3,
            "keep": np.arange(n) >= 4}
    summary = {"data": PAYLOADS[0], "class_names": PAYLOADS, "warnings": PAYLOADS, PAYLOADS[1]: PAYLOADS[2],
               "quality": {"estimated": 0.5, "reference_check": None, PAYLOADS[0]: PAYLOADS[1]}}
    run = write_run(tmp_path / PAYLOADS[1], cols, summary=summary)  # the folder name itself carries markup
    res = write_report(run)
    html = res["html"].read_text(encoding="utf-8")
    for p in PAYLOADS[:2]:
        assert p not in html
    assert html.count("</script>") == 2  # the data block's and the gallery script's own closing tags
    tags = _tags(html)
    assert [t for t, a in tags if t == "script"] == ["script", "script"]
    assert not [(t, a) for t, a in tags for k, _ in a if k.startswith("on")]  # no event-handler attribute
    assert all(dict(a).get("src", "data:").startswith("data:image/png;base64,") for t, a in tags if t == "img")
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # class names, warnings, details: as text
    data = _gallery_json(html)
    block = re.search(r'id="gallery-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in block and ">" not in block and "&" not in block
    assert data["classes"] == PAYLOADS  # escaping loses nothing: JSON.parse gives the exact strings back
    assert {r[0] for r in data["rows"]} == {ids[i] for i in range(4)}
    assert {r[5] for r in data["rows"]} == {PAYLOADS[(i + 1) % 3] for i in range(4)}
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", html, re.I)  # no external resource
    assert "default-src 'none'" in html


def test_thumbnails_are_the_samples_of_their_ids():
    from keepset.data import load_spec

    digits = load_spec("digits")
    rng = np.random.default_rng(0)
    want = rng.choice(digits.ids, 12, replace=False)
    want = np.r_[want, [10**9]]  # an id the data does not hold
    pos, found = positions_of(digits.ids[::-1].copy(), want)
    index = {int(v): i for i, v in enumerate(digits.ids[::-1])}
    assert found.tolist() == [True] * 12 + [False]
    assert pos[:12].tolist() == [index[int(v)] for v in want[:12]]
    uris, note = thumbnails("digits", want)
    assert uris[-1] is None and "1 shown ids are not in the data" in note
    from PIL import Image

    for sid, uri in zip(want[:12], uris[:12]):
        im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert im.size == (8, 8) and im.mode == "L"
        expected = np.clip(digits.inputs[int(sid), 0] * 255 + 0.5, 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(im), expected)
    big = encode_png(np.random.default_rng(0).random((3, 200, 100)), max_side=64)
    assert Image.open(io.BytesIO(base64.b64decode(big.split(",", 1)[1]))).size == (32, 64)


def test_feature_data_renders_without_thumbnails(tmp_path):
    n = 30
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", features=rng.normal(size=(n, 4)).astype(np.float32), labels=np.arange(n) % 2)
    cols = {"id": np.arange(n, dtype=np.int64), "label": np.arange(n) % 2, "mimic_mean": rng.normal(size=n),
            "keep": rng.random(n) < 0.6}
    run = write_run(tmp_path / "run", cols, summary={"data": f"npz:{tmp_path / 'f.npz'}"})
    html = write_report(run)["html"].read_text(encoding="utf-8")
    assert "feature vectors" in html and len(_gallery_json(html)["thumbs"]) == 0


def test_gallery_lists_flagged_rows_worst_first_with_caps(tmp_path):
    n = 50
    cols = {"id": np.arange(n, dtype=np.int64)[::-1].copy(), "label": np.arange(n) % 10,
            "mimic_mean": np.linspace(1, -1, n), "keep": np.arange(n) % 2 == 0}
    run = write_run(tmp_path / "run", cols, summary={"data": "digits"})
    res = write_report(run, max_gallery=10, max_thumbnails=4)
    data = _gallery_json(res["html"].read_text(encoding="utf-8"))
    flagged = [(-m, i) for i, m, k in zip(cols["id"], cols["mimic_mean"], cols["keep"]) if not k]
    assert [r[0] for r in data["rows"]] == [int(i) for _, i in sorted(flagged, reverse=True)][:10]
    assert [r[8] for r in data["rows"]] == [0, 1, 2, 3] + [None] * 6 and len(data["thumbs"]) == 4
    assert res["gallery_rows"] == 10 and res["flagged"] == 25


def _detection_results(path):
    cells = {}
    for kind in ("symmetric", "asymmetric"):
        for rate in (0.2, 0.6):
            methods = {m: {"precision": 0.5 + b, "recall": 0.6, "f1": 0.55, "auroc": 0.9 - b - rate / 4,
                           "quality_est": 0.7, "quality_err": 0.1, "seconds": 0.1}
                       for m, b in (("stage2", 0.1), ("loss", 0.2))}
            cells[f"kind={kind}|rate={rate}|seed=0"] = {
                "seed": 0, "kind": kind, "rate": rate, "true_quality": 1 - rate, "reference_accuracy": 0.9,
                "head_accuracy": 0.8, "gradmimic_head_accuracy": 0.85, "head_lr": 0.1, "proxy_seconds": 1.0,
                "methods": methods}
    config = {"data": "digits", "model": "mlp", "kinds": ["symmetric", "asymmetric"], "rates": [0.2, 0.6],
              "methods": ["stage2", "loss"], "ref_epochs": 1, "head_epochs": 1, "batch_size": 64, "lr": 0.05,
              "head_lr": None, "early_epochs": 2, "folds": 5}
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"config": config, "cells": cells}))
    return path


def test_benchmark_folder_report(tmp_path):
    folder = _detection_results(tmp_path / "bench")
    res = write_report(folder)
    html = res["html"].read_text(encoding="utf-8")
    assert res["issues"] is None and res["kind"] == "detection" and res["plots"] == 2
    assert len(re.findall(r'<img class="fig" src="data:image/png;base64,', html)) == 2
    assert "<th class=\"t\">method</th>" in html and ">stage2<" in html and ">loss<" in html
    assert not (folder / "auroc_vs_rate.png").exists()  # re-made in a temporary folder, the benchmark's untouched
    (folder / "results.json").write_text("[]")
    with pytest.raises(ValueError, match="not a keepset benchmark results file"):
        write_report(folder, overwrite=True)


def test_report_scale_bench_joins_thumbnails_by_id(tmp_path, capsys):
    from PIL import Image

    from keepset.bench import report_scale
    from keepset.data import load_spec

    assert report_scale.main(["--n", "400", "--out", str(tmp_path)]) == 0
    assert "report of 400 samples (160 flagged" in capsys.readouterr().out
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    data = _gallery_json(html)
    images = load_spec(f"idx:{tmp_path / 'data'}")  # rows of scores.parquet are in shuffled id order
    for row in data["rows"][:20]:
        png = Image.open(io.BytesIO(base64.b64decode(data["thumbs"][row[8]].split(",", 1)[1])))
        expected = np.clip(images.inputs[images.ids == row[0]][0, 0] * 255 + 0.5, 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(png), expected)


def test_image_text_pairs_without_labels(tmp_path):
    n = 12
    uids = np.array([f"{i:032x}" for i in range(n)])
    cols = {"id": uids, "caption": np.array([f"a photo of thing {i}" for i in range(n)]),
            "clip_score": np.linspace(0, 1, n), "keep": np.arange(n) >= 5}
    run = write_run(tmp_path / "pairs", cols, summary={"quality": {"estimated": 7 / 12}})
    df = keepset.issues(run)
    assert df["given_label"].isna().all() and df["predicted_label"].isna().all()
    assert df.loc[df.is_issue, "id"].tolist() == [uids[i] for i in (0, 1, 2, 3, 4)]  # lowest CLIP score first
    res = write_report(run)
    html = res["html"].read_text(encoding="utf-8")
    assert "No class labels (image-text pairs)" in html and "does not say which data" in html
    data = _gallery_json(html)
    assert [r[5] for r in data["rows"]] == [f"a photo of thing {i}" for i in range(5)]
    assert all(r[1] is None and r[2] is None for r in data["rows"])
    res = write_report(run, overwrite=True, max_gallery=0)
    html = res["html"].read_text(encoding="utf-8")
    assert "gallery is turned off" in html and "gallery-data" not in html


def test_detection_metrics_computed_from_the_table_when_the_summary_has_none(tmp_path):
    n = 10
    cols = {"id": np.arange(n, dtype=np.int64), "label": np.zeros(n, np.int64),
            "mimic_mean": np.array([-5, -4, -3, -2, 1, 2, 3, 4, 5, 6], dtype=float),
            "corrupted": np.isin(np.arange(n), [0, 1, 5, 6, 7]), "keep": np.arange(n) >= 4}
    run = write_run(tmp_path / "run", cols, summary={"quality": {"estimated": 0.6}})
    html = write_report(run, thumbnails=False)["html"].read_text(encoding="utf-8")
    # flagged 0-3, corrupted 0, 1, 5, 6, 7: tp 2, fp 2, fn 3 -> precision 0.5, recall 0.4, F1 4/9;
    # AUROC of -mimic_mean: corrupted ranks {10, 9, 5, 4, 3} among 10 -> (31 - 15) / 25 = 0.64
    for name, value in (("precision", "0.500"), ("recall", "0.400"), ("f1", "0.444"), ("auroc", "0.640")):
        assert f'<td class="t">{name}</td><td>{value}</td>' in html, name
