"""A flag that the chosen method would ignore is refused, naming the methods that read it."""

import argparse

import numpy as np
import pytest

from keepset.cli.main import build_parser, main
from keepset.io import write_score_table
from keepset.selection.registry import SELECTOR_FLAGS, SELECTORS


def _subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_selector_flag_table_matches_the_parser():
    p = _subparser("select")
    flags = p.get_default("_method_flags")
    assert set(SELECTOR_FLAGS) == set(SELECTORS)
    for method, dests in SELECTOR_FLAGS.items():
        assert dests <= set(flags), (method, dests - set(flags))
    unread = {d for d in flags if not any(d in used for used in SELECTOR_FLAGS.values())}
    assert not unread, f"flags no selector reads: {unread}"


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "s.parquet"
    n = 20
    write_score_table(path, np.arange(n), {"el2n": np.linspace(0, 1, n)}, labels=np.arange(n) % 2)
    return path


@pytest.mark.parametrize("argv, flag, users", [
    (["--method", "top", "--column", "el2n", "--ratio", "0.5", "--features", "f.npz"], "--features", "kcenter, moderate"),
    (["--method", "expr", "--expr", "top(el2n, 0.5)", "--ratio", "0.3"], "--ratio", "balanced"),
    (["--method", "random", "--ratio", "0.5", "--hard-cutoff", "0.2"], "--hard-cutoff", "ccs"),
])
def test_select_refuses_a_flag_the_method_ignores(table, tmp_path, capsys, argv, flag, users):
    out = tmp_path / "keep.npy"
    assert main(["select", "--scores", str(table), "--out", str(out)] + argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} does not apply" in err and users in err
    assert not out.exists()


def test_select_accepts_the_method_own_flags_and_defaults_of_others(table, tmp_path):
    out = tmp_path / "keep.npy"
    # --lowest is read by balanced; --seed left at its default is not an error
    assert main(["select", "--scores", str(table), "--out", str(out), "--method", "balanced", "--column", "el2n",
                 "--ratio", "0.5", "--lowest", "--seed", "0"]) == 0
    assert out.exists()
    # --seed is read by the randomised selectors
    assert main(["select", "--scores", str(table), "--out", str(tmp_path / "r.npy"), "--method", "random",
                 "--ratio", "0.5", "--seed", "3"]) == 0
