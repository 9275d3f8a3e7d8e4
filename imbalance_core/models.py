"""Networks of Buda, Maki & Mazurowski (2018), in plain PyTorch.

* :class:`LeNet5`   -- MNIST, Caffe's LeNet (no non-linearity after the convolutions).
* :class:`AllCNNC`  -- CIFAR-10, All-CNN-C of Springenberg et al. (2015).
* :class:`ResNet10` -- ImageNet, pre-activation ResNet (He et al. 2016, "Identity mappings")
  with one basic block per stage.

Every class carries ``last_layers``: the attribute names of the sub-modules that the second
phase of two-phase training fine-tunes (the last layer; for All-CNN-C the two last 1x1
convolutions, as in the paper).

The models use no in-place operations, so that ``torch.func.stack_module_state`` +
``torch.func.vmap(torch.func.functional_call(...))`` can train K copies at once (LeNet5 and AllCNNC are
tested for this; ResNet10 has BatchNorm, whose running-statistics update needs extra care under vmap).
AllCNNC's dropout masks are passed in (``forward(x, noise)``), drawn per network from its own generator
(``train.StackedNets`` with ``noise_seeds``), so a network's training never depends on its stack.

Initialisation (as the paper, in Caffe's terms: STUDY.md, "How Caffe ran it"):

* LeNet5, AllCNNC: Caffe's ``xavier`` filler, U(-a, a) with a = sqrt(3 / fan_in) (fan-in only, Caffe's
  default ``variance_norm``; not PyTorch's ``xavier_uniform_``, which averages fan-in and fan-out), zero
  biases. ``bias_lr_mult``: LeNet-5's biases train at 2x the learning rate (``lr_mult: 2`` in Caffe's LeNet
  example); All-CNN-C at 1x (the authors' prototxt, mateuszbuda/ALL-CNN). Weight decay applies to both.
* ResNet10: Kaiming-normal (fan_out, relu) convolutions, BatchNorm weight 1 / bias 0, and the
  final fc with PyTorch's *default* weight init (uniform in +-1/sqrt(fan_in), the same law as
  Torch7's nn.Linear used by fb.resnet.torch) and a zero bias.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


__all__ = [
    "LeNet5",
    "AllCNNC",
    "ResNet10",
    "PreActBasicBlock",
    "MODELS",
    "build_model",
    "last_layer_parameters",
    "freeze_all_but_last",
    "count_parameters",
    "caffe_xavier_bound",
    "NormedLinear",
    "use_cosine_head",
    "reinit_last",
    "param_lr_mults",
]


def caffe_xavier_bound(weight: torch.Tensor) -> float:
    """Caffe's ``xavier`` filler bound a = sqrt(3 / fan_in); fan_in = inputs per output (in x kh x kw)."""
    fan_in = weight[0].numel()
    return math.sqrt(3.0 / fan_in)


