"""MonoSoup (arXiv 2602.09689, docs/methods.md §3): a data-free edit of one fine-tuned checkpoint.

Each layer's update Delta = W1 - W0 is split by a thin SVD into its top-k (high-energy)
part and the remainder, which are re-weighted by coefficients computed from the spectrum.
`monosoup(w0, w1, cfg)` edits state dicts; `run_monosoup(w1, w0, cfg, out)` is the whole
pipeline of `longtail monosoup` (load, check, edit, evaluate, write a run folder).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from longtail.device import resolve_device
from longtail.errors import ConfigError, DataError
from longtail.registry import Registry

StateDict = dict[str, torch.Tensor]
EPS = 1e-12

# name -> fn(sigma (r,) descending, cfg) -> k in [1, r]
RANK_RULES: Registry[Callable[[torch.Tensor, MonoSoupConfig], int]] = Registry("MonoSoup rank rule")


@dataclass
class MonoSoupConfig:
    """How to edit: rank rule, energy threshold, q/k/v handling, SVD precision and device."""

    mode: str = "erank"  # RANK_RULES name: "erank" (default, no hyperparameter) | "energy"
    energy: float = 0.8  # R for mode "energy"
    qkv: str = "stacked"  # "stacked" reproduces the fused reference; "separate" edits each
    precision: str = "float32"  # SVD dtype: float32 | float64 (never half precision)
    device: str = "auto"
    min_relative_update: float = 1e-6  # skip tensors with ||W1-W0|| / (||W0|| + eps) below

    def __post_init__(self) -> None:
        RANK_RULES.get(self.mode)
        if self.qkv not in ("stacked", "separate"):
            raise ConfigError(f"qkv must be 'stacked' or 'separate', got '{self.qkv}'")
        if self.precision not in ("float32", "float64"):
            raise ConfigError(f"SVD precision must be float32 or float64, got '{self.precision}'")
        if not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"energy threshold must be in (0, 1], got {self.energy}")


@RANK_RULES.register("erank")
def effective_rank_k(sigma: torch.Tensor, cfg: MonoSoupConfig) -> int:
    """k = ceil(exp(entropy of sigma / sum sigma)) (Roy & Vetterli), clamped to [1, r]."""
    p = sigma / sigma.sum()
    erank = math.exp(float(-(p * torch.log(p + EPS)).sum()))
    return int(min(max(math.ceil(erank), 1), sigma.numel()))


@RANK_RULES.register("energy")
def energy_k(sigma: torch.Tensor, cfg: MonoSoupConfig) -> int:
    """Smallest k whose top-k squared singular values hold a fraction >= R of the energy."""
    frac = torch.cumsum(sigma**2, 0) / (sigma**2).sum()
    k = int(torch.searchsorted(frac, torch.tensor(cfg.energy, dtype=frac.dtype)).item()) + 1
    return min(k, sigma.numel())


def edit_update(delta: torch.Tensor, cfg: MonoSoupConfig) -> tuple[torch.Tensor, dict]:
    """Edited update lambda_high Delta_high + lambda_low Delta_low of a 2-D Delta (float)."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    energy = (s**2).sum()
    if float(energy) < EPS:
        return delta, {"skipped": "zero update"}
    r = s.numel()
    k = RANK_RULES.get(cfg.mode)(s, cfg)
    p_k = float((s[:k] ** 2).sum() / energy)
    rho = float((s[k] / (s[0] + EPS)) ** 2) if k < r else 0.0
    cos_alpha = math.sqrt(min(max(1.0 - p_k, 0.0), 1.0))
    lam_low = min(max(rho + (1.0 - rho) * cos_alpha, 0.0), 1.0)
    lam_high = min(max(1.0 - lam_low, 0.0), 1.0)
    high = (u[:, :k] * s[:k]) @ vh[:k]
    edited = lam_high * high + lam_low * (delta - high)
    info = {"k": k, "rank": r, "energy_kept": p_k, "rho": rho, "lambda_low": lam_low, "lambda_high": lam_high}
    return edited, info


def edit_matrix(w0: torch.Tensor, w1: torch.Tensor, cfg: MonoSoupConfig) -> tuple[torch.Tensor, dict]:
    """MonoSoup of one tensor (>= 2-D): reshape to (out, -1), edit Delta, reshape, W1's dtype."""
    dtype = getattr(torch, cfg.precision)
    device = resolve_device(cfg.device)
    m0 = w0.to(device=device, dtype=dtype).reshape(w0.shape[0], -1)
    m1 = w1.to(device=device, dtype=dtype).reshape(w1.shape[0], -1)
    edited, info = edit_update(m1 - m0, cfg)
    out = (m0 + edited).reshape(w1.shape).to(device=w1.device, dtype=w1.dtype)
    return out, info


