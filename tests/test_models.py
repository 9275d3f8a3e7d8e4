"""Tests for imbalance_core.models (CPU only, a few seconds)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from imbalance_core.specs import DATASETS
from imbalance_core.models import (
    MODELS,
    AllCNNC,
    LeNet5,
    ResNet10,
    build_model,
    count_parameters,
    freeze_all_but_last,
    last_layer_parameters,
)


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def bn(c: int) -> int:  # weight + bias (running stats are buffers)
    return 2 * c


def preact_block(cin: int, cout: int, projection: bool) -> int:
    return (
        bn(cin)
        + conv(cin, cout, 3, bias=False)
        + bn(cout)
        + conv(cout, cout, 3, bias=False)
        + (conv(cin, cout, 1, bias=False) if projection else 0)
    )


# ---------------------------------------------------------------- shapes


@torch.no_grad()
def test_lenet5_shape():
    m = LeNet5().eval()
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert LeNet5(num_classes=4).eval()(torch.randn(2, 1, 28, 28)).shape == (2, 4)


@torch.no_grad()
def test_allcnnc_shape():
    m = AllCNNC().eval()
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert (out >= 0).all()  # ReLU after the last 1x1 conv, then average pool


@torch.no_grad()
@pytest.mark.parametrize("num_classes", [1000, 10])
def test_resnet10_shape(num_classes):
    m = ResNet10(num_classes=num_classes).eval()
    assert m(torch.randn(2, 3, 224, 224)).shape == (2, num_classes)


def test_default_num_classes():
    assert LeNet5().fc2.out_features == 10
    assert AllCNNC().conv9.out_channels == 10
    assert ResNet10().fc.out_features == 1000


def test_registry():
    assert set(MODELS) == {"lenet5", "allcnnc", "resnet10"}
    assert {name: spec.model for name, spec in DATASETS.items()} == {
        "mnist": "lenet5",
        "mnist-sample": "lenet5",
        "cifar10": "allcnnc",
        "imagenet": "resnet10",
    }
    for name, cls in MODELS.items():
        assert isinstance(build_model(name, 10, seed=0), cls)


def test_unknown_model_name():
    with pytest.raises(ValueError) as exc:
        build_model("vgg16", 10)
    msg = str(exc.value)
    assert "vgg16" in msg
    for name in MODELS:
        assert name in msg


# ---------------------------------------------------------------- parameter counts


def test_lenet5_parameter_count():
    expected = (
        conv(1, 20, 5)  # 520
        + conv(20, 50, 5)  # 25,050
        + linear(50 * 4 * 4, 500)  # 400,500
        + linear(500, 10)  # 5,010
    )
    assert expected == 431_080
    assert count_parameters(LeNet5()) == expected


def test_allcnnc_parameter_count():
    expected = (
        conv(3, 96, 3)  # 2,688
        + conv(96, 96, 3)  # 83,040
        + conv(96, 96, 3)  # 83,040 (stride 2)
        + conv(96, 192, 3)  # 166,080
        + conv(192, 192, 3)  # 331,968
        + conv(192, 192, 3)  # 331,968 (stride 2)
        + conv(192, 192, 3)  # 331,968 (valid)
        + conv(192, 192, 1)  # 37,056
        + conv(192, 10, 1)  # 1,930
    )
    assert expected == 1_369_738
    assert count_parameters(AllCNNC()) == expected


@pytest.mark.parametrize("num_classes", [1000, 10])
def test_resnet10_parameter_count(num_classes):
    expected = (
        conv(3, 64, 7, bias=False)  # 9,408 stem
        + bn(64)  # 128
        + preact_block(64, 64, projection=False)  # 73,984
        + preact_block(64, 128, projection=True)  # 229,760
        + preact_block(128, 256, projection=True)  # 918,272
        + preact_block(256, 512, projection=True)  # 3,671,552
        + bn(512)  # 1,024 final BN
        + linear(512, num_classes)  # 513,000 / 5,130
    )
    assert expected == {1000: 5_417_128, 10: 4_909_258}[num_classes]
    assert count_parameters(ResNet10(num_classes=num_classes)) == expected


def test_count_parameters_trainable_only():
    m = LeNet5()
    freeze_all_but_last(m)
    assert count_parameters(m, trainable_only=True) == linear(500, 10)
    assert count_parameters(m) == 431_080


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize("cls", [LeNet5, AllCNNC])
def test_caffe_xavier_init(cls):
    """Caffe's xavier filler: U(-a, a), a = sqrt(3 / fan_in), fan_in = in_channels x kh x kw; zero biases."""
    m = cls()
    n = 0
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight
            fan_in = w.shape[1] * (w.shape[2] * w.shape[3] if w.dim() == 4 else 1)
            bound = math.sqrt(3.0 / fan_in)
            assert w.abs().max().item() <= bound + 1e-7, name
            assert w.abs().max().item() > 0.9 * bound, name          # the spread fills the bound
            if w.numel() >= 10_000:                                  # uniform: std = a / sqrt(3) = 1 / sqrt(fan_in)
                assert abs(w.std().item() * math.sqrt(fan_in) - 1) < 0.05, name
            assert torch.count_nonzero(mod.bias) == 0
            n += 1
    assert n == {LeNet5: 4, AllCNNC: 9}[cls]
    # not PyTorch's xavier_uniform_ (fan-in and fan-out averaged): LeNet-5's conv1 would be bounded by
    # sqrt(6 / (25 + 500)) = 0.107; Caffe's bound is sqrt(3 / 25) = 0.346
    if cls is LeNet5:
        assert m.conv1.weight.abs().max().item() > 0.3


