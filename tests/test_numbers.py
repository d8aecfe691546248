"""Every figure the README quotes is checked against the committed data it comes from, so the
text and the data cannot drift apart (the documentation pages generate theirs from the same
files when they are built)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _load(path: str):
    return json.loads((ROOT / path).read_text())


def _table(header_start: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with ``header_start``."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert rows, header_start
    return rows


def _close(text: str, value: float, digits: int) -> None:
    assert float(text) == pytest.approx(round(value, digits), abs=0.6 * 10**-digits), (
        text,
        value,
    )


def _kernel_rows() -> dict:
    rows = _load("benchmarks/results.json") + _load("benchmarks/results_65536.json")
    return {(r["bound"], r["n"], r["d"], r["method"]): r for r in rows}


def test_large_batches_table_matches_the_benchmark_data():
    by = _kernel_rows()
    table = _table("| bound | N | d | streaming x bare |")
    for bound, n, d, x_bare, x_naive, peak, naive_peak in table:
        ours = by[(bound, int(n), int(d), "streaming")]
        bare = by[(bound, int(n), int(d), "bare")]
        _close(x_bare, ours.get("x_bare") or ours["time_s"] / bare["time_s"], 2)
        if x_naive != "-":
            _close(x_naive, ours["x_naive"], 2)
        _close(peak, ours["peak_extra_mib"], 0)
        if not naive_peak.startswith("-"):
            _close(naive_peak, by[(bound, int(n), int(d), "naive")]["peak_extra_mib"], 0)


def test_large_batches_prose_matches_its_table():
    by = _kernel_rows()
    sym = [
        r.get("x_bare") or r["time_s"] / by[("infonce-sym", r["n"], r["d"], "bare")]["time_s"]
        for k, r in by.items()
        if k[0] == "infonce-sym" and k[3] == "streaming" and k[1] >= 4096 and r.get("time_s")
    ]
    found = re.search(r"its ratio in this table is\s+(\d\.\d\d)-(\d\.\d\d)", README)
    assert found
    _close(found.group(1), min(sym), 2)
    _close(found.group(2), max(sym), 2)


def test_contrastive_table_and_its_summary_match_the_benchmark_data():
    rows = _load("benchmarks/contrastive.json")
    by = {(r["bound"], r["n"], r["method"]): r for r in rows}
    table = _table("| loss | N | dense time (s) |")
    ratios, saved = [], []
    for loss, n, dense_t, dense_m, ours_t, ours_m, ratio, mem in table:
        dense, ours = by[(loss, int(n), "naive")], by[(loss, int(n), "streaming")]
        _close(dense_t, dense["time_s"], 2)
        _close(dense_m, dense["peak_extra_mib"], 0)
        _close(ours_t, ours["time_s"], 2)
        _close(ours_m, ours["peak_extra_mib"], 0)
        _close(ratio.rstrip("x"), ours["time_s"] / dense["time_s"], 2)
        _close(mem.rstrip("x"), dense["peak_extra_mib"] / max(ours["peak_extra_mib"], 1.0), 0)
        if int(n) == 16384 and loss != "moco":
            ratios.append(ours["time_s"] / dense["time_s"])
            saved.append(dense["peak_extra_mib"] / max(ours["peak_extra_mib"], 1.0))
    found = re.search(
        r"stream in (\d\.\d\d)-(\d\.\d\d)x the dense time at N = 16384 with (\d+)-(\d+)x", README
    )
    assert found
    _close(found.group(1), min(ratios), 2)
    _close(found.group(2), max(ratios), 2)
    _close(found.group(3), min(saved), 0)
    _close(found.group(4), max(saved), 0)


def test_validate_output_matches_its_json():
    record = _load("docs/_static/results/validate_default.json")
    block = re.search(r"```text\nmibounds validate:(.*?)```", README, re.S)
    assert block
    lines = [ln.split() for ln in block.group(1).splitlines()]
    printed = [ln for ln in lines if len(ln) >= 7 and ln[1] in ("lower", "upper")]
    assert len(printed) == len(record["rows"])
    for cells, row in zip(printed, record["rows"], strict=True):
        assert cells[0] == row["estimator"] and float(cells[2]) == row["true_mi"]
        _close(cells[3], row["estimate"], 2)
        _close(cells[4], row["bias"], 2)
        _close(cells[5], row["std"], 2)
        _close(cells[6], row["mse"], 2)
        if row.get("oracle") is not None:
            _close(cells[7], row["oracle"], 2)
    seconds = re.search(r"trained 8 estimators in ([\d.]+) s", block.group(1))
    assert seconds and float(seconds.group(1)) == record["seconds"]
    assert f"{record['seconds']:.0f} s for the run below" in README


def test_batch_4096_table_matches_its_json():
    small = _load("docs/_static/results/validate_default.json")["rows"]
    big = _load("docs/_static/results/validate_infonce_4096.json")["rows"]
    table = {row[0]: row[1:] for row in _table("| true MI |")}
    trained64 = [r["estimate"] for r in small if r["estimator"] == "infonce"]
    trained = [r["estimate"] for r in big if r["estimator"] == "infonce"]
    oracle = [r["oracle"] for r in big if r["estimator"] == "infonce"]
    for label, values in (
        ("trained, batch 64", trained64),
        ("trained, batch 4096", trained),
        ("exact critic, batch 4096", oracle),
    ):
        for text, value in zip(table[label], values, strict=True):
            _close(text, value, 2)
    # the prose: at 8 nats the exact critic's value and the bound's own bias
    at8 = oracle[3]
    found = re.search(
        r"even the exact critic gives\s+(\d\.\d\d), and the remaining (\d\.\d\d)", README
    )
    assert found
    _close(found.group(1), at8, 2)
    _close(found.group(2), 8.0 - round(at8, 2), 2)


def test_estimate_mi_claim_matches_the_benchmark_data():
    rows = _load("benchmarks/estimate_mi.json")["rows"]
    rows += _load("benchmarks/estimate_mi_seeds12.json")["rows"]
    wins = sum(
        abs(r["ours"] - r["truth"])
        < min(abs(r[k] - r["truth"]) for k in ("infonce", "nwj", "mine"))
        for r in rows
    )
    tasks = len({r["task"] for r in rows})
    found = re.search(r"on (\w+) tasks of bmi's benchmark\s+it had a smaller error", README)
    assert found and found.group(1) == {7: "seven"}.get(tasks, str(tasks))
    assert re.search(rf"in {wins} of {len(rows)} runs", README), (wins, len(rows))


def _rows(name: str, estimator: str) -> list[dict]:
    rows = _load(f"docs/_static/results/{name}.json")["rows"]
    return [r for r in rows if r["estimator"] == estimator]


def _number(text: str, pattern: str) -> list[str]:
    found = re.search(pattern, text, re.S)
    assert found, pattern
    return list(found.groups())


def test_validation_page_prose_matches_its_json():
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "validation.rst").read_text())
    small = {r["true_mi"]: r for r in _rows("validate_default", "infonce")}
    big = {r["true_mi"]: r for r in _rows("validate_infonce_4096", "infonce")}
    trained, gap, oracle = _number(
        page, r"at 2 nats the trained (\d\.\d\d) is (\d\.\d\d) below the (\d\.\d\d)"
    )
    _close(trained, small[2.0]["estimate"], 2)
    _close(oracle, small[2.0]["oracle"], 2)
    _close(gap, round(small[2.0]["oracle"], 2) - round(small[2.0]["estimate"], 2), 2)
    nwj8 = next(r for r in _rows("validate_default", "nwj") if r["true_mi"] == 8.0)
    _close(_number(page, r"NWJ (\d+\.\d) at 8 nats")[0], nwj8["oracle_std"], 1)
    at8, at10 = _number(page, r"climbing to (\d\.\d\d) at 8 nats and (\d\.\d\d) at 10")
    _close(at8, big[8.0]["estimate"], 2)
    _close(at10, big[10.0]["estimate"], 2)
    worst = max(abs(r["estimate"] - r["oracle"]) for r in big.values())
    limit = float(_number(page, r"At every stair the trained critic is within (\d\.\d\d) nats")[0])
    assert worst <= limit + 0.005, worst
    exact, below, below_cap = _number(
        page, r"even the exact critic gives (\d\.\d\d), (\d\.\d\d) below the truth and (\d\.\d\d)"
    )
    _close(exact, big[8.0]["oracle"], 2)
    _close(below, 8.0 - round(big[8.0]["oracle"], 2), 2)
    _close(below_cap, 8.32 - round(big[8.0]["oracle"], 2), 2)
    gap4, gap6 = _number(page, r"gap to the truth was (\d\.\d\d) nats .*? and (\d\.\d\d) at")
    _close(gap4, 4.0 - big[4.0]["oracle"], 2)
    _close(gap6, 6.0 - big[6.0]["oracle"], 2)
    smile = [r for r in _rows("validate_default", "smile") if r["true_mi"] <= 8.0]
    within = float(_number(page, r"SMILE \(within (\d\.\d) nats of the truth up to 8 nats")[0])
    assert max(abs(r["bias"]) for r in smile) <= within, smile


def _err(row: dict, key: str) -> float:
    return abs(row[key] - row["truth"])


def _bmi_best(row: dict) -> str:
    return min(("infonce", "nwj", "mine"), key=lambda k: _err(row, k))


def test_estimate_page_prose_matches_its_json():
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "estimate.rst").read_text())
    seed0 = _load("benchmarks/estimate_mi.json")["rows"]
    more = _load("benchmarks/estimate_mi_seeds12.json")["rows"]
    others = _load("benchmarks/estimate_mi_others.json")["rows"]
    words = {6: "six", 7: "seven"}

    def wins(rows: list[dict]) -> int:
        return sum(_err(r, "ours") < _err(r, _bmi_best(r)) for r in rows)

    assert f"smaller error on {words[wins(seed0)]} of the {words[len(seed0)]} tasks" in page
    lo, hi, blo, bhi = _number(page, r"took (\d+)-(\d+) s per task against (\d+)-(\d+) s")
    ours_s = [r["ours_s"] for r in seed0]
    bmi_s = [r[f"{k}_s"] for r in seed0 for k in ("infonce", "nwj", "mine")]
    assert (int(lo), int(hi)) == (round(min(ours_s)), round(max(ours_s)))
    assert (int(blo), int(bhi)) == (round(min(bmi_s)), round(max(bmi_s)))
    assert f"smaller error on {wins(more)} of these {len(more)} runs" in page
    assert f"Over all {len(seed0) + len(more)} runs it wins {wins(seed0) + wins(more)}" in page
    ours_mae, bmi_mae = _number(
        page, r"mean absolute error is (\d\.\d+) nats, against (\d\.\d+) for the best"
    )
    both = seed0 + more
    _close(ours_mae, sum(_err(r, "ours") for r in both) / len(both), 3)
    _close(bmi_mae, sum(_err(r, _bmi_best(r)) for r in both) / len(both), 3)
    lo, hi, blo, bhi = _number(
        page, r"ours (\d+)-(\d+) s, bmi's most accurate estimator (\d+)-(\d+) s"
    )
    assert (int(lo), int(hi)) == (
        round(min(r["ours_s"] for r in more)),
        round(max(r["ours_s"] for r in more)),
    )
    best_s = [r[f"{_bmi_best(r)}_s"] for r in more]
    assert (int(blo), int(bhi)) == (round(min(best_s)), round(max(best_s)))
    mae_others, mae_seven = _number(
        page, r"The mean absolute error is (\d\.\d+) nats \((\d\.\d+) on the seven tasks"
    )
    _close(mae_others, sum(_err(r, "ours") for r in others) / len(others), 3)
    _close(mae_seven, sum(_err(r, "ours") for r in seed0) / len(seed0), 3)
    assert all(r["ours"] > 0 for r in others)
    above = [r for r in others if r["ours"] >= r["truth"]]
    assert [r["task"] for r in above] == [
        "multinormal-sparse-3-3-2-2.0", "student-identity-3-3-3"
    ]  # fmt: skip
    a, b = _number(page, r"Student-t in 3 \+ 3 dimensions, are (\d\.\d+) and (\d\.\d+) above it")
    _close(a, above[0]["ours"] - above[0]["truth"], 3)
    _close(b, above[1]["ours"] - above[1]["truth"], 3)
    # the seven tasks of seed 0: the mean errors, the widest margins, the dense 5 x 5 task
    mae, bmi_mae = _number(page, r"its mean absolute error is (\d\.\d+) nats against "
                                 r"(\d\.\d+) for the best")  # fmt: skip
    _close(mae, sum(_err(r, "ours") for r in seed0) / len(seed0), 3)
    _close(bmi_mae, sum(_err(r, _bmi_best(r)) for r in seed0) / len(seed0), 3)
    by_task = {r["task"]: r for r in seed0}
    for task, pattern in (
        ("multinormal-sparse-25-25-2-2.0", r"sparse 25 x 25 Gaussian \((\d\.\d+) against "),
        ("half_cube-multinormal-sparse-5-5-2-2.0", r"half-cube task \((\d\.\d+) against "),
    ):  # fmt: skip
        ours, theirs = _number(page, pattern + r"(\d\.\d+)\)")
        row = by_task[task]
        _close(ours, _err(row, "ours"), 3)
        _close(theirs, _err(row, _bmi_best(row)), 3)
    dense = by_task["multinormal-dense-5-5-0.5"]
    mine, ours = _number(page, r"bmi's MINE \((\d\.\d+), against (\d\.\d+)\)")
    _close(mine, dense["mine"], 3)
    _close(ours, dense["ours"], 3)
    lo, hi, slow = _number(page, r"it took (\d\.\d) to (\d\.\d) times as long on six tasks and "
                                 r"(\d\.\d) times")  # fmt: skip
    ratios = sorted(r["ours_s"] / r["infonce_s"] for r in seed0)
    _close(lo, ratios[0], 1)
    _close(hi, ratios[-2], 1)
    _close(slow, ratios[-1], 1)
    assert max(by_task, key=lambda t: by_task[t]["ours_s"] / by_task[t]["infonce_s"]) == (
        "1v1-additive-0.1"
    )
    spiral = next(r for r in others if r["task"].startswith("spiral"))
    student = next(r for r in others if r["task"] == "asinh-student-identity-5-5-2")
    _close(_number(page, r"spiral transform \((\d\.\d+)\)")[0], _err(spiral, "ours"), 2)
    _close(_number(page, r"5 \+ 5 dimensions: (\d\.\d+)\)")[0], _err(student, "ours"), 2)
    errors = sorted(others, key=lambda r: _err(r, "ours"))
    assert errors[-1] is spiral and errors[-2]["task"] == "multinormal-dense-25-25-0.5"
    _close(_number(page, r"dense 25 x 25 Gaussian \((\d\.\d+)\)")[0], _err(errors[-2], "ours"), 2)
    within = float(_number(page, r"The three Student-t tasks are within (\d\.\d+) of")[0])
    assert all(_err(r, "ours") <= within for r in others if "student" in r["task"])


def test_high_dimensions_prose_matches_the_coverage_json():
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "estimate.rst").read_text())
    default = {r["task"]: r for r in _load("benchmarks/estimate_mi_coverage.json")["rows"]}
    plain = {r["task"]: r for r in _load("benchmarks/estimate_mi_coverage_plain.json")["rows"]}
    g20, g50 = "gaussian 20x20, 2 nats", "gaussian 50x50, 1 nat"
    a, b, c = _number(page, r"a plain network reaches (\d\.\d\d) of (\d) nats on the 20 x 20 "
                            r"Gaussian and (\d\.\d\d) of 1")  # fmt: skip
    _close(a, plain[g20]["estimate"], 2)
    _close(c, plain[g50]["estimate"], 2)
    assert float(b) == plain[g20]["truth"]
    sparse = "sparse 50x50, 4 pairs, asinh/cube"
    d, e, f, g = _number(page, r"The default reaches (\d\.\d\d) of 2 nats on the 20 x 20 Gaussian, "
                               r"(\d\.\d\d) of 1 on the 50 x 50 one and (\d\.\d\d) of "
                               r"(\d\.\d\d) on the sparse")  # fmt: skip
    _close(d, default[g20]["estimate"], 2)
    _close(e, default[g50]["estimate"], 2)
    _close(f, default[sparse]["estimate"], 2)
    _close(g, default[sparse]["truth"], 2)
    # the time above two coordinates, default against the plain network
    several = [t for t, r in default.items() if sum(r["dims"]) > 2]
    lo, hi, plo, phi, rlo, rhi = _number(
        page,
        r"the default took (\d+)-(\d+) s per task against (\d+)-(\d+) s for the plain "
        r"network \((\d\.\d) to (\d\.\d) times as long",
    )
    mine = [default[t]["seconds"] for t in several]
    theirs = [plain[t]["seconds"] for t in several]
    ratio = [default[t]["seconds"] / plain[t]["seconds"] for t in several]
    assert (int(lo), int(hi)) == (round(min(mine)), round(max(mine)))
    assert (int(plo), int(phi)) == (round(min(theirs)), round(max(theirs)))
    _close(rlo, min(ratio), 1)
    _close(rhi, max(ratio), 1)


def test_the_gaussian_start_check_on_bmi_tasks_matches_its_json():
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "estimate.rst").read_text())
    runs = {
        name: {r["task"]: r for r in _load(f"benchmarks/{name}.json")["rows"]}
        for name in ("estimate_mi", "estimate_mi_plain", "estimate_mi_others",
                     "estimate_mi_others_plain")
    }  # fmt: skip
    assert runs["estimate_mi_plain"].keys() == runs["estimate_mi"].keys()
    assert runs["estimate_mi_others_plain"].keys() == runs["estimate_mi_others"].keys()

    def mae(name: str) -> float:
        return sum(_err(r, "ours") for r in runs[name].values()) / len(runs[name])

    p7, p10, d7, d10 = _number(
        page,
        r"had a mean absolute error of (\d\.\d+) nats on the seven tasks of seed 0 and "
        r"(\d\.\d+) on the ten others; the default has (\d\.\d+) and (\d\.\d+)",
    )
    _close(p7, mae("estimate_mi_plain"), 3)
    _close(p10, mae("estimate_mi_others_plain"), 3)
    _close(d7, mae("estimate_mi"), 3)
    _close(d10, mae("estimate_mi_others"), 3)
    for plain, default, task, pattern in (
        ("estimate_mi_plain", "estimate_mi", "multinormal-sparse-25-25-2-2.0",
         r"sparse 25 x 25 Gaussian \((\d\.\d+) to (\d\.\d+) of"),
        ("estimate_mi_others_plain", "estimate_mi_others",
         "normal_cdf-multinormal-sparse-5-5-2-2.0",
         r"normal-CDF transform \((\d\.\d+) to (\d\.\d+)\)"),
        ("estimate_mi_others_plain", "estimate_mi_others", "multinormal-dense-2-2-0.5",
         r"dense 2 x 2 Gaussian \((\d\.\d+) to (\d\.\d+) of"),
    ):  # fmt: skip
        before, after = _number(page, pattern)
        _close(before, runs[plain][task]["ours"], 3)
        _close(after, runs[default][task]["ours"], 3)
    # the gains and the loss quoted are the largest of each
    changes = {
        (name, t): runs[name][t]["ours"] - runs[f"{name}_plain"][t]["ours"]
        for name in ("estimate_mi", "estimate_mi_others") for t in runs[name]
    }  # fmt: skip
    losses = [key for key, change in changes.items() if change < 0]
    assert [t for _, t in losses] == ["multinormal-dense-2-2-0.5"], losses
    top = sorted(changes, key=changes.__getitem__)[-2:]
    assert {t for _, t in top} == {
        "multinormal-sparse-25-25-2-2.0",
        "normal_cdf-multinormal-sparse-5-5-2-2.0",
    }


def test_paper_example_rows_quote_their_full_runs():
    """Each decimal figure of the README's paper-examples table is in the example's docstring
    (its committed full run; rounded as quoted, a percentage may be a fraction there), or the
    difference of two figures of the same row."""
    table = _table("| example | time | what it shows |")
    for script, _time, claim in table:
        doc = (ROOT / script.strip("`")).read_text().split('"""')[1]
        numbers = re.findall(r"(?<![\d.])(\d+\.\d+)", claim)
        quoted = [float(q) for q in re.findall(r"(?<![\d.])(\d+\.\d+)", doc)]
        for value in numbers:
            places = len(value.split(".")[1])
            # the docstring's figure rounded as quoted, or its fraction as a percentage
            half = 0.5 * 10**-places + 1e-9
            if any(min(abs(q - float(value)), abs(100 * q - float(value))) <= half for q in quoted):
                continue
            diffs = {f"{abs(float(a) - float(b)):.1f}" for a in numbers for b in numbers}
            assert value in diffs, (script, value)