def skip_reason(w0: torch.Tensor | None, w1: torch.Tensor, cfg: MonoSoupConfig) -> str | None:
    """Why a tensor is kept at W1 (docs/methods.md §3.3), or None when it is edited."""
    if w0 is None:
        return "missing in W0"
    if w0.shape != w1.shape:
        return "shape differs"
    if not w1.is_floating_point():
        return "not floating point"
    if w1.ndim < 2:
        return "fewer than 2 dims"
    n0 = float(w0.double().norm())
    n1 = float((w1.double() - w0.double()).norm())
    if n0 < EPS and float(w1.double().norm()) < EPS:
        return "zero tensor"
    if n0 >= EPS and n1 / (n0 + EPS) < cfg.min_relative_update:
        return "relative update below threshold"
    return None


def check_bases(w0: Mapping[str, torch.Tensor], w1: Mapping[str, torch.Tensor], where: str = "") -> None:
    """One-line DataError (prefixed by `where`) unless W0 and W1 are one architecture.

    Legitimately absent (docs/methods.md §3.3, §3.5), kept at W1 by `monosoup`: tensors W1
    adds that W0 lacks (adapters have no pretrained counterpart), or tensors of W0 that W1
    does not hold (W1 saved only its trained parts). No shared tensor, tensors missing on
    BOTH sides, or a shared name with another shape mean different architectures.
    """
    shared = [k for k in w1 if k in w0]
    if not shared:
        raise DataError(f"{where}W0 and W1 share no tensor name (W1 has '{next(iter(w1), '-')}', "
                        f"W0 '{next(iter(w0), '-')}'); not the same model")
    only0 = sorted(set(w0) - set(w1))
    only1 = sorted(set(w1) - set(w0))
    if only0 and only1:
        raise DataError(f"{where}W0 and W1 are different architectures: W1 has '{only1[0]}' "
                        f"({len(only1)} such), W0 has '{only0[0]}' ({len(only0)} such)")
    for key in shared:
        if tuple(w0[key].shape) != tuple(w1[key].shape):
            raise DataError(f"{where}W0 and W1 are different architectures: tensor '{key}' has shape "
                            f"{tuple(w0[key].shape)} in W0, {tuple(w1[key].shape)} in W1")


_QKV = re.compile(r"^(?P<prefix>.*)\.q_proj\.weight$")


def edit_groups(keys: list[str], cfg: MonoSoupConfig) -> Iterator[tuple[str, ...]]:
    """Tensors edited together: q/k/v projection weights stacked row-wise when cfg.qkv='stacked'."""
    keyset = set(keys)
    grouped: set[str] = set()
    if cfg.qkv == "stacked":
        for key in keys:
            m = _QKV.match(key)
            if m:
                group = tuple(f"{m['prefix']}.{p}_proj.weight" for p in "qkv")
                if all(g in keyset for g in group):
                    grouped.update(group)
                    yield group
    for key in keys:
        if key not in grouped:
            yield (key,)


def monosoup(
    w0: Mapping[str, torch.Tensor], w1: Mapping[str, torch.Tensor], cfg: MonoSoupConfig | None = None
) -> tuple[StateDict, list[dict]]:
    """Edit every eligible tensor of W1 towards W0 (docs/methods.md §3.3-§3.4); returns weights and a log."""
    cfg = cfg or MonoSoupConfig()
    out: StateDict = {}
    log: list[dict] = []
    for group in edit_groups(list(w1.keys()), cfg):
        t1 = [w1[k] for k in group]
        t0 = [w0.get(k) for k in group]
        if len(group) > 1 and any(t is None or t.shape != u.shape for t, u in zip(t0, t1)):
            stacked0, stacked1 = None, t1[0]
        else:
            stacked1 = torch.cat(t1, 0) if len(group) > 1 else t1[0]
            stacked0 = torch.cat(t0, 0) if len(group) > 1 else t0[0]
        reason = skip_reason(stacked0, stacked1, cfg)
        entry = {"tensors": list(group)}
        if reason is not None:
            out.update({k: t for k, t in zip(group, t1)})
            log.append({**entry, "edited": False, "reason": reason})
            continue
        edited, info = edit_matrix(stacked0, stacked1, cfg)
        if len(group) > 1:
            out.update(dict(zip(group, torch.split(edited, [t.shape[0] for t in t1], 0))))
        else:
            out[group[0]] = edited
        log.append({**entry, "edited": "skipped" not in info, **info})
    return {k: out[k].contiguous() for k in w1.keys()}, log


