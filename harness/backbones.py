"""Backbones: pretrained networks seen as ordered layer groups with a feature map.

Every strategy works on :class:`Backbone` only through ``groups`` (input → output),
``forward_features`` (N, D) and ``new_head``; adapters wrap concrete networks.
"""

from __future__ import annotations

import copy
import hashlib
from abc import ABC
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from harness.errors import ConfigError
from harness.registry import Registry


class ArgsModel(BaseModel):
    """Base for typed, frozen option blocks that reject unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Backbone(nn.Module, ABC):
    """A network as an ordered list of layer groups plus a pooling map to features.

    Subclasses set ``groups`` (an ``nn.ModuleList`` ordered input → output) and
    ``feature_dim``; ``forward_features`` runs the groups then :meth:`pool`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Args: ClassVar[type[ArgsModel]]
    groups: nn.ModuleList
    feature_dim: int
    weights_id: str = "random"

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Maps the last group's output to (N, D); default: global average pool."""
        return torch.flatten(nn.functional.adaptive_avg_pool1d(x.flatten(2), 1), 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for group in self.groups:
            x = group(x)
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`forward_features`: (N, ...) → (N, D)."""
        return self.forward_features(x)

    def new_head(self, num_classes: int) -> nn.Linear:
        """A freshly initialised linear task head on top of the features."""
        return nn.Linear(self.feature_dim, num_classes)

    def reinitialized(self, seed: int) -> "Backbone":
        """A copy with every layer re-drawn from its default initialisation (seeded)."""
        fresh = copy.deepcopy(self)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in fresh.modules():
                if module is not fresh and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
        return identify(fresh, f"random:{seed}")


def state_fingerprint(module: nn.Module) -> str:
    """A content hash of a module's state (parameter and buffer names, shapes and values)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def identify(backbone: Backbone, source: str) -> Backbone:
    """Sets ``weights_id`` to the weights' source, class and content hash: the identity the
    feature cache keys on, so two backbones share cached features only if they compute the
    same function."""
    backbone.weights_id = f"{source}:{type(backbone).__name__}:{state_fingerprint(backbone)}"
    return backbone


class SmallCNNArgs(ArgsModel):
    in_channels: int = Field(1, gt=0)
    width: int = Field(32, gt=0)
    depth: int = Field(3, gt=0, le=8)


class _SmallCNN(Backbone):
    """``depth`` conv-BN-ReLU groups (width doubling up to 4x) with max-pooling between
    some of them; subclasses choose the dimensionality and where to pool."""

    Args = SmallCNNArgs
    conv: ClassVar[type[nn.Module]]
    norm: ClassVar[type[nn.Module]]
    pool_layer: ClassVar[type[nn.Module]]

    def pools_after(self, i: int, depth: int) -> bool:
        raise NotImplementedError

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        chans = [in_channels] + [width * 2 ** min(i, 2) for i in range(depth)]
        groups = []
        for i in range(depth):
            layers = [self.conv(chans[i], chans[i + 1], 3, padding=1, bias=False),
                      self.norm(chans[i + 1]), nn.ReLU()]
            if self.pools_after(i, depth):
                layers.append(self.pool_layer(2))
            groups.append(nn.Sequential(*layers))
        self.groups = nn.ModuleList(groups)
        self.feature_dim = chans[-1]


class SmallCNN2d(_SmallCNN):
    """A small 2-D CNN for small images (8-32 px): pools after the middle groups only, so
    8x8 inputs keep a 4x4 map."""

    name = "cnn2d"
    description = "small 2-D CNN (conv-BN-ReLU groups) for small images; offline"
    conv, norm, pool_layer = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d

    def pools_after(self, i: int, depth: int) -> bool:
        return 0 < i < depth - 1


class SmallCNN1d(_SmallCNN):
    """A small 1-D CNN for signals (MNIST-1D): pools after every group but the last."""

    name = "cnn1d"
    description = "small 1-D CNN (conv-BN-ReLU groups) for signals; offline"
    conv, norm, pool_layer = nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d

    def pools_after(self, i: int, depth: int) -> bool:
        return i < depth - 1


class ResNetArgs(ArgsModel):
    variant: str = "resnet18"
    in_channels: int = 3
    small_input: bool = False


class TorchvisionResNet(Backbone):
    """The torchvision ResNet family as groups: stem, layer1..layer4; features = avgpool.

    ``small_input`` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1 stem
    (CIFAR-style) so 8–32 px images keep spatial resolution.
    """

    name = "resnet"
    description = "torchvision ResNet 18/34/50/101/152 (weights: none, enum name, or checkpoint)"
    Args = ResNetArgs
    VARIANTS: ClassVar[tuple[str, ...]] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

    def __init__(self, variant: str = "resnet18", in_channels: int = 3, small_input: bool = False,
                 net: nn.Module | None = None) -> None:
        super().__init__()
        import torchvision

        if variant not in self.VARIANTS:
            raise ConfigError(f"unknown resnet variant {variant!r}; allowed: {', '.join(self.VARIANTS)}")
        net = net if net is not None else getattr(torchvision.models, variant)(weights=None)
        if small_input:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            with torch.no_grad():  # keep pretrained filters: average over RGB
                net.conv1.weight.copy_(old.weight.mean(1, keepdim=True).repeat(1, in_channels, 1, 1))
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.groups = nn.ModuleList([stem, net.layer1, net.layer2, net.layer3, net.layer4])
        self.feature_dim = net.fc.in_features


BACKBONES: Registry[Backbone] = Registry("backbone architecture", Backbone)
for _cls in (SmallCNN2d, SmallCNN1d, TorchvisionResNet):
    BACKBONES.add(_cls)


def build_backbone(arch: str, args: dict[str, Any], *, seed: int = 0, where: str = "") -> Backbone:
    """Builds a randomly initialised backbone (deterministic for ``seed``)."""
    cls = BACKBONES.get(arch, where=f"{where}.arch" if where else "")
    parsed = validate_args(cls.Args, args, where=f"{where}.args")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = cls(**parsed.model_dump())
    return identify(backbone, f"random:{seed}")


def validate_args(model: type[ArgsModel], args: dict[str, Any], *, where: str) -> ArgsModel:
    """Validates an option block, turning pydantic errors into one-line ConfigErrors."""
    from pydantic import ValidationError

    try:
        return model(**args)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        allowed = ", ".join(model.model_fields) or "none"
        what = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{where}.{loc}: {what} (value {first.get('input')!r}; "
                          f"fields: {allowed})") from None


def load_torchvision_weights(backbone: TorchvisionResNet, variant: str, weights: str,
                             args: ResNetArgs) -> TorchvisionResNet:
    """Rebuilds ``backbone`` from a torchvision weights enum (e.g. ``IMAGENET1K_V1``).

    Weights come from the torch hub cache; when absent and the network is unreachable the
    error names the file expected in the cache.
    """
    import torchvision

    enum = torchvision.models.get_model_weights(variant)
    try:
        member = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        allowed = ", ".join(["DEFAULT", *enum.__members__])
        raise ConfigError(f"unknown weights {weights!r} for {variant}; allowed: {allowed}") from None
    try:
        net = getattr(torchvision.models, variant)(weights=member)
    except Exception as err:  # noqa: BLE001 - download failures come in many types
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name
        raise ConfigError(f"cannot load {variant} weights {weights}: expected {cache} "
                          f"in the torch hub cache ({type(err).__name__})") from None
    with torch.random.fork_rng(devices=[]):  # a replaced stem is drawn from a fixed seed
        torch.manual_seed(0)
        out = TorchvisionResNet(variant, args.in_channels, args.small_input, net=net)
    return identify(out, f"torchvision:{variant}:{weights}")


def load_checkpoint(backbone: Backbone, path: Path) -> Backbone:
    """Loads a local state-dict checkpoint (``weights_only=True``) into a copy."""
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"checkpoint {path} cannot be read: {type(err).__name__}: {err}") from None
    if isinstance(state, dict) and "backbone" in state:
        state = state["backbone"]
    out = copy.deepcopy(backbone)
    try:
        out.load_state_dict(state)
    except RuntimeError as err:
        msg = str(err).splitlines()[0]
        raise ConfigError(f"checkpoint {path} does not fit the backbone: {msg}") from None
    return identify(out, "file")


class Classifier(nn.Module):
    """Backbone + linear head: the model the fine-tuning strategies train."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))
