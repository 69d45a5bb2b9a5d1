"""One evaluation worker: loads the target, dataset and drift networks once, then adapts episodes.

The job runs it in-process or as Ray actors; either way a worker gets (episode spec, seed) jobs and
returns one row per (episode, method): accuracy and adaptation seconds. Rows are keyed by the
episode, so results do not depend on how episodes were spread over workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hyperflow.adapt.methods import GRADIENT_METHODS, Adapted, accuracy, adapt, classify, predict
from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSpec, build_episode
from hyperflow.evaluation.memory import peak_memory_bytes
from hyperflow.model import load_target


@dataclass(frozen=True)
class MethodSpec:
    name: str  # result key, e.g. "bias_tuning" or "hyperflow_cubic@5"
    kind: str  # a gradient method name, or "hyperflow"
    lr: float = 0.0
    steps: int = 0  # Adam steps (gradient methods) or solver steps (hyperflow)
    drift: str | None = None  # which drift network (hyperflow only)
    solver: str = "euler"


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
    ):
        torch.set_num_threads(threads)
        self.model = load_target(target_dir)
        cfg = self.model.cfg
        self.data = load_dataset(dataset, cfg.image_size, cfg.channels, cache_dir)
        self.drifts = {}
        if drift_dirs:
            from hyperflow.adapt.hyperflow import load_for_target

            self.drifts = {k: load_for_target(v, self.model) for k, v in drift_dirs.items()}

    def _adapt(self, method: MethodSpec, episode, seed: int) -> Adapted:
        if method.kind in GRADIENT_METHODS:
            return adapt(method.kind, self.model, episode, method.lr, method.steps, seed)
        from hyperflow.adapt.hyperflow import adapt_hyperflow

        net = self.drifts[method.drift]
        return adapt_hyperflow(self.model, net, episode, method.steps, method.solver)

    def run(self, work: tuple[list[EpisodeJob], list[MethodSpec]]) -> list[dict]:
        """Adapt every episode with every method: one row per (episode, method)."""
        jobs, methods = work
        rows = []
        for job in jobs:
            episode = build_episode(self.data, EpisodeSpec.from_json(job.spec))
            for m in methods:
                start = time.perf_counter()
                adapted = self._adapt(m, episode, job.seed)
                seconds = time.perf_counter() - start  # adaptation only, not classification
                logits = predict(self.model, episode, adapted)
                rows.append(
                    {
                        "domain": job.domain,
                        "index": job.index,
                        "method": m.name,
                        "acc": accuracy(logits, episode.query_y),
                        "seconds": seconds,
                    }
                )
        return rows

    def memory(self, work: tuple[MethodSpec, EpisodeJob]) -> int:
        """Peak adaptation memory of one episode; call on a fresh worker, one method each."""
        method, job = work
        episode = build_episode(self.data, EpisodeSpec.from_json(job.spec))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        classify(self.model, episode)  # warm-up: one-time kernel and allocator set-up
        return peak_memory_bytes(lambda: self._adapt(method, episode, job.seed), device)
