"""Backbones: pretrained networks seen as ordered layer groups with a feature map.

Every strategy works on :class:`Backbone` only through ``groups`` (input → output),
``forward_features`` (N, D) and ``new_head``; adapters wrap concrete networks.
"""

from __future__ import annotations

import copy
import hashlib
import math
from abc import ABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen, validate_block
from tlbench.core.registry import Registry
from tlbench.data.preprocess import Preprocess


@dataclass(frozen=True, eq=False)
class SourceHead:
    """The classifier a backbone's weights were trained with, on its features: what gives
    source-class probabilities to transferability scores (LEEP, NCE). Not a module of the
    backbone (its state dict and identity stay the weights'); it travels with the backbone.

    Attributes:
        weight, bias: (Z, D) and (Z,) of the last linear layer over ``forward_features``.
        accuracy: the weights' accuracy on their source task, in [0, 1], when known.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    accuracy: float | None = None

    @classmethod
    def of(cls, linear: nn.Linear, accuracy: float | None = None) -> "SourceHead":
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        return cls(linear.weight.detach().cpu().clone(), bias.detach().cpu().clone(), accuracy)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax of the source logits, computed in float64 (no class underflows to 0 that a
        float32 softmax would keep)."""
        logits = features.double() @ self.weight.double().T + self.bias.double()
        return torch.softmax(logits, dim=1)


