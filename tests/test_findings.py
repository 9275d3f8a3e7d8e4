"""sweeps/findings.py: verdicts follow the stated rules on hand-made per-cell rows."""
from sweeps.findings import NA, NOT, SUPPORTED, findings, write_markdown

METHODS = ("baseline", "ros", "rus", "two-phase-ros", "two-phase-rus")


def row(imbalance, rho, mu, method, auc, acc=90.0, acc_thr=92.0, level=None, std=0.1, n=3):
    return {"dataset": "mnist", "imbalance": imbalance, "rho": rho, "mu": mu, "method": method, "level": level,
            "lr": None, "n": n, "auc_mean": auc, "auc_std": std, "accuracy_mean": acc, "accuracy_std": std,
            "accuracy_thresholded_mean": acc_thr, "accuracy_thresholded_std": std}


def paper_like():
    """AUC falls with log rho; ROS > two-phase > baseline; RUS linear in log rho; step below linear."""
    rows = [row("balanced", 1, 0.5, "baseline", 99.9, acc=99.2, acc_thr=99.2)]
    for imb, mus, pen in (("step", (0.1, 0.5, 0.9), 1.0), ("linear", (0.5,), 0.5)):
        for mu in mus:
            for k, rho in enumerate((10, 100, 1000, 5000)):
                base = 99.5 - pen * 2 * k
                auc = {"baseline": base, "ros": 99.5 - pen * 0.2 * k, "rus": 99.0 - pen * 1.5 * k}
                auc["two-phase-ros"] = (auc["baseline"] + auc["ros"]) / 2
                auc["two-phase-rus"] = (auc["baseline"] + auc["rus"]) / 2
                for m in METHODS:
                    rows.append(row(imb, rho, mu, m, auc[m], acc=80 - k, acc_thr=(95 if m == "ros" else 85) - k))
    rows += [row("step", 1000, 0.5, "partial-ros", 97.0, level=lv) for lv in (2, 10, 100)]
    rows += [row("step", 1000, 0.5, "partial-rus", 99.0, level=lv) for lv in (2, 10, 100)]
    return rows


def verdicts(rows):
    return {f: v for f, v, _, _ in findings(rows)}


def test_paper_like_rows_support_every_checkable_finding(tmp_path):
    v = verdicts(paper_like())
    assert v["... and more as the task grows harder"] == NA
    others = {f: x for f, x in v.items() if f != "... and more as the task grows harder"}
    assert set(others.values()) == {SUPPORTED}, others
    write_markdown(findings(paper_like()), "demo", tmp_path / "f.md")
    text = (tmp_path / "f.md").read_text()
    assert "ROS wins or ties almost everywhere" in text and "**supported**" in text


def test_verdicts_flip_when_the_numbers_do():
    rows = paper_like()
    for r in rows:                                     # make RUS win everywhere by a wide margin
        if r["method"] == "rus" and r["imbalance"] != "balanced":
            r["auc_mean"] = 100.5
    v = verdicts(rows)
    assert v["ROS wins or ties almost everywhere"] == NOT
    assert v["RUS degrades roughly linearly with rho (log scale, as the paper plots it)"] == NOT
    rows = paper_like()
    for r in rows:                                     # thresholding lowers accuracy
        r["accuracy_thresholded_mean"] = r["accuracy_mean"] - 1
    assert verdicts(rows)["Thresholding raises accuracy, best together with ROS"] == NOT
    rows = [r for r in paper_like() if r["imbalance"] != "balanced"]
    assert verdicts(rows)["LeNet-5 on balanced MNIST: error < 1%"] == NA
    rows = paper_like()
    rows[0]["accuracy_mean"] = 98.5
    assert verdicts(rows)["LeNet-5 on balanced MNIST: error < 1%"] == NOT


def test_partial_sampling_in_several_cells_uses_the_first_cell():
    rows = paper_like()
    rows += [row("step", 1000, 0.9, "partial-ros", 90.0, level=lv) for lv in (2, 10, 100)]
    v = verdicts(rows)
    assert v["Full ROS is the best ROS level; an intermediate RUS level can beat full RUS"] == SUPPORTED
