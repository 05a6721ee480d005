"""`longtail convert openclip`: an OpenCLIP checkpoint -> a transformers CLIP folder any command loads."""

from __future__ import annotations

import argparse
import json

HELP = "convert an OpenCLIP ViT checkpoint (e.g. BioCLIP) into a transformers CLIP folder"
DESCRIPTION = """\
Convert a checkpoint in open_clip's state-dict layout (.safetensors, or .bin / .pt / .pth read
with torch.load(weights_only=True)) into a Hugging Face CLIPModel folder (save_pretrained weights
and config, an image-processor config, and the tokenizer when --tokenizer is given), which
every command then takes as a backbone: -b FOLDER. Sizes are read from the tensor shapes; the
attention heads, the activation (quick_gelu) and the mean / std come from open_clip's model
config JSON (--config: an open_clip_config.json of a hub repo, or open_clip's
model_configs/<model>.json); without one, give --activation (quick_gelu for OpenAI-trained
weights, gelu otherwise; heads are taken 64 wide). Only plain ViT towers convert: timm towers,
ModifiedResNet, attentional pooling, layer scale and CoCa are refused.

examples:
  longtail convert openclip open_clip_pytorch_model.bin --config open_clip_config.json \\
      --tokenizer openai/clip-vit-base-patch16 --out bioclip_hf
  longtail features --data my_images --backbone bioclip_hf --out feats.npz
  longtail convert openclip epoch_32.pt --activation gelu --out my_clip   # vision only: no text prototypes
"""
PAIRS_DEST = "none"  # no KEY=VALUE pairs: a pair is an unrecognised argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", choices=("openclip",), help="the checkpoint's layout (openclip)")
    p.add_argument("checkpoint", help="the state dict: .safetensors, .bin, .pt or .pth")
    p.add_argument("--out", required=True, help="the new folder to write (never overwritten)")
    p.add_argument("--config", help="open_clip's model config JSON (open_clip_config.json or model_configs/*.json)")
    p.add_argument("--tokenizer", help="a tokenizer folder or hub id to copy in (OpenCLIP ViTs use openai/clip-vit-base-patch16's)")
    p.add_argument("--activation", choices=("gelu", "quick_gelu"), help="the MLP activation when --config does not say")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from longtail.errors import ConfigError
    from longtail.models.openclip_convert import ACTIVATION_MISSING, convert_openclip

    try:
        summary = convert_openclip(args.checkpoint, args.out, config=args.config, tokenizer=args.tokenizer,
                                   activation=args.activation)
    except ConfigError as err:
        if str(err) != ACTIVATION_MISSING:
            raise
        raise ConfigError(f"{err} (--config FILE or --activation NAME)") from None
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    vision, text = summary["vision"], summary["text"]
    print(f"wrote {summary['out']}: CLIP ViT {vision['layers']} x {vision['width']} (patch {summary['patch_size']}, "
          f"{summary['image_size']} px), text {text['layers']} x {text['width']}, embedding {summary['embed_dim']}, "
          f"{summary['activation']}")
    if not summary["text_prototypes"]:
        print("no tokenizer copied (--tokenizer): image features only, no text prototypes")
    print(f"use it as a backbone: -b {summary['out']}")
    return 0
