"""OpenCLIP ViT checkpoints (state dicts in open_clip's key layout) -> a `transformers` CLIPModel folder.

open_clip cannot be a dependency here (it needs torchvision), but its plain ViT-CLIP towers are
transformers' CLIP with other names: `convert_openclip` renames the keys, splits each block's
`attn.in_proj_weight` / `in_proj_bias` (rows [q; k; v], as torch.nn.MultiheadAttention packs
them) into q_proj / k_proj / v_proj, transposes `visual.proj` / `text_projection` (open_clip
computes x @ proj, HF x @ W.T), and writes `save_pretrained` + an image-processor config (+ a
tokenizer when given), so `load_backbone(FOLDER)` loads it as a local CLIP (BioCLIP etc.).

Dimensions come from the tensor shapes; what shapes do not say comes from open_clip's model
config JSON (`model_cfg` of an `open_clip_config.json`, or a model_configs/*.json): attention
heads (`vision_cfg.head_width`, `text_cfg.heads`; default 64-wide heads), the activation
(`quick_gelu`) and the mean / std (`preprocess_cfg`). Refused in one line: towers HF CLIP has no
place for (timm trunks, ModifiedResNet, attentional pooling, layer scale, CoCa, projection biases).
Reads .safetensors, or .bin / .pt / .pth with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from longtail.errors import ConfigError, DataError
from longtail.models.preprocess import CLIP_MEAN, CLIP_STD, EvalTransform

ACTIVATIONS = ("gelu", "quick_gelu")
REFUSED = {  # key pattern -> what it is
    r"^visual\.trunk\.": "a timm image tower",
    r"^visual\.layer\d": "a ModifiedResNet image tower",
    r"^visual\.attn_pool": "attentional pooling",
    r"\.ls_[12]\.gamma$": "layer scale",
    r"^text\.cls_emb$|^text_decoder\.": "a CoCa captioning model",
    r"^text\.transformer\.(embeddings|encoder)\.|^text\.proj": "a Hugging Face text tower",
    r"text_projection\.bias$": "a text projection with a bias",
    r"^visual\.head\.|^visual\.image_projection": "a non-standard image head",
}
IGNORED = ("logit_bias", "attn_mask", "text.attn_mask")  # SigLIP-loss bias, causal-mask buffers


@dataclass(frozen=True)
class TowerDims:
    """One transformer tower's sizes."""

    width: int
    layers: int
    heads: int
    mlp: int


@dataclass(frozen=True)
class OpenCLIPDims:
    """What a `CLIPConfig` needs, read from the checkpoint (and the model config for heads / activation)."""

    vision: TowerDims
    text: TowerDims
    patch_size: int
    image_size: int
    embed_dim: int
    vocab_size: int
    context_length: int
    activation: str


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, unwrapped from {"state_dict": ...} and a DDP "module." prefix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, or pickled objects weights_only refuses
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read checkpoint '{path}' as tensors: {first}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise DataError(f"{path}: not a state dict")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def read_model_config(path: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, preprocess_cfg) of an open_clip_config.json or a bare model config JSON."""
    if path is None:
        return {}, {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read open_clip model config '{path}': {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an open_clip model config is a JSON object")
    return data.get("model_cfg", data), data.get("preprocess_cfg", {})


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise DataError(f"checkpoint blocks under '{prefix}' are not numbered 0..n-1")
    return len(found)


def _need(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise DataError(f"not an OpenCLIP ViT checkpoint: no '{key}'")
    return state[key]


def text_prefix(state: dict[str, torch.Tensor]) -> str:
    """'' for open_clip's CLIP (text tower at the top level), 'text.' for CustomTextCLIP."""
    return "text." if "text.token_embedding.weight" in state else ""


ACTIVATION_MISSING = ("the activation is not in the checkpoint: give open_clip's model config JSON or the "
                      "activation, gelu or quick_gelu (quick_gelu for OpenAI-trained weights)")


