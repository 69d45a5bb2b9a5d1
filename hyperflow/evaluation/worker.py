"""One evaluation worker: loads the target, dataset and drift networks once, then adapts episodes.

The job runs it in-process or as Ray actors; either way a worker gets (episode spec, seed) jobs and
returns one row per (episode, method): accuracy and adaptation seconds. Rows are keyed by the
episode, so results do not depend on how episodes were spread over workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hyperflow.adapt.hyperflow import adapt_hyperflow, adapted_theta, load_for_target
from hyperflow.adapt.line_search import FORWARDS_PER_SCALE
from hyperflow.adapt.methods import GRADIENT_METHODS, Adapted, accuracy, adapt, predict
from hyperflow.adapt.simulate import simulate, support_loss
from hyperflow.bias import get_theta
from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSpec, build_episode
from hyperflow.drift.compiled import BLOCK
from hyperflow.evaluation.memory import peak_memory_bytes
from hyperflow.model import load_target
from hyperflow.smat import adapt_smat, adapt_smat_finetune, load_smat


@dataclass(frozen=True)
class MethodSpec:
    name: str  # result key, e.g. "bias_tuning" or "hyperflow_cubic@5"
    kind: str  # a gradient method name, "hyperflow", "smat" or "smat_finetune"
    lr: float = 0.0
    steps: int = 0  # Adam steps (gradient methods, smat_finetune) or solver steps (hyperflow)
    drift: str | None = None  # which drift network (hyperflow only)
    solver: str = "euler"
    chunk: int = 0  # hyperflow: support images per encoder forward (0: all at once)
    scales: tuple[float, ...] = ()  # hyperflow: line-search scales of theta_T - theta_0 (_ls)
    compiled: bool = False  # hyperflow: Euler steps as compiled blocks (drift/compiled.py)

    def support_forwards(self) -> int | None:
        """Forward passes over the support set one adaptation makes (one pass = one floor);
        None for methods that also run backward passes (gradient methods, smat_finetune)."""
        if self.kind == "direct":
            return 0
        if self.kind == "smat":
            return 1  # the router reads the support set's prototypes under the frozen target
        if self.kind == "hyperflow":  # one encoder pass (all its chunks), then the line search
            return 1 + FORWARDS_PER_SCALE * len(self.scales)
        return None


@dataclass(frozen=True)
class EpisodeJob:
    domain: str
    index: int  # episode index within the domain
    spec: str  # EpisodeSpec JSON
    seed: int  # seeds the adaptation's augmentations


class EvalWorker:
    def __init__(
        self,
        target_dir: str,
        dataset: str,
        cache_dir: str | None,
        drift_dirs: dict[str, str] | None = None,
        threads: int = 1,
        smat_dir: str | None = None,
    ):
        torch.set_num_threads(threads)
        # the device Ray gave this actor: with num_gpus > 0 Ray sets CUDA_VISIBLE_DEVICES to its
        # GPU (or share of one); without, to nothing, so CUDA is unavailable and this is the CPU
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_target(target_dir).to(self.device)
        cfg = self.model.cfg
        self.data = load_dataset(dataset, cfg.image_size, cfg.channels, cache_dir)
        self.drifts = {}
        if drift_dirs:
            self.drifts = {
                k: load_for_target(v, self.model).to(self.device) for k, v in drift_dirs.items()
            }
        self.smat = load_smat(smat_dir, self.model).to(self.device) if smat_dir else None
        self.compiled: set[str] = set()  # drifts whose compiled Euler blocks exist in this process

    def _episode(self, job: EpisodeJob):
        # built on the CPU from the dataset's arrays, then adapted where the model lives
        return build_episode(self.data, EpisodeSpec.from_json(job.spec)).to(self.device)

    def _adapt(self, method: MethodSpec, episode, seed: int) -> Adapted:
        if method.kind in GRADIENT_METHODS:
            return adapt(method.kind, self.model, episode, method.lr, method.steps, seed)
        if method.kind == "smat":
            return adapt_smat(self.model, self.smat, episode)
        if method.kind == "smat_finetune":
            lr, steps = method.lr, method.steps
            return adapt_smat_finetune(self.model, self.smat, episode, lr, steps, seed)
        net = self.drifts[method.drift]
        m = method
        return adapt_hyperflow(
            self.model, net, episode, m.steps, m.solver, m.chunk, m.scales, seed, m.compiled
        )

    def run(self, work: tuple[list[EpisodeJob], list[MethodSpec]]) -> list[dict]:
        """Adapt every episode with every method: one row per (episode, method)."""
        jobs, methods = work
        rows = []
        for job in jobs:
            episode = self._episode(job)
            for m in methods:
                blocks = m.compiled and m.solver == "euler" and m.steps >= BLOCK
                if blocks and m.drift not in self.compiled:
                    # torch.compile's one-off cost (~2-20 s) is not adaptation time: an untimed
                    # first call per drift network (one graph serves every step count >= BLOCK)
                    self._adapt(m, episode, job.seed)
                    self.compiled.add(m.drift)
                start = time.perf_counter()
                adapted = self._adapt(m, episode, job.seed)
                seconds = time.perf_counter() - start  # adaptation only, not classification
                logits = predict(self.model, episode, adapted)
                rows.append(
                    {
                        "domain": job.domain,
                        "index": job.index,
                        "seed": job.seed,
                        "method": m.name,
                        "acc": accuracy(logits, episode.query_y),
                        "seconds": seconds,
                    }
                )
        return rows

    def memory(self, work: tuple[MethodSpec, EpisodeJob]) -> dict:
        """Peak adaptation memory of one episode on this worker's device, {"bytes", "device"}:
        tensor bytes the allocator counts (evaluation/memory.py), so any worker can measure."""
        method, job = work
        episode = self._episode(job)
        device = str(self.device)
        peak = peak_memory_bytes(lambda: self._adapt(method, episode, job.seed), device)
        return {"bytes": peak, "device": device}

    def loss_curves(self, work: tuple[EpisodeJob, MethodSpec | None, int]) -> dict:
        """Relative support loss L(theta_t) / L(theta_0) along each drift's Euler path and along
        bias-tuning's Adam path (if given) for one episode; x is t / T."""
        job, bias_method, steps = work
        episode = self._episode(job)
        curves = {}
        for name, net in sorted(self.drifts.items()):
            path = adapted_theta(self.model, net, episode, steps, "euler", return_path=True)
            curves[name] = _relative(support_loss(self.model, episode, path, job.seed))
        if bias_method is not None:
            theta0 = get_theta(self.model.backbone, self.model.layout).unsqueeze(0)
            lr = torch.tensor([bias_method.lr])
            traj = simulate(self.model, [episode], theta0, lr, bias_method.steps, [job.seed])
            curves["bias_tuning"] = _relative(
                support_loss(self.model, episode, traj.theta[0], job.seed)
            )
        return {"domain": job.domain, "index": job.index, "curves": curves}


def _relative(losses: torch.Tensor) -> list[float]:
    return (losses / losses[0]).tolist()
