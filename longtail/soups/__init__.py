"""Model soups: streaming weight-space merges, greedy soups, MonoSoup and the LT-Soups pipeline."""

from longtail.soups.formats import _register_evaluators

_register_evaluators()
