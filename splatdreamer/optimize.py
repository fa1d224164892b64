"""How one particle's Gaussians are optimised: per-key Adam, the means' decaying learning rate, and
densify/prune through gsplat's strategies (policy there, our few extra rules here)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from splatdreamer.config import SplatConfig, StrategyConfig
from splatdreamer.errors import BackendUnavailableError
from splatdreamer.splats import KEYS, num_gaussians

NEVER = 10**9  # a step count no run reaches


def learning_rates(cfg: SplatConfig) -> dict[str, float]:
    return {
        "means": cfg.lr_means,
        "scales": cfg.lr_scales,
        "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities,
        "sh0": cfg.lr_sh0,
        "shN": cfg.lr_shN,
    }


def decayed_lr(start: float, final: float, step: int, total_steps: int) -> float:
    """Exponential decay from `start` at step 0 to `final` at the last step (3DGS's position schedule)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return math.exp((1 - progress) * math.log(start) + progress * math.log(final))


class ParticleOptimizer:
    """Adam per parameter key (the layout gsplat strategies require) plus the particle's strategy state."""

    def __init__(
        self,
        splats: torch.nn.ParameterDict,
        splat_cfg: SplatConfig,
        strategy_cfg: StrategyConfig,
        total_steps: int,
        scene_scale: float,
    ) -> None:
        self.splats = splats
        self.splat_cfg = splat_cfg
        self.cfg = strategy_cfg
        self.total_steps = total_steps
        # Adam with eps 1e-15 and betas (0.9, 0.99) as the official code and every 3DGS peer (notes/vsd.md §5).
        self.optimizers = {
            key: torch.optim.Adam([{"params": [splats[key]], "lr": lr, "name": key}], eps=1e-15, betas=(0.9, 0.99))
            for key, lr in learning_rates(splat_cfg).items()
        }
        self.refine_stop = strategy_cfg.refine_stop or int(0.6 * total_steps)
        self.strategy = self._make_strategy(splats["means"].device)
        self.state: dict[str, Any] = {} if self.strategy is None else self._initial_state(scene_scale)

    def _make_strategy(self, device: torch.device):
        from gsplat.strategy import DefaultStrategy, MCMCStrategy

        cfg = self.cfg
        match cfg.kind:
            case "none":
                return None
            case "default":
                return DefaultStrategy(
                    prune_opa=cfg.prune_opa,
                    grow_grad2d=cfg.grow_grad2d,
                    grow_scale3d=cfg.grow_scale3d,
                    prune_scale3d=cfg.prune_scale3d,
                    refine_start_iter=cfg.refine_start,
                    refine_stop_iter=self.refine_stop,
                    refine_every=cfg.refine_every,
                    # gsplat 1.5.3 never fires its reset (notes/gsplat.md B9.1) and gates its big-Gaussian prune
                    # on reset_every; both are done explicitly in `step` so every gsplat version behaves alike.
                    reset_every=NEVER,
                    absgrad=False,
                )
            case "mcmc":
                if device.type != "cuda":
                    raise BackendUnavailableError(
                        "the MCMC strategy runs only on CUDA (gsplat's relocation kernels); "
                        "use --strategy.kind default on this machine"
                    )
                return MCMCStrategy(
                    cap_max=cfg.cap_max,
                    noise_lr=cfg.mcmc_noise_lr,
                    refine_start_iter=cfg.refine_start,
                    refine_stop_iter=self.refine_stop,
                    refine_every=cfg.refine_every,
                    min_opacity=cfg.prune_opa,
                )

    def _initial_state(self, scene_scale: float) -> dict[str, Any]:
        if self.cfg.kind == "default":
            return self.strategy.initialize_state(scene_scale=scene_scale)
        return self.strategy.initialize_state()

    def pre_backward(self, step: int, info: dict) -> None:
        if self.strategy is not None:
            self.strategy.step_pre_backward(self.splats, self.optimizers, self.state, step, info)

    def step(self, step: int, info: dict, packed: bool) -> None:
        """Adam step, then densify/prune. `step` counts from 0."""
        cfg = self.splat_cfg
        rates = {"means": decayed_lr(cfg.lr_means, cfg.lr_means_final, step, self.total_steps)}
        if cfg.lr_sh0_final is not None:
            rates["sh0"] = decayed_lr(cfg.lr_sh0, cfg.lr_sh0_final, step, self.total_steps)
        for key, lr in rates.items():
            for group in self.optimizers[key].param_groups:
                group["lr"] = lr
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.strategy is None:
            return
        if self.cfg.kind == "mcmc":
            self.strategy.step_post_backward(self.splats, self.optimizers, self.state, step, info, lr=lr)
            return
        self.strategy.step_post_backward(self.splats, self.optimizers, self.state, step, info, packed=packed)
        if self._is_refine_step(step):
            self._prune_too_big()
            self._enforce_cap()
        if self.cfg.opacity_reset_every > 0 and step > 0 and step % self.cfg.opacity_reset_every == 0:
            from gsplat.strategy.ops import reset_opa

            reset_opa(self.splats, self.optimizers, self.state, value=2.0 * self.cfg.prune_opa)

    def _is_refine_step(self, step: int) -> bool:
        # The same window gsplat's DefaultStrategy refines in.
        return self.cfg.refine_start < step < self.refine_stop and step % self.cfg.refine_every == 0

    def _remove(self, mask: Tensor) -> None:
        if mask.any():
            from gsplat.strategy.ops import remove

            remove(self.splats, self.optimizers, self.state, mask)

    def _prune_too_big(self) -> None:
        scale = torch.exp(self.splats["scales"]).amax(dim=-1)
        self._remove(scale > self.cfg.prune_scale3d * self.state["scene_scale"])

    def _enforce_cap(self) -> None:
        """Drop the faintest Gaussians beyond `cap_max` (DefaultStrategy has no cap of its own)."""
        excess = num_gaussians(self.splats) - self.cfg.cap_max
        if excess > 0:
            faintest = torch.topk(self.splats["opacities"].detach(), excess, largest=False).indices
            mask = torch.zeros(num_gaussians(self.splats), dtype=torch.bool, device=faintest.device)
            mask[faintest] = True
            self._remove(mask)

    def state_dict(self) -> dict[str, Any]:
        return {
            "splats": {k: self.splats[k].detach().clone() for k in KEYS},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "strategy": self.state,
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore values, shapes (densification changes N), Adam moments and strategy accumulators."""
        for key in KEYS:
            self.splats[key] = torch.nn.Parameter(data["splats"][key].to(self.splats[key].device))
        for key, opt in self.optimizers.items():
            opt.param_groups[0]["params"] = [self.splats[key]]
            opt.load_state_dict(data["optimizers"][key])
        self.state = data["strategy"]