def lora_dense_state(
    w0: Mapping[str, torch.Tensor], lora: Mapping[str, torch.Tensor], scaling: float
) -> StateDict:
    """W0 with each LoRA pair folded in as the exact dense update scaling * B @ A (docs/methods.md §3.5).

    LoRA keys follow peft: '<path>.lora_A[.adapter].weight' / '<path>.lora_B[...].weight',
    with an optional 'base_model.model.' prefix; the edited base key is '<path>.weight'.
    Other tensors of the LoRA file (a trained classifier, say) are W1's own values: they
    replace W0's tensor of the same name (prefix removed) or are added as W1-only tensors.
    """
    out = dict(w0)
    pattern = re.compile(r"^(?:base_model\.model\.)?(?P<path>.*)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
    for key, a in lora.items():
        m = pattern.match(key)
        if not m:
            plain = key.removeprefix("base_model.model.")
            out[plain if plain in w0 else key] = a
            continue
        if m["ab"] == "B":
            continue
        b_key = key.replace(".lora_A", ".lora_B")
        target = f"{m['path']}.weight"
        if b_key not in lora or target not in w0:
            raise ConfigError(f"LoRA tensor '{key}' has no matching '{b_key}' / base '{target}'")
        b = lora[b_key]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise DataError(f"LoRA pair '{key}' {tuple(a.shape)} / '{b_key}' {tuple(b.shape)}: ranks do not match")
        delta = scaling * (b.float() @ a.float())
        if tuple(delta.shape) != tuple(w0[target].shape):
            raise DataError(f"LoRA pair '{key}' gives an update of shape {tuple(delta.shape)} for "
                            f"'{target}' of shape {tuple(w0[target].shape)}")
        out[target] = (w0[target].float() + delta).to(w0[target].dtype)
    return out


def config_dict(cfg: MonoSoupConfig) -> dict:
    return asdict(cfg)


@dataclass
class MonoSoupRun:
    """What `run_monosoup` made: the run folder, the per-tensor log, and (evaluate=True) the
    comparison rows of W1 and the edit (`soup_run.row`: overall / class-mean / shot groups)."""

    folder: Path
    log: list[dict]
    comparison: list[dict[str, Any]] = field(default_factory=list)

    @property
    def edited(self) -> int:
        """How many tensors / q-k-v groups were edited (the rest are kept at W1)."""
        return sum(bool(e["edited"]) for e in self.log)


def run_monosoup(w1: str | Path, w0: str | Path = "zero-shot", cfg: MonoSoupConfig | None = None,
                 out: str | Path | None = None, lora_scaling: float | None = None,
                 evaluate: bool = False, report: bool = True) -> MonoSoupRun:
    """MonoSoup of one checkpoint into a new run folder (kind "monosoup"; `longtail monosoup`).

    w1: a fine-tuned .safetensors file or run folder; w0: the pretrained .safetensors file, or
    "zero-shot" to rebuild W0 (pretrained encoder + text-initialised head) from W1's fit run.
    lora_scaling: W1 holds LoRA pairs, folded in as the dense update S * B A on W0. W0 and W1 are
    checked to be one architecture before any model or data loads. An edit of a fit run is in
    the fit layout and is evaluated into metrics.json / report.html; evaluate=True also scores W1
    and returns both rows. Writes the edited weights, monosoup_log.json and comparison.json
    (report=False: no report.html, as `--no-report`).
    """
    from longtail.io import check_writable
    from longtail.methods.finetune import RunModel, is_fit_layout
    from longtail.soups.merge import load_state_dict, weights_file
    from longtail.soups.soup_run import read_data_stats, row, write_soup_run

    cfg = cfg or MonoSoupConfig()
    if out is not None:
        check_writable(out)
    w1_file = weights_file(w1)
    fit_layout = is_fit_layout(w1)
    if (evaluate or w0 == "zero-shot") and not fit_layout:
        raise ConfigError(f"{w1}: evaluation and W0 = zero-shot need a fit run folder")

    def bases(base: dict, tuned: dict) -> tuple[dict, dict]:
        """(W0, W1) with LoRA pairs folded in, checked to be one architecture."""
        if lora_scaling is not None:
            tuned = lora_dense_state(base, tuned, lora_scaling)
        check_bases(base, tuned, f"W0 {w0}, W1 {w1}: ")
        return base, tuned

    state1 = load_state_dict(w1_file)
    if w0 != "zero-shot":  # checked before the run's model and data are loaded
        state0, state1 = bases(load_state_dict(w0), state1)
    model = RunModel(w1, cfg.device) if fit_layout else None
    if w0 == "zero-shot":
        state0, state1 = bases(model.zero_shot(), state1)
    edited, log = monosoup(state0, state1, cfg)
    config = {"label": "MonoSoup", "method": "monosoup", "w0": str(w0), "w1": str(w1), **config_dict(cfg),
              "lora_scaling": lora_scaling}
    rows = []
    if evaluate:
        stats = read_data_stats(w1)
        rows = [row("W1 (fine-tuned)", model.metrics(state1), stats), row("MonoSoup", model.metrics(edited), stats)]
    files = {"monosoup_log.json": log, **({"comparison.json": rows} if rows else {})}
    folder = write_soup_run(out, edited, w1 if fit_layout else w1_file, config, cfg.device, kind="monosoup",
                            extra={"comparison": rows} if rows else None, files=files, report=report)
    return MonoSoupRun(Path(folder), log, rows)
