"""The backbone contract, one property per check: what every strategy relies on when it freezes,
unfreezes, regroups or re-heads a network.

- it has a registrable ``name`` and a one-line ``description``;
- it builds from its ``Args`` (the suite's ``args``), the same weights for the same seed;
- its layer groups are ordered modules that hold every parameter (freezing a group freezes it all);
- ``forward_features`` maps a batch to (N, ``feature_dim``), finite, in train and eval mode;
- ``new_head(C)`` maps those features to C logits;
- gradients reach every layer group that has parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from tlbench.core.frozen import validate_block
from tlbench.testing.report import (
    CheckFailed,
    CheckReport,
    Unchecked,
    check_name_and_description,
    one_line,
    properties,
    run_properties,
)
from tlbench.training.backbones import Backbone, state_fingerprint

#: The input a backbone is checked on when it names none (``example_input``): a small RGB image.
DEFAULT_INPUT = (3, 32, 32)


@dataclass
class BackboneContext:
    cls: type[Backbone]
    args: dict[str, Any]
    input_shape: tuple[int, ...]

    _built: dict[int, Backbone] = field(default_factory=dict, repr=False)

    def build(self, seed: int = 0, *, fresh: bool = False) -> Backbone:
        """The backbone built with ``seed``: built once per seed (large ones take seconds), a copy each time
        (the properties train and switch modes)."""
        if fresh or seed not in self._built:
            parsed = validate_block(self.cls.Args, self.args,
                                    where=f"backbone {getattr(self.cls, 'name', '?')}.args")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                built = self.cls(**parsed.model_dump())
            if fresh:
                return built
            self._built[seed] = built
        return copy.deepcopy(self._built[seed])

    def built(self) -> Backbone:
        """The backbone a property checks, or why that property cannot be checked."""
        try:
            return self.build()
        except Exception as err:  # noqa: BLE001 - said as why the property could not be checked
            raise Unchecked(f"not checked: it does not build ({one_line(err)})") from None

    def batch(self, n: int = 2) -> torch.Tensor:
        return torch.randn(n, *self.input_shape, generator=torch.Generator().manual_seed(0))


def _name_and_description(c: BackboneContext) -> None:
    check_name_and_description(c.cls, named_by="the arch suites use", listed_by="tlbench list backbones")


def _builds(c: BackboneContext) -> None:
    first, second = c.build(seed=3, fresh=True), c.build(seed=3, fresh=True)
    if not isinstance(first, Backbone):
        raise CheckFailed(f"building it gave a {type(first).__name__}, not a tlbench.Backbone")
    if state_fingerprint(first) != state_fingerprint(second):
        raise CheckFailed("two builds with seed 3 have different weights: initialise from torch's seeded generator")


def _groups(c: BackboneContext) -> None:
    backbone = c.built()
    groups = getattr(backbone, "groups", None)
    if not isinstance(groups, nn.ModuleList) or len(groups) == 0:
        raise CheckFailed("`groups` must be a non-empty nn.ModuleList of layer groups, input to output")
    grouped = {id(p) for group in groups for p in group.parameters()}
    loose = [name for name, p in backbone.named_parameters() if id(p) not in grouped]
    if loose:
        raise CheckFailed(f"parameters outside every layer group (freezing by group would miss them): "
                          f"{', '.join(loose[:4])}{' …' if len(loose) > 4 else ''}")


def _features(c: BackboneContext) -> None:
    backbone = c.built()
    dim = getattr(backbone, "feature_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise CheckFailed(f"feature_dim must be a positive int, got {dim!r}")
    for mode in ("train", "eval"):
        backbone.train(mode == "train")
        with torch.no_grad():
            out = backbone.forward_features(c.batch())
        if tuple(out.shape) != (2, dim):
            raise CheckFailed(f"forward_features of a batch of 2 inputs {c.input_shape} in {mode} mode gave shape "
                              f"{tuple(out.shape)}, not (2, feature_dim={dim})")
        if not torch.isfinite(out).all():
            raise CheckFailed(f"forward_features gave NaN or infinite values in {mode} mode")


def _head(c: BackboneContext) -> None:
    backbone = c.built()
    features = _features_of(c, backbone)
    head = backbone.new_head(5)
    with torch.no_grad():
        logits = head(features)
    if tuple(logits.shape) != (2, 5):
        raise CheckFailed(f"new_head(5) on the features gave shape {tuple(logits.shape)}, not (2, 5)")


def _gradients(c: BackboneContext) -> None:
    backbone = c.built()
    _features_of(c, backbone)
    head = backbone.new_head(3)
    backbone.train()
    loss = head(backbone.forward_features(c.batch(4))).logsumexp(1).mean()
    loss.backward()
    dead = [i for i, group in enumerate(backbone.groups) if any(True for _ in group.parameters())
            and all(p.grad is None or not torch.any(p.grad != 0) for p in group.parameters() if p.requires_grad)]
    if dead:
        raise CheckFailed(f"no gradient reaches layer group(s) {dead}: a group the features do not depend on "
                          f"cannot be fine-tuned")


def _features_of(c: BackboneContext, backbone: Backbone) -> torch.Tensor:
    """The features of the example batch in eval mode, or why a property that needs them cannot be checked."""
    try:
        with torch.no_grad():
            out = backbone.eval().forward_features(c.batch())
    except Exception as err:  # noqa: BLE001 - said as why the property could not be checked
        raise Unchecked(f"not checked: forward_features fails ({one_line(err)})") from None
    if tuple(out.shape) != (2, backbone.feature_dim):
        raise Unchecked(f"not checked: forward_features gives {tuple(out.shape)}, not (2, feature_dim)")
    return out


BACKBONE_PROPERTIES: dict[str, Callable[[BackboneContext], None]] = properties({
    "has a name and a one-line description": _name_and_description,
    "builds from its arguments, the same for a seed": _builds,
    "its layer groups hold every parameter": _groups,
    "forward_features gives (N, feature_dim)": _features,
    "new_head maps the features to logits": _head,
    "gradients reach every layer group": _gradients,
})


def backbone_context(cls: type[Backbone], *, args: dict[str, Any] | None = None,
                     input_shape: tuple[int, ...] | None = None) -> BackboneContext:
    shape = tuple(input_shape or getattr(cls, "example_input", None) or DEFAULT_INPUT)
    return BackboneContext(cls, dict(args or {}), shape)


def check_backbone(cls: type[Backbone], *, args: dict[str, Any] | None = None,
                   input_shape: tuple[int, ...] | None = None) -> CheckReport:
    """Checks every property of the backbone contract (module docstring) for ``cls`` built from
    ``args`` (default: its ``Args`` defaults) on inputs of ``input_shape`` (default: the class's
    ``example_input``, else a 3 × 32 × 32 image)."""
    report = CheckReport(str(getattr(cls, "name", None) or cls.__name__), kind="backbone")
    context = backbone_context(cls, args=args, input_shape=input_shape)
    run_properties(report, BACKBONE_PROPERTIES, context)
    return report
