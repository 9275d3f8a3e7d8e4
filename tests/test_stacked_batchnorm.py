"""ResNet-10's BatchNorm under vmap (issue 26, point 5): packing stacks ResNet-10 on any GPU with room for two,
so a stacked ResNet-10 must train and evaluate as each network alone. On CPU, at 64x64 and batch 4 (ResNet-10
pools to 1x1 at any size): after a few SGD steps in training mode (batch statistics, running statistics
updated in place under vmap) the parameters, the running means and variances and the eval-mode scores of two
stacked networks equal those of each trained alone, up to float reassociation."""
from __future__ import annotations

import dataclasses

import torch

from imbalance_core.models import build_model
from imbalance_core.specs import DATASETS
from imbalance_core.train import StackedNets, predict, train

SCHEDULE = dataclasses.replace(DATASETS["imagenet"].schedule, iterations=3, batch_size=4)
SEEDS = (5, 6)


def batches(seed: int):
    g = torch.Generator().manual_seed(500 + seed)
    return [(torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(3)]


def trained(seeds: tuple[int, ...]):
    data = {s: batches(s) for s in seeds}
    loader = [(torch.stack([data[s][i][0] for s in seeds]), torch.stack([data[s][i][1] for s in seeds]))
              for i in range(SCHEDULE.iterations)]
    nets = StackedNets([build_model("resnet10", 10, seed=s) for s in seeds], "cpu")
    train(nets, loader, SCHEDULE)
    test = torch.Generator().manual_seed(7)
    scores = predict(nets, [(torch.randn(6, 3, 64, 64, generator=test), torch.zeros(6, dtype=torch.long))])
    return dict(zip(seeds, nets.state_dicts())), scores


def test_resnet10_batchnorm_stacked_equals_alone_in_training_and_in_evaluation():
    stacked, scores = trained(SEEDS)
    start = build_model("resnet10", 10, seed=SEEDS[0]).state_dict()
    for j, s in enumerate(SEEDS):
        alone, alone_scores = trained((s,))
        for k, v in alone[s].items():
            if v.dtype.is_floating_point:
                assert torch.allclose(stacked[s][k], v, rtol=1e-4, atol=1e-5), (s, k)
            else:                                                    # num_batches_tracked
                assert torch.equal(stacked[s][k], v), (s, k)
        assert torch.allclose(scores[j], alone_scores[0], rtol=0, atol=1e-5)
    # the running statistics moved (train mode updated them under vmap), and differ between the two networks
    rm = [k for k in start if k.endswith("running_mean")]
    assert rm and all(not torch.equal(stacked[SEEDS[0]][k], start[k]) for k in rm)
    assert any(not torch.equal(stacked[SEEDS[0]][k], stacked[SEEDS[1]][k]) for k in rm)