def test_which_bound_measurements_match_the_validation_json():
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "which_bound.rst").read_text())
    rows = _load("docs/_static/results/validate_default.json")["rows"]

    def row(estimator: str, mi: float) -> dict:
        return next(r for r in rows if r["estimator"] == estimator and r["true_mi"] == mi)

    _close(_number(page, r"InfoNCE saturates: (\d\.\d\d) nats at the 10-nat")[0],
           row("infonce", 10.0)["estimate"], 2)  # fmt: skip
    within, lo, hi = _number(
        page, r"within \+(\d\.\d\d) nats up to 10 nats, standard deviation (\d\.\d)-(\d\.\d)"
    )
    smile = [r for r in rows if r["estimator"] == "smile"]
    _close(within, max(abs(r["bias"]) for r in smile), 2)
    _close(lo, min(r["std"] for r in smile), 1)
    _close(hi, max(r["std"] for r in smile), 1)
    two, lo10, hi10 = _number(page, r"loose \(\+(\d+) nats at 2 nats, \+(\d+) to \+(\d+) at 10\)")
    for est in ("club", "nce-club"):
        _close(two, row(est, 2.0)["bias"], 0)
    tens = [row(est, 10.0)["bias"] for est in ("club", "nce-club")]
    _close(lo10, min(tens), 0)
    _close(hi10, max(tens), 0)
    _close(_number(page, r"L1Out is tight at low MI \(\+(\d\.\d\d) at 2 nats")[0],
           row("l1out", 2.0)["bias"], 2)  # fmt: skip


