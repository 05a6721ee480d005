"""Model soups: streaming weight-space merges, greedy soups, MonoSoup and the LT-Soups pipeline.

Modules: merge (coefficients, streamed linear merges), greedy, monosoup (the SVD edit and the
`run_monosoup` pipeline), recipe (YAML recipes), soup_run (a soup run folder), lt_soups (the
LT-Soups pipeline on the fine-tuning engine). The "soup" / "monosoup" run kinds are rows of
`longtail.methods.run_kinds.RUN_KINDS`.
"""
