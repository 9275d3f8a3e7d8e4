"""README, "Adding a dataset": one reader in imbalance_core/datasets.py and one DatasetSpec in
imbalance_core/specs.py, and every other module reads the spec. Proven by adding Fashion-MNIST exactly as the
README shows (its files are MNIST's IDX format; the test stages real IDX files, MNIST's from ../shared/data,
under the folder the new reader reads) and training it through the trial CLI's function and a grid, with no
other edit. The registration is undone after the test (monkeypatch)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from imbalance_core import datasets as D
from imbalance_core import specs as S
from imbalance_core.specs import DATASETS, DatasetSpec
from imbalance_core.trial import TrialConfig, run_trials, validate
from sweeps.grids import Block, Grid, Overrides, expand

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


def read_fashion_mnist(data_dir) -> D.ArrayDataset:
    """The reader a user adds to datasets.py: Fashion-MNIST ships the same four IDX files as MNIST."""
    folder = Path(data_dir) / "FashionMNIST" / "raw"
    train_x, train_y = D._read_mnist_split(folder, D.MNIST_FILES["train_x"], D.MNIST_FILES["train_y"])
    test_x, test_y = D._read_mnist_split(folder, D.MNIST_FILES["test_x"], D.MNIST_FILES["test_y"])
    return D.ArrayDataset(name="fashion-mnist", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                          num_classes=10, class_names=tuple(str(c) for c in range(10)))


@pytest.fixture
def fashion(monkeypatch, tmp_path) -> Path:
    if not SHARED_MNIST.is_dir():
        pytest.fail(f"{SHARED_MNIST} is missing (../shared/data holds full MNIST on these machines)")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in SHARED_MNIST.iterdir():
        shutil.copy(f, raw / f.name)
    monkeypatch.setattr(D, "read_fashion_mnist", read_fashion_mnist, raising=False)
    # the README's spec, as written there
    monkeypatch.setitem(DATASETS, "fashion-mnist", DatasetSpec(
        "fashion-mnist", num_classes=10, n_per_class=5000, minority_order="random", model="lenet5",
        schedule=DATASETS["mnist"].schedule, preprocess="scale256", reader="read_fashion_mnist"))
    return tmp_path


@pytest.mark.slow
def test_a_dataset_added_as_the_readme_says_trains_and_sweeps(fashion):
    c = TrialConfig(dataset="fashion-mnist", data_dir=str(fashion), imbalance="step", rho=10, mu=0.5,
                    method="ros", seed=0, iterations=20, device="cpu")
    validate(c)
    # the schedule, the model, n: read from the spec
    assert c.schedule == dataclasses.replace(DATASETS["mnist"].schedule, iterations=20)
    r = run_trials([c])[0]
    assert r["model"] == "lenet5" and r["test_examples"] == 10_000
    assert r["train_examples"] == 5 * 5000 + 5 * 500              # step mu 0.5 rho 10 on n = 5000
    assert 50 <= r["auc"] <= 100 and r["data_digest"]
    # a grid over the new dataset, narrowed from the command line's overrides, expands through the same spec
    grid = Grid("fashion", "fashion-mnist", (Block("step", (10, 100), (0.5,), ("baseline", "ros"), repetitions=2),),
                iterations=20)
    configs = expand(grid, Overrides(datasets=("fashion-mnist",), rho=(100,), data_dir=str(fashion)))
    assert {(x.dataset, x.rho, x.method, x.seed) for x in configs} == {
        ("fashion-mnist", 100.0, m, s) for m in ("baseline", "ros") for s in (0, 1)}


def test_without_its_spec_the_dataset_is_refused_naming_the_known_ones():
    assert "fashion-mnist" not in S.DATASETS                     # the fixture's registration was undone
    with pytest.raises(ValueError, match=r"dataset='fashion-mnist' is unknown; choose one of mnist, mnist-sample"):
        validate(TrialConfig(dataset="fashion-mnist", data_dir="/nonexistent", method="ros"))
    with pytest.raises(D.DatasetError, match="unknown dataset 'fashion-mnist'"):
        D.load_dataset("fashion-mnist", "/nonexistent")
