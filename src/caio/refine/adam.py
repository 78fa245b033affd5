"""The one optimiser set-up: Adam with a linear learning-rate warm-up.

Used by the cascade (:mod:`caio.refine.cascade`), its pretraining (:mod:`caio.refine.pretrain`)
and the training-free backbone (:mod:`caio.backbone.training_free`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear from ``1/warmup`` to 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class Adam:
    """Adam (Kingma & Ba 2015, bias-corrected) over a list of tensors.

    Same update as ``torch.optim.Adam`` without weight decay; used instead of it because the
    first ``torch.optim`` optimiser of a process imports ``torch._dynamo`` (seconds on CPU),
    which would eat into a pair's deadline. ``lr`` may be changed between steps.
    """

    def __init__(
        self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps = float(lr), betas, eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        correction1 = 1.0 - b1**self.step_count
        correction2 = 1.0 - b2**self.step_count
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
            denom = (v / correction2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / correction1)

    def state_dict(self) -> dict:
        return {
            "step": self.step_count,
            "lr": self.lr,
            "exp_avg": [m.clone() for m in self.exp_avg],
            "exp_avg_sq": [v.clone() for v in self.exp_avg_sq],
        }

    def load_state_dict(self, state: Mapping) -> None:
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError("optimiser state does not fit the parameters")
        self.step_count, self.lr = int(state["step"]), float(state["lr"])
        for dst, src in zip(self.exp_avg + self.exp_avg_sq, list(state["exp_avg"]) + list(state["exp_avg_sq"])):
            dst.copy_(src)

    def warm_up(self, base_lr: float, step: int, warmup_steps: int) -> None:
        """Set ``lr`` for ``step`` (0-based) of a linear warm-up to ``base_lr`` over ``warmup_steps``."""
        self.lr = base_lr * warmup_factor(step, warmup_steps)
