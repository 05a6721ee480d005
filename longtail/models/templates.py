"""Prompt templates for text-initialised classifiers (docs/methods.md §1.1 and §5.7)."""

from __future__ import annotations

from collections.abc import Sequence

from longtail.registry import Registry

TEMPLATES: Registry[tuple[str, ...]] = Registry("template set")

LIFT = ("a photo of a {}.",)
"""LIFT's single default template."""

# Sage "Init": the first 60 entries of CLIP's 80 ImageNet prompts. We use Sage's spelling
# ("an origami", "an embroidered") where the CLIP originals write "a".
SAGE60 = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.", "an origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "an embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.",
)  # fmt: skip

TEMPLATES.register("lift", LIFT)
TEMPLATES.register("sage60", SAGE60)


def get_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template-set name ("lift", "sage60") or an explicit list of "{}" templates."""
    if isinstance(templates, str):
        return TEMPLATES.get(templates)
    return tuple(templates)


def fill_templates(class_name: str, templates: Sequence[str]) -> list[str]:
    """Prompts for one class; underscores in the class name become spaces (docs/methods.md §1.1)."""
    name = class_name.replace("_", " ")
    return [t.format(name) for t in templates]
