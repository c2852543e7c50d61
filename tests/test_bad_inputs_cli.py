"""Bad inputs through the command line (``keepset.cli.main.main(argv)``), the CLI half of the bad-input matrix
(the API half: tests/test_bad_inputs_lower.py).

Every case must end with exit status 2 and exactly one line on stderr, ``keepset COMMAND: error: ...``, naming
the offending flag or file; no traceback anywhere; and every file under the case's folder (a previous run
folder, a previous keep list and its manifest, a score table ...) byte-identical afterwards, with no file added.

Each case is ``fn(tmp_path, run) -> (command, argv, needle)``: it builds its inputs under ``tmp_path`` (``run``
is a copy of a real demo run folder there) and returns the argv to run and a string the message must contain.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from keepset.cli.main import main
from keepset.io import write_keep_list, write_score_table

CASES: list = []


def case(fn):
    CASES.append(pytest.param(fn, id=fn.__name__.removeprefix("bad_")))
    return fn


def _snapshot(root: Path) -> dict[str, bytes]:
    return {os.fsdecode(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """A real (short) demo run folder: scores.parquet, keep.npy, checkpoints, dynamics/, manifest.json."""
    out = tmp_path_factory.mktemp("demo-run") / "run"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    return out


@pytest.fixture
def run(tmp_path, demo_run) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(demo_run, dst)
    return dst


def _check_one_line_error(rc, out, err, command, needle):
    assert rc == 2, (rc, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(" ".join(["keepset", command]).strip() + ": error: "), lines[0]
    assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize("build", CASES)
def test_bad_input_gets_one_line_exit_2_and_changes_no_file(tmp_path, run, build, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output folder (bench's out/bench/...) would land here
    command, argv, needle = build(tmp_path, run)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    _check_one_line_error(rc, out, err, command, needle)
    assert _snapshot(tmp_path) == before


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 40
    from tests.test_bad_inputs_lower import CASES as LOWER

    assert len(CASES) + len(LOWER) >= 60


# ---------------------------------------------------------------- helpers


def _table(path: Path, ids, **cols) -> Path:
    n = len(ids)
    write_score_table(path, np.asarray(ids), cols or {"el2n": np.linspace(0, 1, n)}, labels=np.arange(n) % 2)
    return path


def _previous_keep_list(tmp_path: Path) -> Path:
    """A keep list and its manifest from an earlier select: must survive a failed select byte for byte."""
    out = tmp_path / "keep.npy"
    write_keep_list(out, np.arange(5))
    (tmp_path / "keep.npy.manifest.json").write_text('{"method": "earlier run"}\n')
    return out


def _demo(run: Path, *extra: str) -> list[str]:
    return ["demo", "--out", str(run.parent / "new-run"), "--quiet", *extra]


# ---------------------------------------------------------------- keepset demo

@case
def bad_demo_batch_size_0(tmp_path, run):
    return "demo", _demo(run, "--batch-size", "0"), "--batch-size"


@case
def bad_demo_temperature_0(tmp_path, run):
    return "demo", _demo(run, "--temperature", "0"), "--temperature"


@case
def bad_demo_lr_nan(tmp_path, run):
    return "demo", _demo(run, "--lr", "nan"), "--lr"


@case
def bad_demo_epochs_0(tmp_path, run):
    return "demo", _demo(run, "--epochs", "0"), "--epochs"


@case
def bad_demo_holdout_above_1(tmp_path, run):
    return "demo", _demo(run, "--holdout", "1.5"), "--holdout"


@case
def bad_demo_noise_above_1(tmp_path, run):
    return "demo", _demo(run, "--noise", "1.5"), "--noise"


@case
def bad_demo_seed_negative(tmp_path, run):
    return "demo", _demo(run, "--seed", "-1"), "--seed"


@case
def bad_demo_seed_not_an_integer(tmp_path, run):
    return "demo", _demo(run, "--seed", "1.5"), "--seed"


@case
def bad_demo_out_is_a_file(tmp_path, run):
    return "demo", ["demo", "--out", str(run / "keep.npy"), "--quiet"], "keep.npy"


@case
def bad_demo_out_under_a_file(tmp_path, run):
    return "demo", ["demo", "--out", str(run / "summary.json" / "sub"), "--quiet"], "summary.json"


@case
def bad_demo_out_under_a_read_only_folder(tmp_path, run):
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anywhere
        ro.chmod(0o755)
        pytest.skip("this user can write into a read-only folder (root)")
    return "demo", ["demo", "--out", str(ro / "run"), "--quiet"], "cannot write under"


@case
def bad_demo_out_not_utf8(tmp_path, run):
    name = os.fsdecode(b"run-\xff")
    return "demo", ["demo", "--out", str(tmp_path / name), "--quiet"], "UTF-8"


@case
def bad_demo_existing_run_without_overwrite(tmp_path, run):
    return "demo", ["demo", "--out", str(run), "--quiet"], "--overwrite"


@case
def bad_demo_layers_in_probe_setting(tmp_path, run):
    return "demo", _demo(run, "--layers", "all"), "--layers"


@case
def bad_demo_unknown_data(tmp_path, run):
    return "demo", _demo(run, "--data", "imagenet"), "imagenet"


@case
def bad_demo_missing_npz(tmp_path, run):
    return "demo", _demo(run, "--data", f"npz:{tmp_path / 'missing.npz'}"), "missing.npz"


@case
def bad_demo_unknown_flag(tmp_path, run):
    return "demo", _demo(run, "--bogus", "1"), "--bogus"


@case
def bad_demo_unknown_noise_kind(tmp_path, run):
    return "demo", _demo(run, "--noise-kind", "pairwise"), "--noise-kind"


@case
def bad_demo_unknown_device(tmp_path, run):
    return "demo", _demo(run, "--device", "tpu"), "--device"


# ---------------------------------------------------------------- keepset filter

def _filter(run: Path, *extra: str) -> list[str]:
    return ["filter", "--data", "digits", "--out", str(run.parent / "filtered"), "--quiet", *extra]


@case
def bad_filter_no_reference_source(tmp_path, run):
    return "filter", _filter(run), "--trusted"


@case
def bad_filter_trusted_and_trusted_ids(tmp_path, run):
    return "filter", _filter(run, "--trusted", "digits", "--trusted-ids", str(run / "keep.npy")), "not both"


@case
def bad_filter_trusted_unknown_spec(tmp_path, run):
    return "filter", _filter(run, "--trusted", "clean-digits"), "clean-digits"


@case
def bad_filter_trusted_file_missing(tmp_path, run):
    return "filter", _filter(run, "--trusted", f"npz:{tmp_path / 'clean.npz'}"), "clean.npz"


@case
def bad_filter_trusted_ids_missing(tmp_path, run):
    return "filter", _filter(run, "--trusted-ids", str(tmp_path / "trusted.npy")), "trusted.npy"


@case
def bad_filter_trusted_ids_not_in_data(tmp_path, run):
    ids = tmp_path / "foreign.npy"
    write_keep_list(ids, np.arange(5000, 5010))
    return "filter", _filter(run, "--trusted-ids", str(ids)), "foreign.npy"


@case
def bad_filter_trusted_ids_not_a_keep_list(tmp_path, run):
    return "filter", _filter(run, "--trusted-ids", str(run / "summary.json")), "summary.json"


@case
def bad_filter_reference_missing(tmp_path, run):
    return "filter", _filter(run, "--reference", str(tmp_path / "ref.safetensors")), "ref.safetensors"


@case
def bad_filter_reference_corrupt(tmp_path, run):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    return "filter", _filter(run, "--reference", str(bad)), "bad.safetensors"


@case
def bad_filter_trusted_of_other_classes(tmp_path, run):
    other = tmp_path / "other.npz"
    np.savez(other, features=np.zeros((20, 64), np.float32), labels=np.arange(20) % 2,
             class_names=np.array(["a", "b"]))
    return "filter", _filter(run, "--trusted", f"npz:{other}"), "classes"


@case
def bad_filter_backbone_with_reference(tmp_path, run):
    return "filter", _filter(run, "--reference", str(run / "reference.safetensors"), "--backbone", "cnn"), "--backbone"


@case
def bad_filter_reference_epochs_with_reference(tmp_path, run):
    return "filter", _filter(run, "--reference", str(run / "reference.safetensors"),
                             "--reference-epochs", "5"), "--reference-epochs"


@case
def bad_filter_finetune_with_reference(tmp_path, run):
    return "filter", _filter(run, "--reference", str(run / "reference.safetensors"), "--setting", "finetune"), \
        "--setting"


@case
def bad_filter_into_previous_run(tmp_path, run):
    return "filter", ["filter", "--data", "digits", "--reference", str(run / "reference.safetensors"),
                      "--out", str(run), "--quiet"], "--overwrite"


# ---------------------------------------------------------------- keepset score

def _score(run: Path, method: str, *extra: str, out: Path | None = None) -> list[str]:
    return ["score", "--data", "digits", "--method", method, "--out", str(out or run.parent / "s.parquet"),
            "--quiet", *extra]


def _ckpts(run: Path) -> list[str]:
    return ["--model", str(run / "model.safetensors"), "--reference", str(run / "reference.safetensors")]


@case
def bad_score_missing_model(tmp_path, run):
    return "score", _score(run, "cos", "--model", str(tmp_path / "none.safetensors"), "--reference",
                           str(run / "reference.safetensors")), "none.safetensors"


@case
def bad_score_reference_of_another_architecture(tmp_path, run):
    import torch

    from keepset.models import MLP, save_checkpoint

    torch.manual_seed(0)
    other = tmp_path / "wide.safetensors"
    save_checkpoint(MLP(64, 10, hidden=(32,)), other)
    return "score", _score(run, "proj", "--model", str(run / "model.safetensors"), "--reference", str(other)), \
        "--allow-partial-reference"


@case
def bad_score_temperature_with_cos(tmp_path, run):
    return "score", _score(run, "cos", *_ckpts(run), "--temperature", "2"), "--temperature"


@case
def bad_score_seed_with_proj(tmp_path, run):
    return "score", _score(run, "proj", *_ckpts(run), "--seed", "3"), "--seed"


@case
def bad_score_batch_size_0(tmp_path, run):
    return "score", _score(run, "cos", *_ckpts(run), "--batch-size", "0"), "--batch-size"


@case
def bad_score_no_model(tmp_path, run):
    return "score", _score(run, "proj"), "--model"


@case
def bad_score_out_is_a_folder(tmp_path, run):
    return "score", _score(run, "cos", *_ckpts(run), out=run / "dynamics"), "is a folder"


@case
def bad_score_out_exists(tmp_path, run):
    return "score", _score(run, "cos", *_ckpts(run), out=run / "scores.parquet"), "--overwrite"


@case
def bad_score_k_0(tmp_path, run):
    return "score", _score(run, "sds", "--k", "0"), "--k"


@case
def bad_score_dynamics_lr_negative(tmp_path, run):
    return "score", _score(run, "dynamics", "--dyn-lr", "-1"), "--dyn-lr"


@case
def bad_score_text_encoder_folder_missing(tmp_path, run):
    return "score", _score(run, "sas", "--text-encoder", f"sentence-transformers:{tmp_path / 'st'}"), "st"


@case
def bad_score_clip_folder_missing(tmp_path, run):
    return "score", _score(run, "clip-score", "--image-encoder", f"clip:{tmp_path / 'clipdir'}"), "clipdir"


@case
def bad_score_image_encoder_spec(tmp_path, run):
    return "score", _score(run, "sas", "--image-encoder", "resnet"), "resnet"


@case
def bad_score_encoder_checkpoint_missing(tmp_path, run):
    return "score", _score(run, "sas", "--image-encoder", f"network:{tmp_path / 'enc.safetensors'}"), \
        "enc.safetensors"


@case
def bad_score_flag_of_another_method(tmp_path, run):
    return "score", _score(run, "sas", "--dyn-epochs", "3"), "--dyn-epochs"


# ---------------------------------------------------------------- keepset select

def _select(scores: Path, out: Path, *extra: str) -> list[str]:
    return ["select", "--scores", str(scores), "--out", str(out), *extra]


@case
def bad_select_scores_is_a_folder(tmp_path, run):
    return "select", _select(run, _previous_keep_list(tmp_path), "--overwrite", "--method", "top", "--column",
                             "mimic_mean", "--ratio", "0.5"), "folder"


@case
def bad_select_table_without_id(tmp_path, run):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"uid": np.arange(4), "el2n": np.arange(4.0)}), path)
    return "select", _select(path, tmp_path / "k.npy", "--method", "top", "--column", "el2n", "--ratio", "0.5"), \
        "--id-column"


@case
def bad_select_duplicate_ids(tmp_path, run):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"id": np.array([1, 2, 2, 3]), "el2n": np.arange(4.0)}), path)
    return "select", _select(path, _previous_keep_list(tmp_path), "--overwrite", "--method", "top", "--column",
                             "el2n", "--ratio", "0.5"), "duplicate"


@case
def bad_select_id_column_names_nothing(tmp_path, run):
    return "select", _select(run / "scores.parquet", tmp_path / "k.npy", "--id-column", "uid", "--method", "top",
                             "--column", "mimic_mean", "--ratio", "0.5"), "uid"


def _bad_ratio(value):
    def build(tmp_path, run):
        return "select", _select(run / "scores.parquet", _previous_keep_list(tmp_path), "--overwrite", "--method",
                                 "top", "--column", "mimic_mean", "--ratio", value), "--ratio"
    build.__name__ = f"bad_select_ratio_{value.replace('.', '_')}"
    return case(build)


for _value in ("0", "1.5", "nan", "-0.2"):
    _bad_ratio(_value)


@case
def bad_select_dynamics_of_another_run(tmp_path, run):
    from keepset.recorder import DynamicsRecorder
    from keepset.training.gradmimic import RECORD_FIELDS

    other = tmp_path / "other-dynamics"
    with DynamicsRecorder(other, RECORD_FIELDS) as rec:
        ids = np.arange(100_000, 100_064)
        rec.record(ids, step=0, epoch=0, mimic=np.zeros(64), mimic_normed=np.full(64, 1 / 64), weight=np.zeros(64))
    return "select", _select(run / "scores.parquet", _previous_keep_list(tmp_path), "--overwrite", "--method",
                             "stage2", "--dynamics", str(other)), "ids"


@case
def bad_select_dynamics_missing(tmp_path, run):
    return "select", _select(run / "scores.parquet", tmp_path / "k.npy", "--method", "stage2", "--dynamics",
                             str(tmp_path / "nodyn")), "nodyn"


@case
def bad_select_unknown_column(tmp_path, run):
    return "select", _select(run / "scores.parquet", tmp_path / "k.npy", "--method", "top", "--column", "mimc",
                             "--ratio", "0.5"), "mimc"


@case
def bad_select_corrupt_table(tmp_path, run):
    path = tmp_path / "t.parquet"
    path.write_text("id,score\n1,0.5\n")
    return "select", _select(path, tmp_path / "k.npy", "--method", "top", "--column", "score", "--ratio", "0.5"), \
        "t.parquet"


@case
def bad_select_existing_keep_list(tmp_path, run):
    return "select", _select(run / "scores.parquet", _previous_keep_list(tmp_path), "--method", "top", "--column",
                             "mimic_mean", "--ratio", "0.5"), "--overwrite"


@case
def bad_select_features_missing(tmp_path, run):
    return "select", _select(run / "scores.parquet", tmp_path / "k.npy", "--method", "moderate", "--ratio", "0.5",
                             "--features", str(tmp_path / "feats.npz")), "feats.npz"


@case
def bad_select_seed_with_top(tmp_path, run):
    return "select", _select(run / "scores.parquet", tmp_path / "k.npy", "--method", "top", "--column",
                             "mimic_mean", "--ratio", "0.5", "--seed", "4"), "--seed"


@case
def bad_select_datacomp_format_of_int_ids(tmp_path, run):
    return "select", _select(run / "scores.parquet", _previous_keep_list(tmp_path), "--overwrite", "--method",
                             "top", "--column", "mimic_mean", "--ratio", "0.5", "--format", "datacomp"), "uid"


@case
def bad_select_out_not_utf8(tmp_path, run):
    out = tmp_path / os.fsdecode(b"keep-\xfe.npy")
    return "select", _select(run / "scores.parquet", out, "--method", "top", "--column", "mimic_mean", "--ratio",
                             "0.5"), "UTF-8"


# ---------------------------------------------------------------- keepset report

@case
def bad_report_missing_folder(tmp_path, run):
    return "report", ["report", str(tmp_path / "nothing")], "nothing"


@case
def bad_report_folder_without_scores(tmp_path, run):
    (run / "scores.parquet").unlink()
    return "report", ["report", str(run)], "scores.parquet"


@case
def bad_report_out_not_html(tmp_path, run):
    return "report", ["report", str(run), "--out", str(tmp_path / "r.txt")], "r.txt"


@case
def bad_report_negative_gallery(tmp_path, run):
    return "report", ["report", str(run), "--max-gallery", "-1"], "--max-gallery"


@case
def bad_report_page_size_0(tmp_path, run):
    return "report", ["report", str(run), "--page-size", "0"], "--page-size"


@case
def bad_report_thumbnails_flag_without_thumbnails(tmp_path, run):
    return "report", ["report", str(run), "--no-thumbnails", "--max-thumbnails", "5"], "--max-thumbnails"


@case
def bad_report_existing_report(tmp_path, run):
    (run / "report.html").write_text("<html>earlier</html>")
    return "report", ["report", str(run)], "--overwrite"


# ---------------------------------------------------------------- keepset make-noisy / make-pool

@case
def bad_make_noisy_noise_above_1(tmp_path, run):
    return "make-noisy", ["make-noisy", "--data", "digits", "--noise", "1.5", "--out", str(tmp_path / "n.npz")], \
        "--noise"


@case
def bad_make_noisy_out_not_npz(tmp_path, run):
    return "make-noisy", ["make-noisy", "--data", "digits", "--noise", "0.2", "--out", str(tmp_path / "n.txt")], \
        "n.txt"


@case
def bad_make_noisy_nothing_to_do(tmp_path, run):
    return "make-noisy", ["make-noisy", "--data", "digits", "--out", str(tmp_path / "n.npz")], "--noise"


@case
def bad_make_noisy_severity_without_damage(tmp_path, run):
    return "make-noisy", ["make-noisy", "--data", "digits", "--noise", "0.2", "--damage-severity", "5", "--out",
                          str(tmp_path / "n.npz")], "--damage-severity"


@case
def bad_make_noisy_exclude_ids_missing(tmp_path, run):
    return "make-noisy", ["make-noisy", "--data", "digits", "--noise", "0.2", "--exclude-ids",
                          str(tmp_path / "ex.npy"), "--out", str(tmp_path / "n.npz")], "ex.npy"


@case
def bad_make_noisy_out_exists(tmp_path, run):
    (tmp_path / "n.npz").write_bytes(b"earlier copy")
    return "make-noisy", ["make-noisy", "--data", "digits", "--noise", "0.2", "--out", str(tmp_path / "n.npz")], \
        "--overwrite"


@case
def bad_make_pool_swap_above_1(tmp_path, run):
    return "make-pool", ["make-pool", "--data", "digits", "--swap", "1.5", "--out", str(tmp_path / "pool")], \
        "--swap"


@case
def bad_make_pool_one_pair(tmp_path, run):
    return "make-pool", ["make-pool", "--data", "digits", "--n", "1", "--out", str(tmp_path / "pool")], "--n"


@case
def bad_make_pool_shard_size_0(tmp_path, run):
    return "make-pool", ["make-pool", "--data", "digits", "--shard-size", "0", "--out", str(tmp_path / "pool")], \
        "--shard-size"


@case
def bad_make_pool_out_is_a_file(tmp_path, run):
    return "make-pool", ["make-pool", "--data", "digits", "--out", str(run / "keep.npy")], "keep.npy"


@case
def bad_make_pool_encoder_fraction_1(tmp_path, run):
    return "make-pool", ["make-pool", "--data", "digits", "--encoder-fraction", "1", "--out",
                         str(tmp_path / "pool")], "--encoder-fraction"


# ---------------------------------------------------------------- keepset bench

@case
def bad_bench_detection_seeds_0(tmp_path, run):
    return "bench detection", ["bench", "detection", "--seeds", "0", "--out", str(tmp_path / "b")], "--seeds"


@case
def bad_bench_detection_impossible_rate(tmp_path, run):
    return "bench detection", ["bench", "detection", "--rates", "0.2", "1.5", "--out", str(tmp_path / "b")], \
        "--rates"


@case
def bad_bench_pruning_ratio_0(tmp_path, run):
    return "bench pruning", ["bench", "pruning", "--ratios", "0", "0.5", "--out", str(tmp_path / "b")], "--ratios"


@case
def bad_bench_online_noise_above_1(tmp_path, run):
    return "bench online", ["bench", "online", "--noise", "1.5"], "--noise"


@case
def bad_bench_overhead_batch_size_0(tmp_path, run):
    return "bench overhead", ["bench", "overhead", "--batch-size", "0"], "--batch-size"


@case
def bad_bench_overhead_json_exists(tmp_path, run):
    return "bench overhead", ["bench", "overhead", "--json", str(run / "summary.json"), "--steps", "2"], \
        "--overwrite"


@case
def bad_bench_stage2_scale_samples_0(tmp_path, run):
    return "bench stage2-scale", ["bench", "stage2-scale", "--samples", "0", "--out", str(tmp_path / "b")], \
        "--samples"


@case
def bad_bench_clip_select_ratio_0(tmp_path, run):
    return "bench clip-select", ["bench", "clip-select", "--ratio", "0"], "--ratio"


@case
def bad_bench_unknown_benchmark(tmp_path, run):
    return "bench", ["bench", "speed"], "speed"


@case
def bad_no_command(tmp_path, run):
    return "", [], "COMMAND"


@case
def bad_report_gallery_flags_on_a_benchmark_folder(tmp_path, run):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "results.json").write_text('{"config": {}, "cells": {}}\n')
    return "report", ["report", str(bench), "--max-gallery", "10"], "--max-gallery"
