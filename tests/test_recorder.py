"""The streaming dynamics log: records by id, chunked parts, resume after a kill, per-sample aggregates."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keepset.recorder import DynamicsRecorder, per_sample, unique_ids


def _fill(rec, ids, steps, rng):
    rows = []
    for step in range(steps):
        pick = rng.choice(ids, size=5, replace=False)
        v = rng.normal(size=5)
        rec.record(pick, step, step // 3, a=v, b=v * 2)
        rows.append((pick, np.full(5, step), v))
    return rows


@pytest.mark.parametrize("on_disk", [False, True])
def test_records_come_back_in_order_and_aggregate_by_id(tmp_path, on_disk):
    rng = np.random.default_rng(0)
    ids = np.array([f"{i:032x}" for i in rng.choice(10**6, 12, replace=False)])
    rec = DynamicsRecorder(tmp_path / "log" if on_disk else None, ("a", "b"), chunk_rows=7)
    rows = _fill(rec, ids, 20, rng)
    rec.flush()
    back = DynamicsRecorder.open(tmp_path / "log") if on_disk else rec
    got = back.read()
    want_id = np.concatenate([r[0] for r in rows])
    assert np.array_equal(got["id"], want_id) and got["id"].dtype.kind == "U"
    assert np.array_equal(got["step"], np.concatenate([r[1] for r in rows]))
    np.testing.assert_allclose(got["a"], np.concatenate([r[2] for r in rows]), rtol=1e-6)
    assert back.n_records == 100
    assert sorted(unique_ids(back).tolist()) == sorted(set(want_id.tolist()))
    # aggregates against a dictionary computed by hand, in a caller-chosen order of ids (never-seen -> NaN)
    order = np.r_[ids[::-1], np.array(["f" * 32])]
    by_id = {}
    for pick, step, v in rows:
        for i, s, x in zip(pick, step, v):
            by_id.setdefault(i, []).append((s, x))
    mean = per_sample(back, "a", "mean", ids=order)
    last = per_sample(back, "a", "last", ids=order)
    count = per_sample(back, "a", "count", ids=order)
    for k, i in enumerate(order):
        vals = by_id.get(i, [])
        if not vals:
            assert np.isnan(mean[k]) and np.isnan(last[k]) and count[k] == 0
            continue
        assert mean[k] == pytest.approx(np.mean([x for _, x in vals]), rel=1e-5)
        assert last[k] == pytest.approx(max(vals)[1], rel=1e-5)
        assert count[k] == len(vals)
    assert per_sample(back, "a", "max", ids=order)[0] == pytest.approx(max(x for _, x in by_id[order[0]]), rel=1e-5)


def test_bad_records_are_refused(tmp_path):
    rec = DynamicsRecorder(None, ("a",))
    rec.record([1, 2], 0, a=[0.5, 0.5])
    with pytest.raises(ValueError, match="int ids"):
        rec.record(["x"], 1, a=[0.1])
    with pytest.raises(ValueError, match="missing"):
        rec.record([3], 1)
    with pytest.raises(ValueError, match="values for 2 ids"):
        rec.record([3, 4], 1, a=[0.1])
    with pytest.raises(ValueError, match="in order"):
        rec.record([3], -5 + 0, a=[0.1])  # step -5 < 0
    with pytest.raises(ValueError, match="fields"):
        DynamicsRecorder(None, ("id",))
    with pytest.raises(FileNotFoundError, match="no recorded dynamics"):
        DynamicsRecorder.open(tmp_path / "none")
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="recorder.json"):
        DynamicsRecorder.open(tmp_path / "other")


def test_a_killed_writer_loses_only_its_buffer_and_resumes(tmp_path):
    """A process recording step by step is killed (SIGKILL) mid-run; the log reopens with every flushed part,
    ignores a half-written one, and a resumed writer continues at the next step."""
    d = tmp_path / "log"
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from keepset.recorder import DynamicsRecorder
        rec = DynamicsRecorder({str(d)!r}, ("a",), chunk_rows=10)
        for step in range(10**6):
            rec.record(np.arange(5) + 100 * step, step, 0, a=np.full(5, float(step)))
            if step == 40:
                print("ready", flush=True)
            if step > 40:
                time.sleep(0.002)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (d / ".part-999999.parquet.tmp").write_bytes(b"half a file")  # as a kill during a write would leave
    back = DynamicsRecorder.open(d)
    got = back.read()
    n_steps = len(np.unique(got["step"]))
    assert n_steps >= 40 and len(got["step"]) == 5 * n_steps  # whole steps only
    assert np.array_equal(np.unique(got["step"]), np.arange(n_steps))
    resumed = DynamicsRecorder(d, ("a",), resume=True)
    assert resumed.next_step == n_steps
    assert not (d / ".part-999999.parquet.tmp").exists()
    resumed.record([7], resumed.next_step, 1, a=[1.0])
    resumed.flush()
    again = DynamicsRecorder.open(d).read()
    assert again["step"][-1] == n_steps and len(again["step"]) == len(got["step"]) + 1
    with pytest.raises(ValueError, match="fields"):
        DynamicsRecorder(d, ("b",), resume=True)
    assert json.loads((d / "recorder.json").read_text())["id_kind"] == "int"


def test_uid_keys_by_low_half_fall_back_on_collisions_and_mixed_ids():
    from keepset.recorder.aggregate import IdIndex, hex_halves

    uids = np.array(["0123456789abcdef" + "00000000000000ff", "ffffffffffffffff" + "0000000000000001"])
    hi, lo = hex_halves(uids)
    assert lo.tolist() == [255, 1] and hi.view(np.uint64).tolist() == [0x0123456789ABCDEF, 2**64 - 1]
    assert hex_halves(np.array(["not-a-uid"])) is None
    # two uids sharing their low half: keyed by the whole string instead, still exact
    clash = np.array(["1" * 16 + "a" * 16, "2" * 16 + "a" * 16, "3" * 32])
    for ids in (clash, np.r_[clash, np.array(["plain-name"])]):
        rec = DynamicsRecorder(None, ("a",), chunk_rows=2)
        for k, i in enumerate(ids):
            rec.record([i], k, 0, a=[float(k)])
        rec.flush()
        index = IdIndex.of_log(rec)
        assert sorted(index.ids.tolist()) == sorted(ids.tolist())
        assert np.array_equal(index.ids[index.positions(ids)], ids)
        assert index.positions(np.array(["4" * 32]))[0] == -1
        np.testing.assert_array_equal(per_sample(rec, "a", "mean", ids=ids), np.arange(len(ids), dtype=float))


def test_aggregates_without_ids_follow_unique_ids():
    rec = DynamicsRecorder(None, ("a",))
    rec.record([5, 3], 0, 0, a=[1.0, 2.0])
    rec.record([3], 1, 0, a=[4.0])
    ids = unique_ids(rec)
    mean = dict(zip(ids.tolist(), per_sample(rec, "a", "mean").tolist()))
    assert mean == {3: 3.0, 5: 1.0}
