"""Model soups: streaming weight-space merges, greedy soups, MonoSoup and the LT-Soups pipeline.

Modules: merge (coefficients, streamed linear merges), greedy, monosoup (the SVD edit),
recipe (YAML recipes), soup_run (a soup run folder), lt_soups (the LT-Soups pipeline on the
fine-tuning engine), kinds (the "soup" / "monosoup" run kinds, registered on import).
"""

from longtail.soups import kinds  # noqa: F401  (registers the run kinds)
