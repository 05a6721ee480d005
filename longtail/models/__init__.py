"""The models layer: backbones, preprocessing, feature extraction (with its cache) and adapters.

Importing the package imports the backbone families below, each of which registers its presets
in `backbone.BACKBONES` / `backbone.PRESET_ARCH` and its Hugging Face model types in
`backbone.HF_MODEL_TYPES` (the pattern of timm's `models/__init__.py`). Every module of the
package runs this first, so `load_backbone` always sees every preset, and `backbone.py` itself
imports none of the families (they import it).
"""

from longtail.models import clip, efficientnet, hf_convnext, hf_vit  # noqa: F401  (registration)