class Backbone(nn.Module, ABC):
    """A network as an ordered list of layer groups plus a pooling map to features.

    Subclasses set ``groups`` (an ``nn.ModuleList`` ordered input → output) and
    ``feature_dim``; ``forward_features`` runs the groups then :meth:`pool`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Args: ClassVar[type[Frozen]]
    groups: nn.ModuleList
    feature_dim: int
    weights_id: str = "random"
    #: The shape of one input (channels first) a contract check feeds it; None: a 3 × 32 × 32 image.
    example_input: ClassVar[tuple[int, ...] | None] = None
    rebuild_to_reinitialize: ClassVar[bool] = False
    init_args: dict[str, Any] | None = None  # the suite arguments it was built from, when known
    source_head: SourceHead | None = None  # the weights' own classifier, when they come with one
    #: Attributes that name where the weights came from, not how the network computes: runs trained
    #: side by side need not agree on them (:func:`tlbench.training.vectorised.partition`).
    provenance_attributes: ClassVar[frozenset[str]] = frozenset({"weights_id", "source_head", "init_args"})

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Maps the last group's output to (N, D); default: global average pool (a group that
        already returns (N, D) passes through)."""
        if x.dim() == 2:
            return x
        return torch.flatten(nn.functional.adaptive_avg_pool1d(x.flatten(2), 1), 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for group in self.groups:
            x = group(x)
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone as a module is its feature map (:meth:`forward_features`): (N, ...) → (N, D)."""
        return self.forward_features(x)

    def new_head(self, num_classes: int) -> nn.Linear:
        """A freshly initialised linear task head on top of the features."""
        return nn.Linear(self.feature_dim, num_classes)

    @classmethod
    def check_weights(cls, args: Frozen, weights: str) -> None:
        """Raises ConfigError unless ``weights`` names published weights of this architecture
        (only torchvision and timm architectures have any)."""
        raise ConfigError(f"published weights need a torchvision or timm arch ({', '.join(published_archs())}), "
                          f"got {cls.name!r}; use checkpoint: or pretrain: for it")

    @classmethod
    def with_weights(cls, args: Frozen, weights: str) -> "Backbone":
        """The backbone with published ``weights`` (from a local cache, else downloaded)."""
        cls.check_weights(args, weights)
        raise NotImplementedError

    @classmethod
    def weights_preprocess(cls, args: Frozen, weights: str | None) -> Preprocess:
        """How images are prepared for these weights: torchvision's ImageNet default
        (resize 256, crop 224) unless the weights publish their own."""
        return Preprocess()

    def reinitialized(self, seed: int) -> "Backbone":
        """A copy with every layer re-drawn from its default initialisation (seeded).

        Architectures built from a library's network (``rebuild_to_reinitialize``) are built
        again from their arguments, so parameters that no layer's ``reset_parameters``
        re-draws (ViT's class token and position embedding, ConvNeXt's layer scales) get
        the library's own initialisation too; the others reset layer by layer.
        """
        if self.rebuild_to_reinitialize and self.init_args is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                rebuilt = type(self)(**self.init_args)
            rebuilt.init_args = self.init_args
            return identify(rebuilt, f"random:{seed}")
        fresh = copy.deepcopy(self)
        fresh.source_head = None  # re-drawn weights: the pretrained classifier no longer fits them
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


class SmallCNNArgs(Frozen):
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
    example_input = (1, 8, 8)
    conv, norm, pool_layer = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d

    def pools_after(self, i: int, depth: int) -> bool:
        return 0 < i < depth - 1


class SmallCNN1d(_SmallCNN):
    """A small 1-D CNN for signals (MNIST-1D): pools after every group but the last."""

    name = "cnn1d"
    description = "small 1-D CNN (conv-BN-ReLU groups) for signals; offline"
    example_input = (1, 40)
    conv, norm, pool_layer = nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d

    def pools_after(self, i: int, depth: int) -> bool:
        return i < depth - 1


class TorchvisionBackbone(Backbone):
    """A torchvision classification network seen as layer groups.

    Subclasses name a ``family`` of ``VARIANTS`` (torchvision model names) and split a
    network into groups (input → output, every parameter in exactly one) whose last output,
    pooled, is what the network's original classifier saw.
    """

    VARIANTS: ClassVar[tuple[str, ...]]
    rebuild_to_reinitialize = True

    def __init__(self, variant: str, net: nn.Module | None = None) -> None:
        """Wraps ``net`` (a torchvision network of ``variant``; built untrained when None)."""
        super().__init__()
        groups, self.feature_dim = self.split(net if net is not None else self.network(variant))
        self.groups = nn.ModuleList(groups)

    def split(self, net: nn.Module) -> tuple[list[nn.Module], int]:
        """The network's layer groups (input → output) and the feature width they end in."""
        raise NotImplementedError

    @classmethod
    def check_variant(cls, variant: str) -> None:
        if variant not in cls.VARIANTS:
            raise ConfigError(f"unknown {cls.name} variant {variant!r}; allowed: {', '.join(cls.VARIANTS)}")

    @classmethod
    def network(cls, variant: str) -> nn.Module:
        import torchvision

        cls.check_variant(variant)
        return torchvision.models.get_model(variant, weights=None)

    @classmethod
    def _weights_member(cls, args: Frozen, weights: str) -> Any:
        import torchvision

        variant = args.variant  # type: ignore[attr-defined]
        cls.check_variant(variant)
        enum = torchvision.models.get_model_weights(variant)
        if weights == "DEFAULT":
            return enum.DEFAULT
        if weights not in enum.__members__:
            raise ConfigError(f"unknown weights {weights!r} for {variant}; allowed: "
                              f"{', '.join(['DEFAULT', *enum.__members__])}")
        return enum[weights]

    @classmethod
    def check_weights(cls, args: Frozen, weights: str) -> None:
        cls._weights_member(args, weights)

    @classmethod
    def with_weights(cls, args: Frozen, weights: str) -> "Backbone":
        """From a torchvision weights enum member (e.g. ``IMAGENET1K_V1``): the torch hub
        cache, else a download when the network allows; otherwise the error names the file
        expected in the cache."""
        import torchvision

        member = cls._weights_member(args, weights)
        variant = args.variant  # type: ignore[attr-defined]
        try:
            net = torchvision.models.get_model(variant, weights=member)
        except Exception as err:  # noqa: BLE001 - download failures come in many types
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name
            raise ConfigError(f"cannot load {variant} weights {weights}: expected {cache} "
                              f"in the torch hub cache ({type(err).__name__})") from None
        head = last_linear(net)
        with torch.random.fork_rng(devices=[]):  # a replaced stem is drawn from a fixed seed
            torch.manual_seed(0)
            out = cls(**args.model_dump(), net=net)
        out.init_args = args.model_dump()
        if head is not None and head.in_features == out.feature_dim:
            out.source_head = SourceHead.of(head, published_top1(member))
        return identify(out, f"torchvision:{variant}:{weights}")

    @classmethod
    def weights_preprocess(cls, args: Frozen, weights: str | None) -> Preprocess:
        if weights is None:
            return Preprocess()
        return Preprocess.from_transforms(cls._weights_member(args, weights).transforms())


def last_linear(net: nn.Module) -> nn.Linear | None:
    """The network's last linear layer: its classifier over the pooled features (ResNet's
    ``fc``, ViT's ``heads.head``, the last layer of ConvNeXt's, EfficientNet's and MobileNetV3's
    ``classifier``)."""
    found = None
    for module in net.modules():
        if isinstance(module, nn.Linear):
            found = module
    return found


def published_top1(member: Any) -> float | None:
    """The ImageNet-1K top-1 accuracy torchvision publishes for a weights enum member, in [0, 1]."""
    try:
        return float(member.meta["_metrics"]["ImageNet-1K"]["acc@1"]) / 100.0
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


class ResNetArgs(Frozen):
    variant: str = "resnet18"
    in_channels: int = 3
    small_input: bool = False


class TorchvisionResNet(TorchvisionBackbone):
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
        net = net if net is not None else self.network(variant)
        if small_input:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            with torch.no_grad():  # keep pretrained filters: average over RGB
                net.conv1.weight.copy_(old.weight.mean(1, keepdim=True).repeat(1, in_channels, 1, 1))
        super().__init__(variant, net)

    def split(self, net: nn.Module) -> tuple[list[nn.Module], int]:
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        return [stem, net.layer1, net.layer2, net.layer3, net.layer4], net.fc.in_features


class VariantArgs(Frozen):
    variant: str


class _ViTEmbedding(nn.Module):
    """Patch projection, class token and position embedding of a torchvision ViT."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv_proj = net.conv_proj
        self.class_token = net.class_token
        self.pos_embedding = net.encoder.pos_embedding
        self.dropout = net.encoder.dropout
        self.patch_size, self.image_size = net.patch_size, net.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"this ViT takes {self.image_size}x{self.image_size} images, got {h}x{w}")
        x = self.conv_proj(x).reshape(n, self.conv_proj.out_channels, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class _ClassToken(nn.Module):
    """The final layer norm, then the class token: a ViT's pre-logits features."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)[:, 0]


class VisionTransformer(TorchvisionBackbone):
    """torchvision ViT as groups: the embedding (patches, class token, positions), then one
    group per encoder block; the last also holds the final norm and takes the class token."""

    name = "vit"
    description = "torchvision ViT-B/16, B/32, L/16, L/32 (224 px; groups: embedding, each block)"
    Args = VariantArgs
    example_input = (3, 224, 224)
    VARIANTS: ClassVar[tuple[str, ...]] = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")

    def split(self, net: nn.Module) -> tuple[list[nn.Module], int]:
        blocks = list(net.encoder.layers)
        last = nn.Sequential(blocks[-1], _ClassToken(net.encoder.ln))
        return [_ViTEmbedding(net), *blocks[:-1], last], net.hidden_dim


class _PooledNorm(nn.Module):
    """ConvNeXt's head before its linear layer: global average pool, then LayerNorm2d."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.norm(nn.functional.adaptive_avg_pool2d(x, 1)), 1)


class ConvNeXt(TorchvisionBackbone):
    """torchvision ConvNeXt as groups: stem, stage 1, then each downsampling layer with the
    stage after it; the last also applies the head's pooling and LayerNorm."""

    name = "convnext"
    description = "torchvision ConvNeXt tiny/small/base/large (groups: stem, 4 stages)"
    Args = VariantArgs
    VARIANTS: ClassVar[tuple[str, ...]] = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")

    def split(self, net: nn.Module) -> tuple[list[nn.Module], int]:
        f = net.features
        return ([f[0], f[1], nn.Sequential(f[2], f[3]), nn.Sequential(f[4], f[5]),
                 nn.Sequential(f[6], f[7], _PooledNorm(net.classifier[0]))], net.classifier[2].in_features)


class EfficientNet(TorchvisionBackbone):
    """torchvision EfficientNet as groups: stem, the MBConv stages in pairs, the final 1x1
    conv with the last stage; features = global average pool."""

    name = "efficientnet"
    description = "torchvision EfficientNet B0–B7 (groups: stem, MBConv stages, head conv)"
    Args = VariantArgs
    VARIANTS: ClassVar[tuple[str, ...]] = tuple(f"efficientnet_b{i}" for i in range(8))

    def split(self, net: nn.Module) -> tuple[list[nn.Module], int]:
        f = net.features
        return ([f[0], nn.Sequential(f[1], f[2]), nn.Sequential(f[3], f[4]), nn.Sequential(f[5], f[6]),
                 nn.Sequential(f[7], f[8])], net.classifier[-1].in_features)


class _MobileNetHead(nn.Module):
    """MobileNetV3's pre-logits: pool, then the classifier's first linear layer + hardswish."""

    def __init__(self, linear: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.linear, self.activation = linear, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


class MobileNetV3(TorchvisionBackbone):
    """torchvision MobileNetV3 as groups: stem, inverted-residual blocks in four groups; the
    last also holds the classifier's hidden layer, whose output the original head saw."""

    name = "mobilenet_v3"
    description = "torchvision MobileNetV3 large/small (groups: stem, 4 block groups + hidden head layer)"
    Args = VariantArgs
    VARIANTS: ClassVar[tuple[str, ...]] = ("mobilenet_v3_large", "mobilenet_v3_small")

    def split(self, net: nn.Module) -> tuple[list[nn.Module], int]:
        f = list(net.features)
        n = len(f) - 1  # blocks after the stem
        cuts = [1 + round(n * q / 4) for q in range(5)]
        blocks = [nn.Sequential(*f[a:b]) for a, b in zip(cuts, cuts[1:])]
        blocks[-1].append(_MobileNetHead(net.classifier[0], net.classifier[1]))
        return [f[0], *blocks], net.classifier[0].out_features


class TimmArgs(Frozen):
    model: str
    in_chans: int = Field(3, gt=0)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    #: Further keyword arguments of ``timm.create_model`` (a ViT's ``img_size``, ``patch_size``,
    #: ``depth``, ``embed_dim``, ``num_heads``): a small ViT for small images, built untrained.
    model_args: dict[str, int | float | bool | str] = {}

    LATER_FIELDS = ("model_args",)


class TimmBackbone(Backbone):
    """Any timm model (``arch: timm:<name>`` or ``arch: timm`` with ``args.model``), through
    timm's model contract: ``num_classes=0`` gives pooled pre-logit features (pretrained
    weights' linear classifier over them is kept as the source head first), and the model's
    ``group_matcher`` (coarse) gives its layer groups, input → output, the same grouping
    timm's layer-wise learning-rate decay uses. Needs the optional dependency timm.

    Unlike the other adapters' groups, these are not stages the features run through one
    after another (timm's forward is the model's own): they are containers for freezing and
    per-group learning rates, each holding the largest submodules whose parameters are all
    its own (so a frozen group's batch norms, dropout and stochastic depth run in eval mode)
    plus loose parameters timm assigns it (ViT's class token and position embedding). They
    are kept out of the module tree, so the state dict is exactly timm's.
    """

    name = "timm"
    description = "any timm model as timm:<name> (optional dependency; weights: DEFAULT = timm's pretrained)"
    Args = TimmArgs
    rebuild_to_reinitialize = True

    def __init__(self, model: str, in_chans: int = 3, drop_path_rate: float = 0.0,
                 model_args: dict[str, Any] | None = None, pretrained: bool = False) -> None:
        super().__init__()
        timm = _import_timm()
        extra = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}  # not every model takes it
        extra.update(model_args or {})
        try:
            # pretrained: built with the weights' own classifier, kept as the source head, then dropped
            classes = {} if pretrained else {"num_classes": 0}
            self.net = timm.create_model(model, pretrained=pretrained, in_chans=in_chans, **classes, **extra)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ConfigError(f"unknown timm model {model!r} (timm {timm.__version__}; "
                                  f"see timm.list_models())") from None
            raise
        except TypeError as err:  # an argument this model's constructor does not take
            raise ConfigError(f"timm model {model!r} cannot be built with in_chans={in_chans}, "
                              f"drop_path_rate={drop_path_rate}, model_args={model_args or {}}: "
                              f"{str(err).splitlines()[0][:120]}") from None
        if pretrained:
            head = self.net.get_classifier()
            self.net.reset_classifier(0)
        self.feature_dim = int(getattr(self.net, "head_hidden_size", None) or self.net.num_features)
        if pretrained and isinstance(head, nn.Linear) and head.in_features == self.feature_dim:
            # timm's contract: the classifier is one linear map of the pre-logit features
            self.source_head = SourceHead.of(head)  # timm's configs carry no top-1: accuracy unknown
        self.__dict__["_groups"] = self._group(self.net)  # not registered: see the class docstring

    @property
    def groups(self) -> nn.ModuleList:  # type: ignore[override]
        return self.__dict__["_groups"]

    @staticmethod
    def _group(net: nn.Module) -> nn.ModuleList:
        """Each timm group as a container of the largest submodules whose parameters all
        belong to it (so freezing a group also stops its dropout and stochastic depth), plus
        its parameters that no such submodule holds."""
        from timm.models import group_parameters

        named = dict(net.named_parameters())
        names = group_parameters(net, net.group_matcher(coarse=True))  # timm's group id → parameter names
        group_of = {id(named[n]): rank for rank, gid in enumerate(sorted(names)) for n in names[gid]}
        layers: list[list[nn.Module]] = [[] for _ in names]

        def assign(module: nn.Module) -> None:
            owners = {group_of[id(p)] for p in module.parameters()}
            if len(owners) == 1 and module is not net:
                layers[owners.pop()].append(module)
                return
            for child in module.children():
                assign(child)

        assign(net)
        covered = {id(p) for group in layers for m in group for p in m.parameters()}
        groups = nn.ModuleList()
        for rank, modules in enumerate(layers):
            group = nn.Module()
            group.layers = nn.ModuleList(modules)
            group.extra = nn.ParameterList(p for p in net.parameters()
                                           if group_of[id(p)] == rank and id(p) not in covered)
            groups.append(group)
        return groups

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @classmethod
    def check_weights(cls, args: Frozen, weights: str) -> None:
        assert isinstance(args, TimmArgs)
        if weights != "DEFAULT":
            raise ConfigError(f"unknown weights {weights!r} for timm model {args.model}; allowed: DEFAULT "
                              f"(timm's pretrained weights; pick a tag with the model name, e.g. resnet50.a1_in1k)")
        if _import_timm().models.get_pretrained_cfg(args.model) is None:
            raise ConfigError(f"timm model {args.model!r} has no pretrained weights")

    @classmethod
    def with_weights(cls, args: Frozen, weights: str) -> "Backbone":
        """timm's pretrained weights: the Hugging Face hub cache, else a download when the
        network allows; otherwise the error names the cache looked in."""
        assert isinstance(args, TimmArgs)
        cls.check_weights(args, weights)
        try:
            out = cls(**args.model_dump(), pretrained=True)
            out.init_args = args.model_dump()
        except Exception as err:  # noqa: BLE001 - hub and network failures come in many types
            from huggingface_hub.constants import HF_HUB_CACHE

            cfg = _import_timm().models.get_pretrained_cfg(args.model)
            source = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or args.model
            raise ConfigError(f"cannot load timm weights of {args.model}: expected {source} in the Hugging Face "
                              f"cache {HF_HUB_CACHE} ({type(err).__name__})") from None
        return identify(out, f"timm:{args.model}:{weights}")

    @classmethod
    def weights_preprocess(cls, args: Frozen, weights: str | None) -> Preprocess:
        """The resolution, crop ratio, normalisation and interpolation timm's pretrained config
        gives the model (what ``timm.data.create_transform`` would do at evaluation)."""
        assert isinstance(args, TimmArgs)
        if weights is None:
            return Preprocess()
        from timm.data import resolve_data_config

        cfg = _import_timm().models.get_pretrained_cfg(args.model)
        data = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {})
        crop = int(data["input_size"][-1])
        return Preprocess(resize=int(math.floor(crop / data["crop_pct"])), crop=crop, mean=tuple(data["mean"]),
                          std=tuple(data["std"]), interpolation=str(data["interpolation"]))


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("arch timm needs the optional dependency timm: pip install 'tlbench[timm]'") from None
    return timm