def test_readme_status_figure_matches_the_coverage_json():
    rows = {r["task"]: r for r in _load("benchmarks/estimate_mi_coverage.json")["rows"]}
    g20, g50 = rows["gaussian 20x20, 2 nats"], rows["gaussian 50x50, 1 nat"]
    text = re.sub(r"\s+", " ", README)
    a, b, c, d = _number(text, r"it reaches (\d\.\d\d) of (\d) nats on a 20 x 20 Gaussian but "
                               r"(\d\.\d\d) of (\d) nat on a 50 x 50 one")  # fmt: skip
    _close(a, g20["estimate"], 2)
    _close(c, g50["estimate"], 2)
    assert (float(b), float(d)) == (g20["truth"], g50["truth"])


def test_readme_gpu_predictions_match_the_model_table():
    table = (ROOT / "benchmarks" / "gpu_model.md").read_text()

    def predicted(d: int) -> float:
        row = re.search(rf"\| clip \| 65536 \| {d} \| bfloat16 \| \w+ \| (\d+\.\d\d) \|", table)
        assert row, d
        return float(row.group(1))

    text = re.sub(r"\s+", " ", README)
    a, b = _number(text, r"predicts CLIP in bfloat16 at (\d\.\d) times the bare products for "
                         r"d = 512 and (\d\.\d) times for d = 1024")  # fmt: skip
    _close(a, predicted(512), 1)
    _close(b, predicted(1024), 1)


