"""Sage's SG-Adapter (docs/methods.md §5.2): AdaptFormer-style branch guided by the mean classifier row."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.models.adapters.base import (
    AdapterConfig,
    AdapterHandle,
    AdapterState,
    ParallelToMLP,
    VisionParts,
    kaiming_down_,
    register_adapter,
    resolve_r,
)


class SGAdapterBlock(nn.Module):
    """One block's SG-Adapter; reads w_bar from the shared AdapterState on every forward.

    f_v = LN_a(f_tilde), f_t = LN_a(w_bar) (same LayerNorm), g = f_t W_proj + b_proj,
    h = [f_v W_v + b_v, (g * f_v) W_vt + b_vt + s_vt (f_t W_t + b_t)],
    a = LeakyReLU(h, 1 - alpha) W_up + b_up  (= alpha ReLU(h) W_up + (1 - alpha) h W_up + b_up),
    block output gains s_l * a.
    """

    def __init__(self, dim: int, r: int, alpha: float, state: AdapterState, eps: float = 1e-5,
                 use_proj: bool = True, detach_text: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.detach_text = detach_text
        self._state = state  # plain object, not a submodule: shared by all blocks of one handle
        self.ln = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, dim) if use_proj else None
        self.down_v = nn.Linear(dim, r)
        self.down_vt = nn.Linear(dim, r)
        self.down_t = nn.Linear(dim, r)
        self.up = nn.Linear(2 * r, dim)
        self.s_vt = nn.Parameter(torch.ones(()))
        self.s_l = nn.Parameter(torch.ones(()))
        for linear in (self.proj, self.down_v, self.down_vt, self.down_t):
            if linear is not None:
                kaiming_down_(linear)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def activation(self, h: Tensor) -> Tensor:
        """alpha * ReLU(h) + (1 - alpha) * h, computed as one LeakyReLU with slope 1 - alpha."""
        return F.leaky_relu(h, negative_slope=1.0 - self.alpha)

    def text_terms(self, w_bar: Tensor) -> tuple[Tensor, Tensor]:
        """(g, s_vt * (f_t W_t + b_t)) from w_bar: computed once per block per forward, then broadcast."""
        f_t = self.ln(w_bar)
        g = self.proj(f_t) if self.proj is not None else f_t
        return g, self.s_vt * self.down_t(f_t)

    def forward(self, f_tilde: Tensor) -> Tensor:
        w_bar = self._state.text
        if w_bar is None:
            raise RuntimeError("SG-Adapter: call handle.set_text_vector(w_bar) before the forward pass")
        dtype = self.up.weight.dtype
        w_bar = w_bar.to(device=f_tilde.device, dtype=dtype)
        g, t = self.text_terms(w_bar.detach() if self.detach_text else w_bar)
        f_v = self.ln(f_tilde.to(dtype))
        h = torch.cat([self.down_v(f_v), self.down_vt(g * f_v) + t], dim=-1)
        return self.s_l * self.up(self.activation(h))


@register_adapter("sg-adapter")
@dataclass
class SGAdapterConfig(AdapterConfig):
    """Sage SG-Adapter in all blocks. alpha per Sage Table 8 (0.1 CIFAR, 0.8 ImageNet/Places, 1.0 iNat).

    use_proj=False drops W_proj (g = f_t), the paper's "w/o W_proj" ablation; detach_text stops
    gradients from the adapters into the classifier through w_bar.
    """

    r: int | str = "auto"
    alpha: float = 0.8
    use_proj: bool = True
    detach_text: bool = False

    def validate(self) -> None:
        self._check_r(self.r)
        self._check(isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0,
                    f"alpha must be in [0, 1], got {self.alpha!r}")

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        r = resolve_r(self.r, num_classes, parts.num_layers)
        handle.state.text_dim = parts.hidden_size
        for layer in parts.layers:
            block = SGAdapterBlock(parts.hidden_size, r, float(self.alpha), handle.state,
                                   parts.layer_norm_eps, self.use_proj, self.detach_text)
            ParallelToMLP(block, handle.state).attach(layer, handle, layout=parts.layout)