def test_bias_lr_multipliers():
    """Caffe's LeNet example trains biases at 2x the base lr; All-CNN-C (authors' prototxt) and ResNet-10 1x;
    batch-norm parameters are never 'biases'."""
    from imbalance_core.models import param_lr_mults
    names = [n for n, _ in LeNet5().named_parameters()]
    assert dict(zip(names, param_lr_mults(names, LeNet5.bias_lr_mult))) == {
        "conv1.weight": 1.0, "conv1.bias": 2.0, "conv2.weight": 1.0, "conv2.bias": 2.0,
        "fc1.weight": 1.0, "fc1.bias": 2.0, "fc2.weight": 1.0, "fc2.bias": 2.0}
    assert AllCNNC.bias_lr_mult == 1.0 and ResNet10.bias_lr_mult == 1.0
    names = [n for n, _ in ResNet10(num_classes=10).named_parameters()]
    assert set(param_lr_mults(names, 2.0)[i] for i, n in enumerate(names) if ".bn" in n or n.startswith("bn")) == {1.0}
    assert param_lr_mults(["fc.bias", "bias", "weight"], 2.0) == [2.0, 2.0, 1.0]


def test_resnet10_init():
    m = ResNet10(num_classes=10)
    for name, mod in m.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name
        elif isinstance(mod, nn.Conv2d):
            assert mod.bias is None
            fan_out = mod.weight.shape[0] * mod.weight[0, 0].numel()
            if mod.weight.numel() > 10_000:  # enough samples for a std estimate
                std = mod.weight.std().item()
                assert abs(std / math.sqrt(2.0 / fan_out) - 1) < 0.1, name
    assert torch.all(m.fc.bias == 0)
    assert m.fc.weight.abs().max().item() <= 1 / math.sqrt(512) + 1e-7


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name", ["lenet5", "allcnnc", "resnet10"])
def test_seed_determinism(name):
    nc = 10
    a, b, c = (build_model(name, nc, seed=s) for s in (7, 7, 8))
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert sa.keys() == sb.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    weights = [k for k in sa if k.endswith("weight") and sa[k].dim() > 1]
    assert weights and all(not torch.equal(sa[k], sc[k]) for k in weights)


def test_build_model_leaves_global_rng_untouched():
    torch.manual_seed(123)
    ref = torch.rand(5)
    torch.manual_seed(123)
    build_model("lenet5", 10, seed=0)
    build_model("allcnnc", 10, seed=1)
    assert torch.equal(torch.rand(5), ref)


# ---------------------------------------------------------------- last layers / freezing