def test_readme_docs_build_time_matches_its_committed_runs():
    record = _load("docs/_static/results/docs_build.json")
    text = re.sub(r"\s+", " ", README)
    (seconds,) = _number(text, r"full runs: (\d+) s from scratch on a 2-core CPU")
    assert min(record["seconds"]) - 0.5 <= float(seconds) <= max(record["seconds"]) + 0.5


def test_migration_page_accuracy_claims_match_the_benchmark():
    """The float32 accuracy sentences of the migration page against benchmarks/accuracy.json:
    the mean error the smaller but for pytorch-metric-learning's NT-Xent (within 3%) and
    SigLIP (the dense loss's own arithmetic: the same errors), the largest the smaller for
    NT-Xent and CLIP, and for SupCon above the dense (and the peer's) by less than a fifth of
    2^-23."""
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "migrating.rst").read_text())
    assert "mean error is the smaller for every loss but pytorch-metric-learning's NT-Xent" in page
    assert "SigLIP, whose small batches are the dense loss's own arithmetic" in page
    rows = _load("benchmarks/accuracy.json")["rows"]
    by = {(r["loss"], r["impl"]): r for r in rows}
    for loss in {r["loss"] for r in rows}:
        ours = by[loss, "mibounds"]
        others = [r for (name, impl), r in by.items() if name == loss and impl != "mibounds"]
        dense = by[loss, "dense"]
        if loss == "ntxent (pytorch-metric-learning)":
            assert ours["mean_rel_error"] <= 1.03 * dense["mean_rel_error"]
        elif loss.startswith("siglip"):
            assert ours["mean_rel_error"] == dense["mean_rel_error"], loss
            assert ours["max_rel_error"] == dense["max_rel_error"], loss
            continue
        else:
            assert ours["mean_rel_error"] < dense["mean_rel_error"], loss
        if loss.startswith(("ntxent", "clip")):
            assert ours["max_rel_error"] < dense["max_rel_error"], loss
        else:
            slack = 0.2 * 2.0**-23
            assert all(ours["max_rel_error"] < r["max_rel_error"] + slack for r in others), loss


