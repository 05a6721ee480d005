"""The README.md of an exported run: what the folder holds and a short snippet that loads it
and predicts one image with the field's libraries only (tests execute the snippet).

Each snippet is assembled from three parts: the model (per format and feature), the
preprocessing (CLIPImageProcessor for CLIP; PIL + torch for EfficientNet, which has no HF
processor) and the head (cosine: z = s cos(W, f) (+ b); linear: z = W f (+ b)).
"""

from __future__ import annotations

from typing import Any

IMPORTS = ("import json\nimport torch\nimport torch.nn.functional as F\nfrom PIL import Image\n"
           "from safetensors.torch import load_file\n")
CLIP_PIXELS = ('processor = CLIPImageProcessor.from_pretrained(DIR)\n'
               'pixels = processor(images=Image.open(IMAGE).convert("RGB"), return_tensors="pt").pixel_values\n')
PLAIN_PIXELS = """\
p = config["preprocessing"]  # the run's test transform, in PIL + torch
image, r, c = Image.open(IMAGE).convert("RGB"), p["resize_shorter_side"], p["center_crop"]
w, h = image.size
image = image.resize((r, int(r * h / w)) if w <= h else (int(r * w / h), r), Image.Resampling[p["interpolation"].upper()])
left, top = (image.width - c) // 2, (image.height - c) // 2
x = torch.from_numpy(np.array(image.crop((left, top, left + c, top + c)))).permute(2, 0, 1).float() / 255
pixels = ((x - torch.tensor(p["mean"]).view(3, 1, 1)) / torch.tensor(p["std"]).view(3, 1, 1))[None]
"""


def _model_lines(manifest: dict[str, Any]) -> tuple[str, str, str]:
    """(imports, model construction, `features = ...` line) of the manifest's format."""
    fmt, feature = manifest["format"], manifest.get("feature")
    projected = feature == "image_embeds"
    vision = "model.vision_model(pixel_values=pixels).pooler_output"
    if fmt == "peft":
        base = manifest["base_model"]
        base_expr = f'f"{{DIR}}/{base}"' if base == "base" else repr(base)
        return ("from peft import PeftModel\nfrom transformers import CLIPImageProcessor, CLIPModel\n",
                f"model = PeftModel.from_pretrained(CLIPModel.from_pretrained({base_expr}), DIR).eval()\n",
                f"features = model.visual_projection({vision})\n" if projected else f"features = {vision}\n")
    if fmt == "merged" and manifest.get("library") == "transformers":
        if projected:
            return ("from transformers import CLIPImageProcessor, CLIPModel\n",
                    "model = CLIPModel.from_pretrained(DIR).eval()\n",
                    f"features = model.visual_projection({vision})\n")
        return ("from transformers import CLIPImageProcessor, CLIPVisionModel\n",
                "model = CLIPVisionModel.from_pretrained(DIR).eval()\n",
                "features = model(pixel_values=pixels).pooler_output\n")
    if fmt == "merged":  # EfficientNet-Lite: the standalone network source written next to the weights
        return ("import sys\nimport numpy as np\n",
                'sys.path.insert(0, DIR)\nfrom efficientnet_lite import EfficientNetLite\n'
                'config = json.load(open(f"{DIR}/config.json"))\n'
                'model = EfficientNetLite(config["width"], config["depth"], dropout=config["dropout"]).eval()\n'
                'model.load_state_dict(load_file(f"{DIR}/model.safetensors"))\n',
                "features = model.forward_features(pixels)\n")
    return ("from longtail.methods.finetune import load_finetuned\n"
            "from longtail.methods.finetune.augment import test_transform\n",
            'model, info = load_finetuned(DIR, device="cpu")\n',
            "")  # longtail's model predicts from pixels


def _head_line(head: dict[str, Any]) -> str:
    if head["type"] == "cosine":
        z = 'head["scale"] * F.normalize(features, dim=-1) @ F.normalize(head["weight"], dim=-1).T'
    else:
        z = 'features @ head["weight"].T'
    bias = ' + head["bias"]' if head.get("bias") else ""
    return f"logits = {z}{bias}\n"


def snippet(manifest: dict[str, Any], folder: str = "path/to/export") -> str:
    """Python code that loads the export at `folder` and sets `logits` for one image."""
    imports, build, features = _model_lines(manifest)
    if manifest["format"] == "longtail":
        pixels = "pixels = test_transform(model.input_spec)(Image.open(IMAGE))\n"
        head = 'logits = model(pixels)["z_hat"]  # longtail\'s own prediction (FIT included)\n'
    else:
        pixels = CLIP_PIXELS if "CLIPImageProcessor" in imports else PLAIN_PIXELS
        head = _head_line(manifest["head"])
    body = "".join(f"    {line}" for line in (features + head).splitlines(keepends=True))
    return (f"{IMPORTS}{imports}\nDIR, IMAGE = {folder!r}, \"image.jpg\"\n{build}"
            'head = load_file(f"{DIR}/head.safetensors")\n'
            'classes = json.load(open(f"{DIR}/class_names.json"))\n'
            f"{pixels}with torch.no_grad():\n{body}"
            "print(classes[int(logits.argmax(-1))])\n")


PIL_NOTE = ("Image processor: PIL resampling as in longtail (transformers >= 5 with torchvision "
            "installed resizes with torchvision unless given `backend=\"pil\"`)")
NOTES = {  # by the library that loads the export
    "transformers": "- CLIP: the folder holds the whole `CLIPModel` (text tower unchanged, for "
                    "zero-shot prompts); `CLIPVisionModel.from_pretrained` lists the text weights as "
                    f"unused. {PIL_NOTE}\n",
    "peft": "- LoRA on the vision tower only (`target_modules` is a regex); load it onto a `CLIPModel`. "
            "`base_model_name_or_path` \"base\" means the `base/` folder next to this README. "
            f"{PIL_NOTE}\n",
}
WHAT = {
    "merged": "the fine-tuned backbone with its adapter folded into the weights",
    "peft": "a peft LoRA adapter for the vision tower of the base CLIP model",
    "longtail": "the run's weights in longtail's fit layout (needs longtail to load)",
}


def readme(manifest: dict[str, Any]) -> str:
    """README.md text for an export described by `manifest` (export.json)."""
    src, pre, head = manifest["source"], manifest["preprocessing"], manifest["head"]
    base = f" Base model: `{manifest['base_model']}`." if manifest.get("base_model") else ""
    head_formula = ("z = scale * cos(W, f)" if head["type"] == "cosine" else "z = W f") + (" + b" if head.get("bias") else "")
    return (
        f"# {src['method']} on {src['dataset']} ({src['backbone']}, adapter {src['adapter']})\n\n"
        f"Exported by `longtail export` (longtail {manifest['longtail_version']}) from `{src['run']}`: "
        f"{WHAT[manifest['format']]}.{base}\n\n"
        f"- features: `{manifest.get('feature')}`; head: `head.safetensors`, {head_formula}; "
        "class names: `class_names.json` (row order of W)\n"
        f"- preprocessing: shorter side to {pre['resize_shorter_side']} ({pre['interpolation']}), centre crop "
        f"{pre['center_crop']}, x / 255, mean {pre['mean']}, std {pre['std']}\n"
        "- `export.json`: all of the above as JSON\n"
        f"{NOTES.get(manifest['library'], '')}\n"
        f"```python\n{snippet(manifest)}```\n"
    )
