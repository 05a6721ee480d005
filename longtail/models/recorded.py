"""The backbone recorded in a feature file's meta, rebuilt: what `longtail predict` and the ONNX
export of a probe run put in front of the probe's head.

`longtail features` records the backbone's name, model id, revision, feature kind, options,
preprocessing and a weights fingerprint; `recorded_backbone` loads that backbone again and
refuses, in one line, one whose weights or preprocessing differ from the recorded ones (the
probe would then score other features than it was trained on).
"""

from __future__ import annotations

import re
from typing import Any

from longtail.errors import ConfigError, DataError


def backbone_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The load_backbone options that rebuild the backbone a feature file's meta describes."""
    from longtail.models.clip import FEATURES

    name, model_id = meta["backbone"], str(meta.get("model_id") or "")
    pre, options = meta.get("preprocess") or {}, {}
    kinds = {kind: option for option, kind in FEATURES.items()}
    if meta.get("feature_kind") in kinds:  # CLIP: cls or projected
        options["feature"] = kinds[meta["feature_kind"]]
    recipe = re.fullmatch(r"tiny_clip\((.*)\)", model_id)
    if recipe:  # tiny_clip(seed=0,image=32,patch=8,hidden=32,proj=16,layers=2)
        names = {"seed": "seed", "image": "image_size", "patch": "patch_size", "hidden": "hidden_size",
                 "proj": "projection_dim", "layers": "num_layers"}
        options.update({names[k]: int(v) for k, v in (item.split("=") for item in recipe.group(1).split(","))})
    if name.startswith("efficientnet_"):
        crop = (pre.get("crop_size") or [None])[0]
        options["pretrained"] = not model_id.startswith("random-init:")
        seed = re.search(r":seed=(\d+)$", model_id)
        if seed:
            options["seed"] = int(seed.group(1))
        if crop and isinstance(pre.get("size"), int):
            options.update(image_size=int(crop), crop_padding=int(pre["size"]) - int(crop))
    return options


def recorded_backbone(meta: dict[str, Any], where: str):
    """The backbone `meta` (a feature file's) records, checked: same weights fingerprint (also
    the legacy float-sum fingerprints of files written before byte fingerprints) and the same
    preprocessing; one-line DataError otherwise. `where` names the file for messages."""
    from longtail.models.backbone import load_backbone

    if not meta.get("backbone") or not meta.get("weights") or not meta.get("preprocess"):
        raise DataError(f"{where} record no image backbone (only features written by `longtail features` do); "
                        "such a run scores feature files, not images")
    options = {**backbone_options(meta), **(meta.get("backbone_options") or {})}
    try:  # the recorded name is a preset, a hub id or a folder (what load_backbone takes)
        backbone = load_backbone(meta["backbone"], meta.get("revision"), **options)
    except (ConfigError, OSError) as err:
        raise DataError(f"{where}: cannot rebuild backbone '{meta['backbone']}': {str(err).splitlines()[0]}") from err
    if meta.get("weights_hash") is not None:
        same = backbone.weights_fingerprint() == meta["weights"]
    else:  # written before the byte fingerprints
        same = any(found[None] == meta["weights"] for found in backbone.legacy_fingerprints())
    if not same:
        raise DataError(f"{where}: backbone '{meta['backbone']}' loaded now has other weights than the one that "
                        f"made those features (fingerprint {str(meta['weights'])[:12]} -> "
                        f"{backbone.weights_fingerprint()[:12]})")
    if backbone.transform.to_dict() != meta["preprocess"]:
        raise DataError(f"{where}: backbone '{meta['backbone']}' now preprocesses images differently "
                        f"({backbone.transform.to_dict()} vs {meta['preprocess']})")
    return backbone