def published_archs() -> list[str]:
    """Architectures with published weights (``weights:`` in a suite)."""
    return [n for n, c in BACKBONES if issubclass(c, (TorchvisionBackbone, TimmBackbone))]


BACKBONES: Registry[Backbone] = Registry("backbone architecture", Backbone, plugin_kind="backbone")
for _cls in (SmallCNN2d, SmallCNN1d, TorchvisionResNet, VisionTransformer, ConvNeXt, EfficientNet, MobileNetV3,
             TimmBackbone):
    BACKBONES.add(_cls)


def build_backbone(arch: str, args: dict[str, Any], *, seed: int = 0, where: str = "") -> Backbone:
    """Builds a randomly initialised backbone (deterministic for ``seed``)."""
    cls = BACKBONES.get(arch, where=f"{where}.arch" if where else "")
    parsed = validate_block(cls.Args, args, where=f"{where}.args")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            backbone = cls(**parsed.model_dump())
        except ConfigError as err:
            raise ConfigError(f"{where}.args: {err}" if where else str(err)) from None
    backbone.init_args = parsed.model_dump()
    return identify(backbone, f"random:{seed}")


def _checkpoint_head(state: dict[str, Any], feature_dim: int, path: Path) -> SourceHead | None:
    """A checkpoint's source head (None without a ``head`` entry); one line when malformed."""
    head, accuracy = state.get("head"), state.get("source_accuracy")
    if head is None:
        return None
    weight = head.get("weight") if isinstance(head, dict) else None
    bias = head.get("bias") if isinstance(head, dict) else None
    if not (isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[1] == feature_dim
            and isinstance(bias, torch.Tensor) and bias.shape == (weight.shape[0],)):
        raise ConfigError(f"checkpoint {path}: head must be {{'weight': (classes, {feature_dim}) tensor, "
                          f"'bias': (classes,) tensor}} over the backbone's {feature_dim} features")
    if accuracy is not None and not (isinstance(accuracy, (int, float)) and 0 <= accuracy <= 1):
        raise ConfigError(f"checkpoint {path}: source_accuracy {accuracy!r} must be a number in [0, 1]")
    return SourceHead(weight.detach().float().clone(), bias.detach().float().clone(),
                      None if accuracy is None else float(accuracy))


def load_checkpoint(backbone: Backbone, path: Path) -> Backbone:
    """Loads a local checkpoint (``weights_only=True``) into a copy: a state dict, or a dict
    ``{"backbone": state dict, "head": {"weight": (Z, D), "bias": (Z,)}, "source_accuracy": a}``
    whose optional ``head`` is the weights' source classifier over the features (kept as the
    source head) and ``source_accuracy`` its accuracy on the source task in [0, 1]."""
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"checkpoint {path} cannot be read: {type(err).__name__}: {err}") from None
    head = None
    if isinstance(state, dict) and "backbone" in state:
        head = _checkpoint_head(state, backbone.feature_dim, path)
        state = state["backbone"]
    out = copy.deepcopy(backbone)
    out.source_head = head
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
