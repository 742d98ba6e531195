"""Several trials stepped together as one horizontally fused model (the HFTA idea, MLSys 2021).

K trainers with the same architecture, batch size and data are stacked with
`torch.func.stack_module_state` and run through `vmap(functional_call(...))`, so one launch does the
work of K: on a GPU this is what lets ten trials share a card without time-slicing. Each trial keeps
its own config (loss weights and targets, learning rates, betas, schedule, seed), its own data order
and flips, its own Adam state and its own BatchNorm statistics; only the kernels are shared.

The stacked tensors are the truth while packed; `sync()` writes them back into the K `Trainer`
objects, whose `state_dict()` is the ordinary checkpoint format, so a packed trial resumes on the
plain path and back. The step's body is `trainable.gan_step`'s, with the pack as its nets. Adam
is written out here (the same arithmetic as torch's) because its learning rate, betas and step
differ per trial; on CUDA the whole step can be captured in one graph (`trainable.graphs`). Epoch
planning and bookkeeping are `trainable.steps.StepGroup`'s.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from trainable.config import Config, flatten, to_dict
from trainable.engine import Trainer
from trainable.gan_step import gan_step
from trainable.names import SHARED_KEYS
from trainable.steps import StepGroup

ADAM_EPS = 1e-8


class StackedAdam:
    """Adam over stacked (K, …) parameters with per-trial lr, betas and step (torch's formula)."""

    def __init__(self, params: dict[str, torch.Tensor], betas: torch.Tensor, states: list[list[dict]]):
        names, k = list(params), betas.shape[0]
        self.params = params
        self.beta1, self.beta2 = betas[:, 0], betas[:, 1]
        self.step = torch.stack([_step_of(states[i][0]) for i in range(k)]).to(betas.device)
        self.exp_avg = {n: _stacked(states, j, "exp_avg", params[n]) for j, n in enumerate(names)}
        self.exp_avg_sq = {n: _stacked(states, j, "exp_avg_sq", params[n]) for j, n in enumerate(names)}

    @torch.no_grad()
    def update(self, grads: dict[str, torch.Tensor], lr: torch.Tensor) -> None:
        self.step += 1
        correction1 = 1 - self.beta1 ** self.step
        correction2_sqrt = (1 - self.beta2 ** self.step).sqrt()
        step_size = lr / correction1
        for name, param in self.params.items():
            shape = (-1,) + (1,) * (param.dim() - 1)
            grad = grads[name]
            self.exp_avg[name].lerp_(grad, (1 - self.beta1).view(shape))
            self.exp_avg_sq[name].mul_(self.beta2.view(shape)).addcmul_(
                grad * (1 - self.beta2).view(shape), grad)
            denom = (self.exp_avg_sq[name].sqrt() / correction2_sqrt.view(shape)).add_(ADAM_EPS)
            param.sub_(step_size.view(shape) * self.exp_avg[name] / denom)

    def states(self, index: int, names: list[str]) -> list[dict]:
        """Trial `index`'s state in torch.optim.Adam's per-parameter format."""
        step = self.step[index].detach().cpu().float()
        return [{"step": step.clone(), "exp_avg": self.exp_avg[n][index].clone(),
                 "exp_avg_sq": self.exp_avg_sq[n][index].clone()} for n in names]


def _step_of(state: dict) -> torch.Tensor:
    return torch.as_tensor(float(state["step"]) if state else 0.0, dtype=torch.float32)


def _stacked(states: list[list[dict]], j: int, key: str, like: torch.Tensor) -> torch.Tensor:
    parts = [s[j][key] if s[j] else torch.zeros_like(like[0]) for s in states]
    return torch.stack(parts).to(like.device, like.dtype)


def optimizer_states(trainer_optimizer: torch.optim.Adam) -> list[dict]:
    return [trainer_optimizer.state.get(p, {}) for p in trainer_optimizer.param_groups[0]["params"]]


def pack_signature(cfg: Config) -> tuple[tuple[str, str], ...]:
    """The config values trials must share to step in one pack (SHARED_KEYS), comparable and hashable."""
    flat = flatten(to_dict(cfg))
    shared = tuple((key, repr(flat[key])) for key in sorted(flat) if key.startswith(SHARED_KEYS))
    # ranges and λ may differ per trial, the conditioned statistics (the inputs of G) may not
    return shared + (("loss.<statistic>.range set for", repr(tuple(cfg.loss.conditioned()))),)


def check_packable(trainers: list[Trainer]) -> None:
    """Trials can share a pack only with the same data, architecture, batch and device."""
    first = pack_signature(trainers[0].cfg)
    for trainer in trainers[1:]:
        for (key, mine), (_, theirs) in zip(first, pack_signature(trainer.cfg)):
            if mine != theirs:
                raise ValueError(f"{key}: trials in one pack must share it ({mine} vs {theirs})")
        if trainer.data is not trainers[0].data and trainer.data.train_count != trainers[0].data.train_count:
            raise ValueError("data: trials in one pack must train on the same images")


class _Fp32BatchNorm(nn.BatchNorm2d):
    """BatchNorm computed in fp32 on a half-precision input (vmap's batch_norm rule wants one dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _functional_base(module: nn.Module, half: bool) -> tuple[nn.Module, set[str]]:
    """A weightless train-mode copy to call with stacked weights, and its BatchNorm parameter names.
    With `half`, its BatchNorms cast to fp32 and back: every other parameter is cast to half."""
    base = copy.deepcopy(module).to("meta").train()
    norms = set()
    for name, layer in base.named_modules():
        if isinstance(layer, nn.BatchNorm2d):
            if half:
                layer.__class__ = _Fp32BatchNorm
            norms.update(f"{name}.{p}" for p, _ in layer.named_parameters())
    return base, norms


class PackedTrainer(StepGroup):
    """K trainers stepped as one. Half precision is explicit casts, not autocast: under vmap,
    autocast leaves convolutions in fp32 (seen on the CPU; pytorch/functorch#305)."""

    def __init__(self, trainers: list[Trainer]):
        check_packable(trainers)
        super().__init__(trainers)
        lead = trainers[0]
        self.autocast_dtype = lead.autocast_dtype
        if self.autocast_dtype == torch.float16:
            raise ValueError("train.precision: fp16 needs a loss scaler, which packed and graphed steps "
                             "do not have; use bf16 or fp32")
        half = self.autocast_dtype is not None
        # train mode whatever the lead was left in (evaluate() leaves it in eval mode)
        self.g_base, self.g_norms = _functional_base(lead.generator, half)
        self.d_base, self.d_norms = _functional_base(lead.discriminator, half)
        for trainer in trainers:     # stack_module_state wants one mode; evaluate() leaves eval mode
            trainer.generator.train()
            trainer.discriminator.train()
        self.g_params, self.g_buffers = stack_module_state([t.generator for t in trainers])
        self.d_params, self.d_buffers = stack_module_state([t.discriminator for t in trainers])
        betas = torch.tensor([[t.cfg.optim.beta1, t.cfg.optim.beta2] for t in trainers], device=self.device)
        self.opt_g = StackedAdam(self.g_params, betas, [optimizer_states(t.opt_g) for t in trainers])
        self.opt_d = StackedAdam(self.d_params, betas, [optimizer_states(t.opt_d) for t in trainers])
        self.base_lr_g = torch.tensor([t.cfg.optim.lr_generator for t in trainers], device=self.device)
        self.base_lr_d = torch.tensor([t.cfg.optim.lr_discriminator for t in trainers], device=self.device)
        self.lr_factor: torch.Tensor | None = None      # (K,), set by each step for its updates

    def _lowered(self, params: dict[str, torch.Tensor], norms: set[str]) -> dict[str, torch.Tensor]:
        """The weights as the forward pass uses them: half precision except BatchNorm's."""
        if self.autocast_dtype is None:
            return params
        return {n: p if n in norms else p.to(self.autocast_dtype) for n, p in params.items()}

    def _call(self, base, params, buffers, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if self.autocast_dtype is not None:
            x = x.to(self.autocast_dtype)
        if condition is None:
            return vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))(params, buffers, x)
        return vmap(lambda p, b, x, c: functional_call(base, (p, b), (x, c)))(params, buffers, x, condition)

    def generate(self, gray: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return self._call(self.g_base, self._lowered(self.g_params, self.g_norms), self.g_buffers, gray, condition)

    def discriminate(self, real: torch.Tensor, real_condition: torch.Tensor | None,
                     fake: torch.Tensor, fake_condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self._lowered(self.d_params, self.d_norms)        # cast once for both calls
        return (self._call(self.d_base, weights, self.d_buffers, real, real_condition),
                self._call(self.d_base, weights, self.d_buffers, fake, fake_condition))

    def judge(self, fake: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        # only G's parameters are differentiated in update_generator
        return self._call(self.d_base, self._lowered(self.d_params, self.d_norms), self.d_buffers, fake, condition)

    def update_discriminator(self, losses: list[torch.Tensor]) -> None:
        grads = torch.autograd.grad(torch.stack(losses).sum(), list(self.d_params.values()))
        self.opt_d.update(dict(zip(self.d_params, grads)), self.base_lr_d * self.lr_factor)

    def update_generator(self, losses: list[torch.Tensor]) -> None:
        grads = torch.autograd.grad(torch.stack(losses).sum(), list(self.g_params.values()))
        self.opt_g.update(dict(zip(self.g_params, grads)), self.base_lr_g * self.lr_factor)

    def step(self, batch: torch.Tensor, lr_factor: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One D then G update of every trial (`trainable.gan_step`, this pack as its nets); batch is
        (K, B, 3, H, W), noise (K, B, W) or None. Returns (K,) losses."""
        self.lr_factor = lr_factor
        merged = gan_step(self, self.trainers, batch, noise)
        keys = dict.fromkeys(key for m in merged for key in m)      # control_<p> differ per trial
        missing = torch.full((), float("nan"), device=self.device)
        return {key: torch.stack([m[key] if key in m else missing for m in merged]).detach() for key in keys}

    @torch.no_grad()
    def sync(self) -> list[Trainer]:
        """Write the stacked weights, BN statistics and Adam state back into the trainers."""
        for k, trainer in enumerate(self.trainers):
            for module, params, buffers in ((trainer.generator, self.g_params, self.g_buffers),
                                            (trainer.discriminator, self.d_params, self.d_buffers)):
                for name, tensor in {**dict(module.named_parameters()), **dict(module.named_buffers())}.items():
                    tensor.copy_((params if name in params else buffers)[name][k])
            for optimizer, stacked, module in ((trainer.opt_g, self.opt_g, trainer.generator),
                                               (trainer.opt_d, self.opt_d, trainer.discriminator)):
                names = [n for n, _ in module.named_parameters()]
                lr = trainer.cfg.optim.lr_generator if optimizer is trainer.opt_g else trainer.cfg.optim.lr_discriminator
                saved = optimizer.state_dict()     # load_state_dict puts 'step' where fused Adam wants it
                saved["state"] = dict(enumerate(stacked.states(k, names)))
                saved["param_groups"][0]["lr"] = lr * trainer.schedule.factor(max(trainer.step - 1, 0))
                optimizer.load_state_dict(saved)
        return self.trainers

