"""The benchmark's model families, behind one interface the harness (harness.py) runs.

A family trains (from scratch, seeded) a class-conditional denoiser, the
search's verifier classifier and a held-out judge, and makes SearchHosts of
its own kind (schedule, prediction, samplers):

* ``digits``: scikit-learn's 8x8 digits, EPS diffusion MLP on SD's VP-discrete
  sigmas, samplers euler / euler_ancestral (model.py).
* ``shapes``: procedural 16x16 RGB shapes, rectified-flow conv U-Net on SD3's
  shifted flow schedule, samplers euler / euler_ancestral_RF (shapes.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict

import torch
from torch import nn

from model import (JudgeCNN, VerifierMLP, accuracy, load_digits_data, train_classifier,  # noqa: E402
                   train_diffusion)
from toy_host import ToyHost  # noqa: E402


@dataclass
class Built:
    """A trained family: what the harness needs to run and to measure."""
    denoise: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]   # D(x, σ, classes)
    schedule: Any              # the host's sigma schedule object
    verifier: nn.Module
    judge: nn.Module           # .features(x) -> penultimate features, forward -> logits
    ref_x: torch.Tensor        # real images for the Fréchet distance
    held_x: torch.Tensor       # held-out real images (the judge never trained on the verifier's split)
    held_y: torch.Tensor
    meta: Dict[str, Any] = field(default_factory=dict)
    net: Any = None            # the denoiser's network (parameter counts)
    train_set: Any = None      # what the denoiser trained on: the family's train_denoiser trains others on it


class Digits:
    name = "digits"
    shape = (1, 1, 8, 8)
    prediction = "eps"
    samplers = ("euler", "euler_ancestral")       # (deterministic, stochastic)
    chunk = 4096                                  # rows per denoiser call in the batched runs
    default_train_steps = 150
    description = ("scikit-learn 8x8 digits; class-conditional EPS diffusion MLP, SD's VP-discrete sigmas "
                   "(x = x0 + σ·ε); verifier MLP on split A, judge CNN on split B")

    def build(self, *, smoke: bool, train_steps: int = 0, log=print, net: Dict[str, Any] = None) -> Built:
        """``net``: the denoiser's size (EpsMLP keyword arguments; default the MLP with 256 hidden units)."""
        clf_steps = 150 if smoke else 800
        diff_steps = train_steps or self.default_train_steps
        data = load_digits_data(seed=0)
        A, B = data.split_a, data.split_b
        t0 = time.process_time()
        verifier = train_classifier(VerifierMLP, data.x[A], data.y[A], clf_steps, seed=11)
        judge = train_classifier(JudgeCNN, data.x[B], data.y[B], clf_steps, seed=23)
        diffusion = train_diffusion(data, diff_steps, seed=1, log=log, **(net or {}))
        meta = {"diffusion_train_steps": diff_steps, "classifier_train_steps": clf_steps,
                "train_cpu_s": round(time.process_time() - t0, 1),
                "verifier_acc_on_judge_split": accuracy(verifier, data.x[B], data.y[B]),
                "judge_acc_on_verifier_split": accuracy(judge, data.x[A], data.y[A]),
                "data": f"{len(A)} images (split A: diffusion + verifier), {len(B)} (split B: judge); "
                        "FD reference: all 1797 digits"}
        return Built(diffusion.denoise, diffusion.sched, verifier, judge, data.x, data.x[B], data.y[B], meta,
                     net=diffusion.net, train_set=data)

    def train_denoiser(self, built: Built, *, steps: int, net: Dict[str, Any], log=print):
        """Another denoiser of this family (size ``net``) trained like ``built``'s, on the same data and seed:
        (D(x, σ, classes), its network)."""
        diffusion = train_diffusion(built.train_set, steps, seed=1, log=log, **net)
        return diffusion.denoise, diffusion.net

    def host(self, denoiser, scorer, *, steps: int, sampler: str, schedule) -> ToyHost:
        return ToyHost(denoiser, scorer, shape=self.shape, steps=steps, sampler=sampler, prediction="eps",
                       schedule=schedule)


class Shapes:
    name = "shapes"
    prediction = "flow"
    samplers = ("euler", "euler_ancestral_RF")
    chunk = 512
    default_train_steps = 1200
    description = ("procedural 16x16 RGB shapes (10 classes, random position/size/stroke/colour/noise); "
                   "class-conditional rectified-flow conv U-Net, SD3-style shifted flow schedule (shift 3, "
                   "x = (1−σ)·x0 + σ·ε); verifier CNN on split A, judge CNN (other architecture) on split B")

    @property
    def shape(self):
        from shapes import SHAPE
        return SHAPE

    def build(self, *, smoke: bool, train_steps: int = 0, log=print, net: Dict[str, Any] = None) -> Built:
        """``net``: the denoiser's size (FlowUNet's c1, c2, emb; default 32, 64, 64)."""
        from shapes import ShapesJudge, ShapesVerifier, load_shapes_data, train_flow
        clf_steps = 60 if smoke else 800
        flow_steps = train_steps or (40 if smoke else self.default_train_steps)
        data = load_shapes_data(*((1000, 500, 300) if smoke else (6000, 3000, 2000)))
        t0 = time.process_time()
        verifier = train_classifier(ShapesVerifier, data.xa, data.ya, clf_steps, seed=11)
        judge = train_classifier(ShapesJudge, data.xb, data.yb, clf_steps, seed=23)
        flow = train_flow(data.xa, data.ya, flow_steps, seed=1, log=log, **(net or {}))
        meta = {"diffusion_train_steps": flow_steps, "classifier_train_steps": clf_steps,
                "train_cpu_s": round(time.process_time() - t0, 1),
                "verifier_acc_on_judge_split": accuracy(verifier, data.xb, data.yb),
                "judge_acc_on_verifier_split": accuracy(judge, data.xa, data.ya),
                "verifier_acc_on_reference": accuracy(verifier, data.xr, data.yr),
                "judge_acc_on_reference": accuracy(judge, data.xr, data.yr),
                "data": f"{len(data.ya)} images (split A: flow model + verifier, seed 100), {len(data.yb)} "
                        f"(split B: judge, seed 200), {len(data.yr)} (reference: FD and real row, seed 300)"}
        return Built(flow.denoise, flow.sched, verifier, judge, data.xr, data.xr, data.yr, meta,
                     net=flow.net, train_set=(data.xa, data.ya))

    def train_denoiser(self, built: Built, *, steps: int, net: Dict[str, Any], log=print):
        """Another flow model of this family (size ``net``) trained like ``built``'s, on the same data and seed:
        (D(x, σ, classes), its network)."""
        from shapes import train_flow
        flow = train_flow(*built.train_set, steps, seed=1, log=log, **net)
        return flow.denoise, flow.net

    def host(self, denoiser, scorer, *, steps: int, sampler: str, schedule):
        from shapes import FlowHost
        return FlowHost(denoiser, scorer, steps=steps, sampler=sampler, schedule=schedule)


FAMILIES = {"digits": Digits(), "shapes": Shapes()}