def openclip_dims(state: dict[str, torch.Tensor], model_cfg: dict[str, Any] | None = None,
                  activation: str | None = None) -> OpenCLIPDims:
    """Sizes from the tensor shapes; heads and activation from `model_cfg` / `activation`."""
    model_cfg = model_cfg or {}
    for pattern, what in REFUSED.items():
        bad = next((k for k in state if re.search(pattern, k)), None)
        if bad is not None:
            raise ConfigError(f"checkpoint has {what} ('{bad}'), which transformers' CLIPModel cannot hold")
    if activation is None and "quick_gelu" not in model_cfg:
        raise ConfigError(ACTIVATION_MISSING)
    activation = activation or ("quick_gelu" if model_cfg.get("quick_gelu") else "gelu")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation '{activation}'; choose from: {', '.join(ACTIVATIONS)}")
    vision_cfg, text_cfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    conv = _need(state, "visual.conv1.weight")
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = int(round((_need(state, "visual.positional_embedding").shape[0] - 1) ** 0.5))
    t = text_prefix(state)
    tokens = _need(state, f"{t}token_embedding.weight")
    t_width = int(tokens.shape[1])
    block = "visual.transformer.resblocks.0."
    vision = TowerDims(width, _count(state, "visual.transformer.resblocks."),
                       width // int(vision_cfg.get("head_width", 64)), int(_need(state, block + "mlp.c_fc.weight").shape[0]))
    text = TowerDims(t_width, _count(state, f"{t}transformer.resblocks."), int(text_cfg.get("heads", t_width // 64)),
                     int(_need(state, f"{t}transformer.resblocks.0.mlp.c_fc.weight").shape[0]))
    for name, dims in (("image", vision), ("text", text)):
        if dims.heads < 1 or dims.width % dims.heads:
            raise ConfigError(f"{name} width {dims.width} is not divisible into {dims.heads} heads; give the model config")
    return OpenCLIPDims(vision, text, patch, grid * patch, int(_need(state, "visual.proj").shape[1]),
                        int(tokens.shape[0]), int(_need(state, f"{t}positional_embedding").shape[0]), activation)


def _blocks(state: dict[str, torch.Tensor], src: str, dst: str, layers: int, out: dict[str, torch.Tensor]) -> set[str]:
    """Rename one tower's residual blocks into `out`; returns the source keys used."""
    used = set()
    for i in range(layers):
        s, d = f"{src}{i}.", f"{dst}{i}."
        w, b = state[s + "attn.in_proj_weight"], state.get(s + "attn.in_proj_bias")
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):  # rows [q; k; v]
            rows = slice(j * w.shape[1], (j + 1) * w.shape[1])
            out[f"{d}self_attn.{name}.weight"] = w[rows]
            out[f"{d}self_attn.{name}.bias"] = b[rows] if b is not None else torch.zeros(w.shape[1], dtype=w.dtype)
        used |= {s + "attn.in_proj_weight", s + "attn.in_proj_bias"}
        for a, c in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{d}{c}.{p}"] = _need(state, f"{s}{a}.{p}")
                used.add(f"{s}{a}.{p}")
    return used


def to_hf_state(state: dict[str, torch.Tensor], dims: OpenCLIPDims) -> dict[str, torch.Tensor]:
    """open_clip keys -> CLIPModel keys (every source key used, or a one-line error naming one)."""
    t = text_prefix(state)
    out: dict[str, torch.Tensor] = {}
    renames = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        f"{t}token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        f"{t}positional_embedding": "text_model.embeddings.position_embedding.weight",
        "logit_scale": "logit_scale",
    }
    for a, c in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 (f"{t}ln_final", "text_model.final_layer_norm")):
        renames.update({f"{a}.weight": f"{c}.weight", f"{a}.bias": f"{c}.bias"})
    for src, dst in renames.items():
        out[dst] = _need(state, src)
    out["visual_projection.weight"] = state["visual.proj"].t()
    projection = state.get(f"{t}text_projection", state.get(f"{t}text_projection.weight"))
    if projection is None:
        raise DataError("not an OpenCLIP CLIP checkpoint: no text_projection")
    out["text_projection.weight"] = projection.t() if f"{t}text_projection" in state else projection
    used = set(renames) | {"visual.proj", f"{t}text_projection", f"{t}text_projection.weight"}
    used |= _blocks(state, "visual.transformer.resblocks.", "vision_model.encoder.layers.", dims.vision.layers, out)
    used |= _blocks(state, f"{t}transformer.resblocks.", "text_model.encoder.layers.", dims.text.layers, out)
    left = sorted(k for k in state if k not in used and k not in IGNORED)
    if left:
        raise ConfigError(f"checkpoint key '{left[0]}' (and {len(left) - 1} more) has no place in CLIPModel")
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def clip_config(dims: OpenCLIPDims, tokenizer: Any | None = None) -> Any:
    """The `CLIPConfig` of these dimensions; token ids from the tokenizer, else open_clip's
    layout (end-of-text = the highest id, which open_clip's argmax pooling finds)."""
    from transformers import CLIPConfig

    eos = int(tokenizer.eos_token_id) if tokenizer is not None else dims.vocab_size - 1
    bos = int(tokenizer.bos_token_id) if tokenizer is not None and tokenizer.bos_token_id is not None else eos - 1
    pad = int(tokenizer.pad_token_id) if tokenizer is not None and tokenizer.pad_token_id is not None else 0

    def tower(d: TowerDims) -> dict[str, Any]:
        return dict(hidden_size=d.width, num_hidden_layers=d.layers, num_attention_heads=d.heads,
                    intermediate_size=d.mlp, hidden_act=dims.activation, projection_dim=dims.embed_dim)

    text = dict(tower(dims.text), vocab_size=dims.vocab_size, max_position_embeddings=dims.context_length,
                eos_token_id=eos, bos_token_id=bos, pad_token_id=pad)
    vision = dict(tower(dims.vision), image_size=dims.image_size, patch_size=dims.patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=dims.embed_dim)


def convert_openclip(checkpoint: str | Path, out: str | Path, config: str | Path | None = None,
                     tokenizer: str | None = None, activation: str | None = None) -> dict[str, Any]:
    """Write `out` (a new folder: CLIPModel weights + config, image processor, tokenizer when
    given); returns a summary (dims, activation, whether text prototypes will work)."""
    from transformers import AutoTokenizer, CLIPModel

    from longtail.io import check_writable, staged_folder
    from longtail.models.hf_vision import write_image_processor

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} exists, not overwritten")
    check_writable(out)
    model_cfg, pre_cfg = read_model_config(config)
    state = read_state_dict(checkpoint)
    dims = openclip_dims(state, model_cfg, activation)
    tok = None
    if tokenizer is not None:
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load tokenizer '{tokenizer}': {str(err).splitlines()[0]}") from err
    model = CLIPModel(clip_config(dims, tok))
    model.load_state_dict(to_hf_state(state, dims), strict=True)
    size = dims.image_size
    transform = EvalTransform(size=size, crop_size=(size, size), mean=tuple(pre_cfg.get("mean", CLIP_MEAN)),
                              std=tuple(pre_cfg.get("std", CLIP_STD)))
    with staged_folder(out) as staging:
        model.save_pretrained(staging)
        if tok is not None:
            tok.save_pretrained(staging)
        write_image_processor(transform, staging)
    return {"out": str(out), **asdict(dims), "tokenizer": tokenizer, "text_prototypes": tok is not None}
