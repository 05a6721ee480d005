"""The fine-tuned classifier: backbone (+ adapter) -> pooled feature -> cosine head, plus FIT.

Any backbone with the fine-tuning interface (models/backbone.py) works: a CLIP ViT (its
post-LN CLS feature) or a CNN (EfficientNet-Lite: its pooled head feature). With a frozen
prefix (partial / none) `forward(hidden, from_depth=d)` starts from cached block-d states.

One class for every fine-tuning run (LIFT, LIFT+, Sage, linear probe, full fine-tuning, LT-Soups
ingredients and stage 2) and one state-dict layout: `weights()` holds the trainable tensors
(`backbone.model.vision_model.*` for adapters / full fine-tuning, `head.weight`, `s1`, `s2`),
`w_zs`, and any backbone tensor loaded from another run (`init_from`).

With FIT (Sage, docs/methods.md §5.4) the model also runs the frozen zero-shot encoder on the same
(augmented) pixels, in eval mode under no_grad, and returns the cross logits
z_v = s cos(W, f_zs), z_t = s cos(W_zs, f) and z_hat = z + s1 z_v + s2 z_t.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import ConfigError, DataError
from longtail.methods.heads import CosineHead
from longtail.registry import Registry


@dataclass
class InitContext:
    """What a head initialiser may use: the backbone, class names, templates and a feature pass."""

    backbone: nn.Module
    class_names: Sequence[str]
    templates: str
    train_features: Callable[[], tuple[Tensor, Tensor]]  # frozen features + labels of the train set
    seed: int = 0
    prototype_options: dict = field(default_factory=dict)  # e.g. imagenet_map for prototypes


HEAD_INITS: Registry[Callable[[InitContext], Tensor | None]] = Registry("head init")


@HEAD_INITS.register("text")
def text_init(ctx: InitContext) -> Tensor:
    """LIFT/Sage semantic init (docs/methods.md §1.1); backbones without a text tower refuse clearly."""
    from longtail.models.templates import get_templates

    if not getattr(ctx.backbone, "has_text", False):
        raise ConfigError(
            f"backbone '{getattr(ctx.backbone, 'name', '?')}' has no text tower; "
            "use head_init=prototypes, class_mean or random"
        )
    return ctx.backbone.text_embeddings(list(ctx.class_names), get_templates(ctx.templates))


@HEAD_INITS.register("class_mean")
def class_mean_init(ctx: InitContext) -> Tensor:
    """Rows = normalised mean of the normalised frozen features of each class (LIFT+ option)."""
    feats, labels = ctx.train_features()
    num_classes = len(ctx.class_names)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels.long(), F.normalize(feats.double(), dim=1))
    empty = torch.nonzero(torch.bincount(labels.long(), minlength=num_classes) == 0).flatten()
    if len(empty):
        raise DataError(f"class_mean init: class '{ctx.class_names[int(empty[0])]}' has no training images")
    return F.normalize(sums, dim=1).float()


@HEAD_INITS.register("prototypes")
def prototypes_init(ctx: InitContext) -> Tensor:
    """The backbone's class prototypes: CLIP text embeddings, EfficientNet ImageNet classifier
    rows (WordNet-id class names match directly, a bundled map such as CIFAR-10's, or
    `prototype_options.imagenet_map=FILE`); the cosine head keeps the rows, not the bias."""
    backbone = ctx.backbone
    sources = tuple(getattr(backbone, "prototype_sources", ()))
    if not sources:
        raise ConfigError(f"backbone '{getattr(backbone, 'name', '?')}' has no class prototypes; "
                          "use head_init=class_mean or head_init=random")
    options = {"templates": ctx.templates, **ctx.prototype_options}
    from longtail.models.imagenet import MissingImageNetMap

    try:
        weight, _ = backbone.prototypes(list(ctx.class_names), source=sources[0], **options)
    except MissingImageNetMap as err:  # the hint in this command's spelling (issue 22 item 5)
        raise ConfigError(f"{err}: set prototype_options.imagenet_map=FILE") from None
    weight = weight.detach().float().cpu()
    return weight if sources[0] == "text" else F.normalize(weight, dim=1)  # text rows are unit already


@HEAD_INITS.register("auto")
def auto_init(ctx: InitContext) -> Tensor:
    """prototypes when the backbone can make them for these class names, else class_mean."""
    try:
        return prototypes_init(ctx)
    except ConfigError as err:
        import sys

        print(f"head_init=auto: class means ({err})", file=sys.stderr)
        return class_mean_init(ctx)


@HEAD_INITS.register("random")
def random_init(ctx: InitContext) -> None:
    """None: the head draws seeded random rows."""
    return None


def check_tunable(backbone: nn.Module) -> None:
    """ConfigError unless the backbone has the fine-tuning interface (blocks, forward_from)."""
    if not hasattr(backbone, "tuning_root"):
        raise ConfigError(f"backbone '{getattr(backbone, 'name', '?')}' has no fine-tuning interface "
                          "(longtail.models.backbone.Backbone: blocks, forward_prefix, forward_from)")
    backbone.tuning_root()  # raises for a Backbone that does not expose its blocks


class FineTuneModel(nn.Module):
    """Adapted backbone + cosine head (+ FIT). forward(pixels) -> dict of logits.

    Keys: 'z' (fine-tuned), and with FIT 'z_v', 'z_t'; 'z_hat' is always what is predicted.
    """

    def __init__(self, backbone: nn.Module, head: CosineHead, handle=None, interchange: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.handle = handle
        self.interchange = interchange
        self.register_buffer("w_zs", head.weight.detach().clone())  # W_zs: the initial classifier
        self.zero_shot: nn.Module | None = None
        if interchange:
            self.s1 = nn.Parameter(torch.zeros(()))
            self.s2 = nn.Parameter(torch.zeros(()))

    # --- forward ---------------------------------------------------------------------------
    def features(self, pixels: Tensor) -> Tensor:
        if self.handle is not None:
            self.handle.set_text_vector(self.head.weight.mean(dim=0))  # SG-Adapter's w_bar; no-op otherwise
        return self.backbone.forward_features(pixels)

    def features_from(self, hidden: Tensor, depth: int) -> Tensor:
        """The feature from cached block-`depth` states (frozen-prefix cache)."""
        return self.backbone.forward_from(hidden.to(self.head.weight.dtype), depth)

    @torch.no_grad()
    def zero_shot_features(self, pixels: Tensor) -> Tensor:
        """f_zs: the frozen encoder, eval mode, no grad, on the same pixels."""
        if self.zero_shot is not None:
            return self.zero_shot.forward_features(pixels)
        ctx = self.handle.disabled() if self.handle is not None else nullcontext()
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with ctx:
                return self.backbone.forward_features(pixels)
        finally:
            self.backbone.train(was_training)

    def forward(self, pixels: Tensor, from_depth: int | None = None) -> dict[str, Tensor]:
        """Logits of pixels, or (from_depth=d) of block-d hidden states of a frozen prefix."""
        f = self.features(pixels) if from_depth is None else self.features_from(pixels, from_depth)
        z = self.head(f)
        if not self.interchange:
            return {"z": z, "z_hat": z}
        f_zs = self.zero_shot_features(pixels).to(f.dtype)
        scale = self.head.scale
        w = F.normalize(self.head.weight, dim=-1)
        z_v = scale * F.linear(F.normalize(f_zs, dim=-1), w)
        z_t = scale * F.linear(F.normalize(f, dim=-1), F.normalize(self.w_zs, dim=-1))
        return {"z": z, "z_v": z_v, "z_t": z_t, "z_hat": z + self.s1 * z_v + self.s2 * z_t}

    def train(self, mode: bool = True) -> FineTuneModel:
        super().train(mode)
        if self.zero_shot is not None:
            self.zero_shot.eval()  # the zero-shot pass is always in eval mode
        return self

    # --- checkpoint contents ---------------------------------------------------------------
    def stat_buffers(self) -> dict[str, Tensor]:
        """BatchNorm statistics that training updates (tuned blocks with update_bn_stats=true)."""
        from longtail.models.backbone import UPDATE_STATS

        return {f"{m_name}.{b_name}" if m_name else b_name: buf
                for m_name, module in self.named_modules() if getattr(module, UPDATE_STATS, False)
                for b_name, buf in module.named_buffers(recurse=False)}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Adapter + head (+ s1, s2) + W_zs (+ updated BN statistics): all that differs from
        the pretrained backbone."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        state.update({n: b.detach() for n, b in self.stat_buffers().items()})
        state["w_zs"] = self.w_zs.detach()
        return state

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Strict: the key set and shapes must equal `trainable_state_dict()`."""
        own = {**dict(self.named_parameters()), **self.stat_buffers()}
        expected = {n for n, p in self.named_parameters() if p.requires_grad} | set(self.stat_buffers()) | {"w_zs"}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise DataError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                target = self.w_zs if name == "w_zs" else own[name]
                if tuple(target.shape) != tuple(value.shape):
                    raise DataError(f"checkpoint '{name}' has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
                target.copy_(value)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load saved `weights()`: every trainable tensor must be there; other tensors (e.g. a
        soup's backbone under a head-only run) must name a tensor of this model and are kept in
        `weights()` from now on."""
        trainable = set(self.trainable_state_dict())
        own = self.state_dict()
        missing = sorted(trainable - set(state))
        unexpected = sorted(set(state) - set(own) - {"w_zs"})
        if missing or unexpected:
            raise DataError(f"weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.load_trainable_state_dict({k: state[k] for k in trainable})
        extra = sorted(set(state) - trainable)
        with torch.no_grad():
            for name in extra:
                if tuple(own[name].shape) != tuple(state[name].shape):
                    raise DataError(f"weights '{name}' have shape {tuple(state[name].shape)}, expected {tuple(own[name].shape)}")
                own[name].copy_(state[name])
        self.extra_keys = tuple(sorted(set(getattr(self, "extra_keys", ())) | set(extra)))

    def weights(self) -> dict[str, Tensor]:
        """What a run saves: `trainable_state_dict()` plus the backbone tensors loaded from elsewhere."""
        state = self.trainable_state_dict()
        own = self.state_dict()
        state.update({k: own[k].detach() for k in getattr(self, "extra_keys", ()) if k not in state})
        return state

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class FitLoss(nn.Module):
    """Loss = l(z) + lambda1 l(z_v) + lambda2 l(z_t) + lambda3 l(z_hat) (plain l(z) without FIT)."""

    def __init__(self, base: nn.Module, lambdas: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.base = base
        self.lambdas = tuple(float(v) for v in lambdas)

    def forward(self, out: dict[str, Tensor], targets: Tensor) -> Tensor:
        loss = self.base(out["z"].float(), targets)
        if "z_v" not in out:
            return loss
        for lam, key in zip(self.lambdas, ("z_v", "z_t", "z_hat")):
            if lam:
                loss = loss + lam * self.base(out[key].float(), targets)
        return loss


def build_model(cfg, backbone: nn.Module, class_names: Sequence[str],
                train_features: Callable[[], tuple[Tensor, Tensor]] | None = None,
                init: bool = True) -> FineTuneModel:
    """Inject the adapter, build the head (initialised per cfg.head_init unless init=False)."""
    from longtail.models.adapters import check_adapter_fits, inject_adapter, make_adapter_config

    num_classes = len(class_names)
    check_tunable(backbone)
    check_adapter_fits(backbone, cfg.adapter)  # a ViT-only adapter on a CNN fails before head init
    backbone.requires_grad_(False)
    weight = None
    if init:
        ctx = InitContext(backbone, class_names, cfg.templates,
                          train_features or _no_features, cfg.seed, dict(cfg.prototype_options))
        weight = HEAD_INITS.get(cfg.head_init)(ctx)
        weight = None if weight is None else weight.detach().float().cpu()
    adapter_cfg = make_adapter_config(cfg.adapter, **cfg.adapter_options)
    zero_shot = None
    if cfg.feature_interchange and not adapter_cfg.can_disable:  # in-place methods: keep a frozen copy
        zero_shot = copy.deepcopy(backbone).eval()
    with torch.random.fork_rng(devices=[]):  # adapter init (Kaiming) reproducible from cfg.seed
        torch.manual_seed(cfg.seed)
        handle = inject_adapter(backbone, adapter_cfg, num_classes)
    generator = torch.Generator().manual_seed(cfg.seed)
    head = CosineHead(num_classes, int(backbone.feature_dim), weight=weight, generator=generator, scale=cfg.scale)
    model = FineTuneModel(backbone, head, handle, interchange=cfg.feature_interchange)
    model.zero_shot = zero_shot
    if cfg.feature_interchange and cfg.lambda3 == 0:  # s1, s2 are trained only through l(z_hat)
        model.s1.requires_grad_(False)
        model.s2.requires_grad_(False)
    return model


def _no_features() -> tuple[Tensor, Tensor]:
    raise ConfigError("head_init=class_mean needs the training images")