@pytest.mark.parametrize(
    "cls,expected",
    [
        (LeNet5, {"fc2.weight", "fc2.bias"}),
        (AllCNNC, {"conv8.weight", "conv8.bias", "conv9.weight", "conv9.bias"}),
        (ResNet10, {"fc.weight", "fc.bias"}),
    ],
)
def test_freeze_all_but_last(cls, expected):
    m = cls(num_classes=10)
    freeze_all_but_last(m)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == expected
    params = dict(m.named_parameters())
    assert [id(p) for p in last_layer_parameters(m)] == [
        id(params[n]) for n in params if n in expected
    ]


def test_last_layers_attribute():
    assert LeNet5.last_layers == ("fc2",)
    assert AllCNNC.last_layers == ("conv8", "conv9")
    assert ResNet10.last_layers == ("fc",)
    m = AllCNNC()
    assert all(isinstance(getattr(m, n), nn.Conv2d) for n in m.last_layers)
    assert m.conv8.kernel_size == (1, 1) and m.conv9.kernel_size == (1, 1)


# ---------------------------------------------------------------- vmap over K copies


def _stacked(name: str, k: int):
    models = [build_model(name, 10, seed=s) for s in range(k)]
    for m in models:
        m.eval()
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def fmodel(p, b, x):
        return functional_call(base, (p, b), (x,))

    return models, base, params, buffers, fmodel


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("allcnnc", (3, 32, 32))])
def test_vmap_matches_per_model_forward(name, shape):
    k, bsz = 3, 4
    torch.manual_seed(0)
    x = torch.randn(bsz, *shape)
    models, base, params, buffers, fmodel = _stacked(name, k)
    base.eval()
    with torch.no_grad():
        out = vmap(fmodel, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
        ref = torch.stack([m(x) for m in models])
    assert out.shape == (k, bsz, 10)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # Train mode (dropout active for All-CNN-C) also runs under vmap with fresh randomness.
    base.train()
    with torch.no_grad():
        out_t = vmap(fmodel, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
    assert out_t.shape == (k, bsz, 10)


def test_vmap_grad_lenet5():
    k, bsz = 2, 4
    torch.manual_seed(0)
    x, y = torch.randn(bsz, 1, 28, 28), torch.randint(0, 10, (bsz,))
    models, base, params, buffers, fmodel = _stacked("lenet5", k)
    base.train()

    def loss(p, b, x, y):
        return nn.functional.cross_entropy(fmodel(p, b, x), y)

    grads = vmap(grad(loss), in_dims=(0, 0, None, None), randomness="different")(
        params, buffers, x, y
    )
    for i, m in enumerate(models):
        m.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        for n, p in m.named_parameters():
            torch.testing.assert_close(grads[n][i], p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("K,only_last", [(1, False), (2, False), (1, True)])
def test_train_step_applies_caffe_lr_mults(K, only_last):
    """One SGD step from rest: every parameter moves by -lr x lr_mult x (grad + wd x w); LeNet biases 2x."""
    import copy

    import torch.nn.functional as F

    from imbalance_core.train import Schedule, StackedNets, train
    models = [build_model("lenet5", 10, seed=s) for s in range(K)]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(K, 8, 1, 28, 28, generator=gen), torch.randint(0, 10, (K, 8), generator=gen)
    refs = [copy.deepcopy(m) for m in models]
    sched = Schedule(1, 8, 0.01, 0.9, 5e-4, "inv", gamma=1e-4)
    nets = StackedNets(models, "cpu")
    train(nets, [(x, y)], sched, only_last=only_last)
    after = nets.state_dicts()
    for k, ref in enumerate(refs):
        loss = F.cross_entropy(ref(x[k]), y[k])
        names, params = zip(*ref.named_parameters())
        grads = torch.autograd.grad(loss, params)
        for n, p0, g in zip(names, params, grads):
            trained = not only_last or n.startswith("fc2.")
            mult = (2.0 if n.endswith("bias") else 1.0) if trained else 0.0
            expected = p0.detach() - 0.01 * mult * (g + 5e-4 * p0.detach())
            assert torch.allclose(after[k][n], expected, atol=1e-6, rtol=1e-5), (k, n)
            if trained and n.endswith("bias") and g.abs().max() > 1e-4:     # 1x would miss by half the step
                assert not torch.allclose(after[k][n], p0.detach() - 0.01 * (g + 5e-4 * p0.detach()), atol=1e-7)
