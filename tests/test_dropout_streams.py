"""A network's randomness is its own (issue 26, point 4): All-CNN-C's dropout masks come from a generator
seeded by the network (train.StackedNets noise_seeds: its seed and phase), never from the global generator
shared by a vmap-stacked group. So the same network trains the same whether it is stacked with others, in
any order, or alone. On CPU, with All-CNN-C at 32x32 and a few steps of real SGD with dropout on."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from imbalance_core.models import build_model
from imbalance_core.specs import DATASETS
from imbalance_core.train import StackedNets, train

SCHEDULE = dataclasses.replace(DATASETS["cifar10"].schedule, iterations=3, batch_size=4)
SEEDS = (11, 12, 13)


def data(seed: int, n: int = 3):
    g = torch.Generator().manual_seed(1000 + seed)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


def trained(order: tuple[int, ...], pollute: bool = False) -> dict[int, dict[str, torch.Tensor]]:
    """The networks `order` (their seeds) trained as one group (stacked when more than one)."""
    if pollute:
        torch.manual_seed(987654)                  # whatever the global generator holds must not matter
    batches = {s: data(s) for s in order}
    loader = [(torch.stack([batches[s][i][0] for s in order]), torch.stack([batches[s][i][1] for s in order]))
              for i in range(SCHEDULE.iterations)]
    nets = StackedNets([build_model("allcnnc", 10, seed=s) for s in order], "cpu",
                       noise_seeds=[(s, 1) for s in order])
    train(nets, loader, SCHEDULE)
    return dict(zip(order, nets.state_dicts()))


def test_all_cnn_c_with_dropout_is_the_same_network_stacked_in_any_order_or_alone():
    a = trained(SEEDS)
    b = trained(tuple(reversed(SEEDS)), pollute=True)
    alone = {s: trained((s,), pollute=True)[s] for s in SEEDS}
    start = {s: build_model("allcnnc", 10, seed=s).state_dict() for s in SEEDS}
    for s in SEEDS:
        for k in start[s]:
            # stacked in two orders: the same arithmetic, so the same bits
            assert torch.equal(a[s][k], b[s][k]), (s, k)
            # alone: vmap's batched convolutions against plain ones, float reassociation only (measured ~1e-7)
            assert torch.allclose(a[s][k], alone[s][k], rtol=0, atol=1e-5), (s, k)
        moved = max((a[s][k] - start[s][k]).abs().max().item() for k in start[s])
        assert moved > 1e-3                        # the networks did train


def test_the_masks_are_the_networks_own_and_drawn_in_training_only():
    nets = StackedNets([build_model("allcnnc", 10, seed=s) for s in (1, 2)], "cpu", noise_seeds=[(1, 1), (2, 1)])
    x = torch.ones(2, 4, 3, 32, 32)
    m1, m2 = nets._noise(x), StackedNets([build_model("allcnnc", 10, seed=2)], "cpu", noise_seeds=[(2, 1)])._noise(
        x[:1])
    assert torch.equal(m1["drop_in"][1], m2["drop_in"][0])          # network 2's masks, whoever it is stacked with
    assert not torch.equal(m1["drop_in"][0], m1["drop_in"][1])
    assert m1["drop1"].shape == (2, 4, 96, 16, 16) and m1["drop2"].shape == (2, 4, 192, 8, 8)
    assert set(torch.unique(m1["drop1"]).tolist()) == {0.0, 2.0}    # p = 0.5: kept units scaled by 2
    nets.train(False)
    assert nets._noise(x) is None                                    # evaluation: no dropout


def test_stacking_a_dropout_model_without_seeds_is_refused():
    with pytest.raises(ValueError, match="has dropout: stacking it needs noise_seeds"):
        StackedNets([build_model("allcnnc", 10, seed=s) for s in (1, 2)], "cpu")