def test_heavy_tails_prose_matches_its_json():
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "estimate.rst").read_text())
    rows = {r["task"]: r for r in _load("benchmarks/estimate_mi_heavy.json")["rows"]}
    row = rows["t 5+5, df 3, uncorrelated, asinh"]
    truth = _number(
        page, r"uncorrelated coordinates with three degrees of freedom \((\d\.\d+) nats"
    )
    _close(truth[0], row["truth"], 3)
    assert "they reach about three quarters of the MI" in page
    assert 0.7 <= row["networks_estimate"] / row["truth"] <= 0.8
    groups = {r["group"] for r in rows.values()}
    assert groups == {"developed on", "not tuned on"}
    dfs = {float(t.split("df ")[1].split(",")[0]) for t in rows}
    assert min(dfs) == 2.0 and max(dfs) == 5.0


def test_the_short_batch_4096_run_matches_its_json():
    """README's and the validation page's figures of ``--steps 200`` at batch 4096: its times
    and its distance from the full run, from the committed runs."""
    full = {r["true_mi"]: r for r in _rows("validate_infonce_4096", "infonce")}
    short_record = _load("docs/_static/results/validate_infonce_4096_steps200.json")
    assert short_record["steps_per_level"] == 200 and short_record["batch_size"] == 4096
    short = {r["true_mi"]: r for r in short_record["rows"] if r["estimator"] == "infonce"}
    gap = max(abs(short[mi]["estimate"] - full[mi]["estimate"]) for mi in full)
    text = re.sub(r"\s+", " ", README)
    page = re.sub(r"\s+", " ", (ROOT / "docs" / "validation.rst").read_text())
    for source in (text, page):
        total, training, within = _number(
            source, r"--steps 200`?`? took (\d+) s in all, (\d+) s of them training, and .*? "
            r"within (\d\.\d+) nats"
        )  # fmt: skip
        assert int(total) == round(short_record["total_seconds"])
        assert int(training) == round(short_record["seconds"])
        assert gap <= float(within), gap
        full_seconds = _load("docs/_static/results/validate_infonce_4096.json")["seconds"]
        assert f"{round(full_seconds)} s of training" in source
