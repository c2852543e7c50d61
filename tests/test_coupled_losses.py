

def test_coupled_bench_tiny_run(capsys):
    from keepset.bench import coupled

    assert coupled.main(["--batch", "8", "--d-img", "6", "--d-txt", "5", "--dim", "4", "--text-hidden", "3",
                         "--repeats", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and r[2] in "ita"]
    assert len(rows) == 6  # 3 layer choices x (proj, cos)
    for r in rows:
        errs = [float(e) for e in r.rstrip(" |").split("|")[-1].split(",")]
        assert max(errs) < 1e-4, r
