"""Where ViT-only adapters attach in a Hugging Face vision tower: the tower's blocks and, per
model family, the names inside one block (`BlockLayout`): CLIP and SigLIP / SigLIP 2 share
CLIP's names, DINOv2 and ViT (transformers >= 5) have their own. A block of no known layout
(e.g. ViT under transformers 4.x, whose MLP output adds the residual itself) is refused in one
line, and the generic tuning modes still work on it through the backbone interface.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from longtail.errors import ConfigError


@dataclass(frozen=True)
class BlockLayout:
    """Where one family's pre-norm transformer block keeps the parts adapters use (paths in the
    block): the LayerNorm before the MLP (its input is the stream after attention, f_tilde), the
    module whose output is the residual MLP branch (adapters add theirs to it), and the linear /
    norm layers that LoRA and SSF target, by the CLIP names they accept."""

    family: str
    norm2: str
    mlp_out: str
    targets: tuple[tuple[str, str], ...]  # target name -> path in the block

    def path(self, target: str) -> str:
        return dict(self.targets)[target]

    def missing(self, layer: nn.Module, targets: tuple[str, ...]) -> list[str]:
        """The targets this block does not have (e.g. fc1 in DINOv2's SwiGLU MLP)."""
        have = dict(layer.named_modules())
        return [t for t in targets if dict(self.targets).get(t) not in have]


def _targets(q: str, k: str, v: str, o: str, fc1: str, fc2: str, ln1: str, ln2: str) -> tuple[tuple[str, str], ...]:
    names = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "layer_norm1", "layer_norm2")
    return tuple(zip(names, (q, k, v, o, fc1, fc2, ln1, ln2)))


LAYOUTS: tuple[BlockLayout, ...] = (
    # CLIP and SigLIP / SigLIP 2: x + mlp(layer_norm2(x))
    BlockLayout("clip", "layer_norm2", "mlp", _targets(
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
        "mlp.fc1", "mlp.fc2", "layer_norm1", "layer_norm2")),
    # DINOv2: x + layer_scale2(mlp(norm2(x))): the adapter branch joins after the layer scale
    BlockLayout("dinov2", "norm2", "layer_scale2", _targets(
        "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
        "mlp.fc1", "mlp.fc2", "norm1", "norm2")),
    # ViT (transformers >= 5 names): x + mlp(layernorm_after(x))
    BlockLayout("vit", "layernorm_after", "mlp", _targets(
        "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
        "mlp.fc1", "mlp.fc2", "layernorm_before", "layernorm_after")),
)
"""Block layouts the ViT-only adapters know, tried in order (`block_layout`)."""


def block_layout(layer: nn.Module) -> BlockLayout:
    """The layout whose pre-MLP norm and MLP-branch module this block has (one-line error if none)."""
    have = dict(layer.named_modules())
    for layout in LAYOUTS:
        if layout.norm2 in have and layout.mlp_out in have:
            return layout
    raise ConfigError(f"ViT adapters do not know the block layout of {type(layer).__name__} "
                      f"(known: {', '.join(lay.family for lay in LAYOUTS)}); use a generic tuning mode "
                      "(none, bitfit, norm-tuning, partial, full)")


@dataclass(frozen=True)
class VisionParts:
    """The pieces of an HF ViT-like vision tower that adapters attach to."""

    tower: nn.Module  # has .embeddings and the blocks (encoder.layers, encoder.layer or layers)
    layers: nn.ModuleList
    hidden_size: int
    layer_norm_eps: float
    patch_size: int
    layout: BlockLayout = LAYOUTS[0]
    layers_parent: nn.Module | None = None  # the module holding `layers` (VPT's prompts go there)

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _tower_layers(tower: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """(parent, blocks) of a tower: encoder.layers (CLIP, SigLIP), encoder.layer (DINOv2, ViT 4.x)
    or layers (ViT in transformers >= 5)."""
    encoder = getattr(tower, "encoder", None)
    for parent, attr in ((encoder, "layers"), (encoder, "layer"), (tower, "layers")):
        blocks = getattr(parent, attr, None) if parent is not None else None
        if isinstance(blocks, nn.ModuleList):
            return parent, blocks
    return None


def locate_vision(model: nn.Module) -> VisionParts:
    """Find the vision tower in a CLIP / SigLIP model (or its vision model), a DINOv2 or a ViT model."""
    tower = model
    if _tower_layers(tower) is None and hasattr(tower, "vision_model"):
        tower = tower.vision_model  # CLIPModel / SiglipModel, or CLIPVisionModel in transformers 4.x
    found = _tower_layers(tower)
    if found is None or not hasattr(tower, "embeddings") or not len(found[1]):
        raise ConfigError(
            f"ViT adapters need a Hugging Face CLIP vision model or another ViT-like one (SigLIP, DINOv2, ViT), got {type(model).__name__}"
        )
    parent, layers = found
    cfg = tower.config
    return VisionParts(tower, layers, cfg.hidden_size, cfg.layer_norm_eps, cfg.patch_size,
                       block_layout(layers[0]), parent)