def _xavier_zero(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Caffe-xavier weights U(-a, a), a = sqrt(3 / fan_in), and zero biases on every Conv2d / Linear."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            a = caffe_xavier_bound(m.weight)
            nn.init.uniform_(m.weight, -a, a, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class LeNet5(nn.Module):
    """conv5x5x20 - maxpool2 - conv5x5x50 - maxpool2 - fc500 - ReLU - fc10; input (N,1,28,28).

    Caffe's ``lenet_train_test.prototxt``: no ReLU after the convolutions.
    """

    last_layers: tuple[str, ...] = ("fc2",)
    bias_lr_mult: float = 2.0     # Caffe's lenet_train_test.prototxt: lr_mult 1 for weights, 2 for biases
    linear_head: bool = True      # the classifier is a Linear layer (a cosine head may replace it)
    # Every layer below `last_layers` is deterministic in training mode (no dropout, no batch norm), so
    # phase 2 of two-phase training may run on features computed once (imbalance_core/frozen.py).
    cacheable_features: bool = True

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)   # 28 -> 24, pool -> 12
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)  # 12 -> 8, pool -> 4
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _xavier_zero(self, generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything below `last_layers`: (N,1,28,28) -> (N,500)."""
        x = F.max_pool2d(self.conv1(x), kernel_size=2, stride=2)
        x = F.max_pool2d(self.conv2(x), kernel_size=2, stride=2)
        x = torch.flatten(x, 1)
        return self.relu(self.fc1(x))

    def head(self) -> nn.Module:
        """The `last_layers` as one module mapping `features` to logits."""
        return self.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


class AllCNNC(nn.Module):
    """All-CNN-C (Springenberg et al. 2015); input (N,3,32,32).

    dropout .2 - conv3x3x96 x2 - conv3x3x96/2 - dropout .5 - conv3x3x192 x2 -
    conv3x3x192/2 - dropout .5 - conv3x3x192 (valid) - conv1x1x192 - conv1x1x{num_classes} -
    global average pool.  ReLU after every convolution, the last one included.
    Spatial sizes: 32 -> 32 -> 32 -> 16 -> 16 -> 16 -> 8 -> 6 -> 6 -> 6 -> 1.
    """

    last_layers: tuple[str, ...] = ("conv8", "conv9")
    bias_lr_mult: float = 1.0     # the authors' All-CNN-C prototxt: lr_mult 1 everywhere
    linear_head: bool = False     # the classifier is a 1x1 convolution before global pooling
    # Its dropout layers (nn.Dropout, p 0.2, 0.5, 0.5). In training, a network's masks can be given (`noise`:
    # each layer's mask, already scaled by 1 / (1 - p)) so that they come from that network's own generator,
    # not from the global one shared by a vmap-stacked group (train.StackedNets with noise_seeds).
    dropout: tuple[str, ...] = ("drop_in", "drop1", "drop2")

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_in = nn.Dropout(0.2)
        self.conv1 = nn.Conv2d(3, 96, 3, padding=1)
        self.conv2 = nn.Conv2d(96, 96, 3, padding=1)
        self.conv3 = nn.Conv2d(96, 96, 3, stride=2, padding=1)
        self.drop1 = nn.Dropout(0.5)
        self.conv4 = nn.Conv2d(96, 192, 3, padding=1)
        self.conv5 = nn.Conv2d(192, 192, 3, padding=1)
        self.conv6 = nn.Conv2d(192, 192, 3, stride=2, padding=1)
        self.drop2 = nn.Dropout(0.5)
        self.conv7 = nn.Conv2d(192, 192, 3, padding=0)
        self.conv8 = nn.Conv2d(192, 192, 1)
        self.conv9 = nn.Conv2d(192, num_classes, 1)
        self.relu = nn.ReLU()
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _xavier_zero(self, generator)

    @staticmethod
    def noise_shapes(x_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The shape of each dropout layer's mask for an input batch of `x_shape` (B, 3, H, W)."""
        b, _, h, w = x_shape
        h2, w2 = (h + 1) // 2, (w + 1) // 2                 # conv3: 3x3, stride 2, padding 1
        return {"drop_in": tuple(x_shape), "drop1": (b, 96, h2, w2), "drop2": (b, 192, (h2 + 1) // 2, (w2 + 1) // 2)}

    def _drop(self, x: torch.Tensor, name: str, noise: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if noise is None or not self.training:
            return getattr(self, name)(x)
        return x * noise[name]

    def forward(self, x: torch.Tensor, noise: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        r = self.relu
        x = self._drop(x, "drop_in", noise)
        x = r(self.conv1(x))
        x = r(self.conv2(x))
        x = r(self.conv3(x))
        x = self._drop(x, "drop1", noise)
        x = r(self.conv4(x))
        x = r(self.conv5(x))
        x = r(self.conv6(x))
        x = self._drop(x, "drop2", noise)
        x = r(self.conv7(x))
        x = r(self.conv8(x))
        x = r(self.conv9(x))
        return x.mean(dim=(2, 3))


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3 plus shortcut (He et al. 2016, identity mappings).

    When the shape changes the shortcut is a 1x1 projection applied to the pre-activated
    input (as fb.resnet.torch's pre-activation model and the paper's Fig. 4(e) practice).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module | None = nn.Conv2d(
                in_planes, planes, 1, stride=stride, bias=False
            )
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class ResNet10(nn.Module):
    """Pre-activation ResNet-10; input (N,3,224,224).

    stem conv7x7/2 64 - BN - ReLU - maxpool3x3/2, then one pre-activation basic block per
    stage (widths 64-128-256-512, strides 1,2,2,2), final BN - ReLU - global avg pool - fc.
    """

    last_layers: tuple[str, ...] = ("fc",)
    bias_lr_mult: float = 1.0
    linear_head: bool = True

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = PreActBasicBlock(64, 64, stride=1)
        self.layer2 = PreActBasicBlock(64, 128, stride=2)
        self.layer3 = PreActBasicBlock(128, 256, stride=2)
        self.layer4 = PreActBasicBlock(256, 512, stride=2)
        self.bn_final = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, num_classes)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
        # fc: PyTorch/Torch7 default law U(-1/sqrt(fan_in), 1/sqrt(fan_in)), zero bias.
        bound = 1.0 / math.sqrt(self.fc.in_features)
        nn.init.uniform_(self.fc.weight, -bound, bound, generator=generator)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.relu(self.bn_final(x))
        x = torch.flatten(x.mean(dim=(2, 3)), 1)
        return self.fc(x)


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW (Cao et al. 2019, their `NormedLinear`): logits = cos(x, w_c) in [-1, 1].

    Weight (out, in), no bias; initialised U(-1, 1) per row, then renormalised (their init, transposed).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        nn.init.uniform_(self.weight, -1.0, 1.0, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).transpose(-1, -2)


HEADS = ("linear", "cosine")


def _head_name(model: nn.Module) -> str:
    """The attribute name of the model's classifier layer (the last of `last_layers`)."""
    return model.last_layers[-1]


def use_cosine_head(model: nn.Module) -> nn.Module:
    """Replace the model's last Linear layer by a `NormedLinear` of the same shape (in place; returned)."""
    name = _head_name(model)
    old = getattr(model, name)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"a cosine head needs a Linear last layer; {type(model).__name__}.{name} is "
                         f"{type(old).__name__} (LeNet-5 and ResNet-10 have one, All-CNN-C does not)")
    setattr(model, name, NormedLinear(old.in_features, old.out_features))
    return model


def reinit_last(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise the classifier layer (the last of `last_layers`) as at construction, from `seed` (cRT)."""
    layer = getattr(model, _head_name(model))
    gen = torch.Generator().manual_seed(int(seed) + 0xC47)
    if isinstance(layer, NormedLinear):
        layer.reset_parameters(gen)
    elif isinstance(model, ResNet10):
        bound = 1.0 / math.sqrt(layer.in_features)
        nn.init.uniform_(layer.weight, -bound, bound, generator=gen)
        nn.init.zeros_(layer.bias)
    else:
        _xavier_zero(layer, gen)
    return model


MODELS: dict[str, type[nn.Module]] = {
    "lenet5": LeNet5,
    "allcnnc": AllCNNC,
    "resnet10": ResNet10,
}



def build_model(name: str, num_classes: int, seed: int | None = None, head: str = "linear") -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) with ``num_classes`` outputs.

    With ``seed`` the initialisation is a deterministic function of the seed and the global
    (CPU) RNG state is left exactly as it was; with ``seed=None`` the global RNG is used (and
    advanced) as by any ``nn.Module`` constructor.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; allowed names: {', '.join(sorted(MODELS))}"
        )
    if head not in HEADS:
        raise ValueError(f"head {head!r} is unknown; choose one of {', '.join(HEADS)}")
    cls = MODELS[key]
    if seed is None:
        model = cls(num_classes=num_classes)
        return use_cosine_head(model) if head == "cosine" else model
    # Construction happens on the CPU; fork only the CPU RNG (devices=[]) and restore it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = cls(num_classes=num_classes)
        if head == "cosine":
            use_cosine_head(model)
    return model


def _last_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    names = getattr(model, "last_layers", None)
    if not names:
        raise AttributeError(f"{type(model).__name__} has no 'last_layers' attribute")
    return [(n, model.get_submodule(n)) for n in names]


def last_layer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the sub-modules named in ``model.last_layers``, in that order."""
    return [p for _, m in _last_modules(model) for p in m.parameters()]


def freeze_all_but_last(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter except those of ``model.last_layers``.

    Only gradients are affected; train/eval mode (dropout, BatchNorm statistics) is not.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for p in last_layer_parameters(model):
        p.requires_grad_(True)


def param_lr_mults(names, bias_lr_mult: float) -> list[float]:
    """Learning-rate multiplier of each parameter name: ``bias_lr_mult`` for Conv/Linear biases, else 1.

    BatchNorm parameters (ResNet-10's ``bn*``) are not Caffe biases and keep 1x.
    """
    out = []
    for n in names:
        leaf, owner = n.rsplit(".", 1)[-1], n.rsplit(".", 1)[0] if "." in n else ""
        is_bn = owner.split(".")[-1].startswith("bn")
        out.append(float(bias_lr_mult) if leaf == "bias" and not is_bn else 1.0)
    return out


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
