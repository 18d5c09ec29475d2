"""Multi-branch FER loss: a weighted sum of per-branch cross-entropies (+ the pose loss).

Terms: every branch whose logits are trained directly (global or global_local, local, each
context region, each auxiliary scale classifier) and `pose` when the model has a pose head and the
batch has pose labels (-1 = unknown). Per-patch classifiers of an ensemble are trained through the
aggregated `local` logits. The weighting is one registry entry per scheme:

- fixed: the model config's branch weights (MA-Net 0.6 local / 0.4 global; SCAN-CCI 0.2 on the
  attention head and 0.8 on each of the 4 context regions, summed);
- uncertainty: Kendall et al. 2018, sum_i exp(-s_i) L_i + s_i, s_i = log sigma_i^2 learned
  (PhaNet's "dynamically learned loss weights" read this way, see docs/ARCHITECTURES.md);
- dwa: dynamic weight averaging (Liu et al. 2019): w_i(t) = N exp(r_i(t-1)/T) / sum_j exp(r_j(t-1)/T),
  r_i(t-1) = L_i(t-1) / L_i(t-2) from the epoch means; w_i = 1 for the first two epochs.

Written here rather than taken from a library: no maintained package implements these over a
dict of named branch losses.

A new weighting is one `LossWeighting` subclass plus one `WEIGHTINGS.register` line; the train
config fields it reads are declared there (`settings=`) and handed to its constructor by name
(dwa: `dwa_temperature`), so the trainer needs no edit.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .extension import Registry

if TYPE_CHECKING:  # annotations only: the loss registry loads without the model code (search_spaces validates names)
    from .model import FERNet, FEROutput


@dataclass
class LossResult:
    total: torch.Tensor
    parts: Dict[str, torch.Tensor]  # unweighted per-term losses
    weights: Dict[str, float]  # the weight each term got in this step


class LossWeighting(nn.Module, abc.ABC):
    """How the per-term losses become one: `combine` each step, `end_epoch` after each training
    epoch. `terms` are the loss terms (branch names and `pose`), `fixed` the model's own weights."""

    def __init__(self, terms: List[str], fixed: Dict[str, float]):
        super().__init__()
        self.terms = terms
        self.fixed = fixed

    @abc.abstractmethod
    def combine(self, parts: Dict[str, torch.Tensor]):
        """(total loss, {term: the weight it got}) of this step's per-term losses."""

    def end_epoch(self, means: Dict[str, float]) -> None:  # noqa: B027 - an optional hook, not abstract
        """The mean of every term over the epoch just trained (DWA adapts its weights to them)."""


class FixedWeighting(LossWeighting):
    def combine(self, parts):
        w = {k: self.fixed[k] for k in parts}
        return sum(w[k] * v for k, v in parts.items()), w


class UncertaintyWeighting(LossWeighting):
    def __init__(self, terms, fixed):
        super().__init__(terms, fixed)
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in terms})

    def combine(self, parts):
        total = sum(torch.exp(-self.log_vars[k]) * v + self.log_vars[k] for k, v in parts.items())
        return total, {k: float(torch.exp(-self.log_vars[k]).detach()) for k in parts}


class DWAWeighting(LossWeighting):
    def __init__(self, terms, fixed, dwa_temperature: float = 2.0):
        super().__init__(terms, fixed)
        if dwa_temperature <= 0:
            raise UserError(f"dwa_temperature must be > 0, got {dwa_temperature}")
        self.temperature = float(dwa_temperature)
        self.history: List[Dict[str, float]] = []
        self.current = {t: 1.0 for t in terms}

    def combine(self, parts):
        w = {k: self.current[k] for k in parts}
        return sum(w[k] * v for k, v in parts.items()), w

    def end_epoch(self, means):
        self.history.append(dict(means))
        if len(self.history) < 2:
            return
        prev, prev2 = self.history[-1], self.history[-2]
        ratios = {t: prev[t] / max(prev2[t], 1e-12) for t in self.terms if t in prev and t in prev2}
        if not ratios:
            return
        z = sum(math.exp(r / self.temperature) for r in ratios.values())
        n = len(ratios)
        self.current.update({t: n * math.exp(r / self.temperature) / z for t, r in ratios.items()})


# name -> LossWeighting subclass; `settings` are the train-config fields its constructor takes
WEIGHTINGS = Registry("loss weighting", "train.loss_weighting")
WEIGHTINGS.register("fixed", FixedWeighting, doc="the model config's branch weights")
WEIGHTINGS.register("uncertainty", UncertaintyWeighting, doc="learned uncertainty weights (Kendall et al. 2018)")
WEIGHTINGS.register("dwa", DWAWeighting, settings={"dwa_temperature": "temperature T of the softmax over loss ratios"},
                    doc="dynamic weight averaging (Liu et al. 2019)")


class FERLoss(nn.Module):
    """Loss for one model. Holds learnable weights (uncertainty): give its parameters to the optimizer."""

    def __init__(self, model: FERNet, weighting: str = "fixed", label_smoothing: float = 0.0,
                 class_weights: Optional[torch.Tensor] = None, settings: Optional[Mapping[str, Any]] = None,
                 **weighting_kwargs: Any):
        """`settings`: the train config (or a mapping) the weighting's declared settings are read from;
        `weighting_kwargs` (e.g. dwa_temperature=2.0) are passed to it as they are."""
        super().__init__()
        WEIGHTINGS.checked(weighting)
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.terms = [b for b in model.branches if not b.startswith("patch_")]
        fixed = {b: model.group_weight(model.branch_group(b)) for b in self.terms}
        if model.cfg.pose_head:
            self.terms.append("pose")
            fixed["pose"] = model.cfg.pose_weight
        self.weighting = WEIGHTINGS.build(weighting, self.terms, fixed, config=settings, **weighting_kwargs)
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float())
        self._sums: Dict[str, float] = {}
        self._count = 0

    def forward(self, out: FEROutput, target: torch.Tensor, pose_target: Optional[torch.Tensor] = None) -> LossResult:
        parts: Dict[str, torch.Tensor] = {}
        for b in self.terms:
            if b == "pose":
                continue
            parts[b] = F.cross_entropy(out.branch_logits[b].float(), target, weight=self.class_weights,
                                       label_smoothing=self.label_smoothing)
        if "pose" in self.terms and pose_target is not None and out.pose_logits is not None:
            known = pose_target >= 0
            if bool(known.any()):
                parts["pose"] = F.cross_entropy(out.pose_logits[known].float(), pose_target[known])
        total, weights = self.weighting.combine(parts)
        if self.training:
            for k, v in parts.items():
                self._sums[k] = self._sums.get(k, 0.0) + float(v.detach())
            self._count += 1
        return LossResult(total, parts, weights)

    def end_epoch(self) -> Dict[str, float]:
        """Close a training epoch: the mean of every term, handed to the weighting (DWA uses it)."""
        means = {k: s / max(self._count, 1) for k, s in self._sums.items()}
        self.weighting.end_epoch(means)
        self._sums, self._count = {}, 0
        return means


def build_loss(model: FERNet, weighting: str = "fixed", **kwargs) -> FERLoss:
    return FERLoss(model, weighting=weighting, **kwargs)
