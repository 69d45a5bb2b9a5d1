"""Few-shot episodes: seeded samplers that emit serialisable specs, and building specs into tensors.

An EpisodeSpec names everything needed to rebuild an episode bit for bit (domain, class ids,
image ids, optional on-the-fly shift and its seed, and for the `procedural` family the
composition of primitives drawn for the episode), so every trajectory can point back to it.
Support and query images are listed class by class in the order of spec.classes; the label of
an image is the position of its class in spec.classes.

Variable episodes (Meta-Dataset style, our own simpler formula): way ~ uniform integer in
[min_way, min(max_way, classes in the domain)]; each class independently gets a support size
drawn log-uniformly from 1..max_shot (P(k) proportional to log((k+1)/k): small shots are the most
common, and classes are imbalanced), capped at the class's images minus `query`; every class gets
exactly `query` query images, so accuracy stays class-balanced.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hyperflow.data.dataset import Dataset, Domain
from hyperflow.data.procedural import (
    PRIMITIVE_COUNTS,
    PROCEDURAL_NAME,
    Primitive,
    apply_composition,
    episode_composition,
)
from hyperflow.data.shifts import SHIFTS, apply_shift
from hyperflow.errors import UserError

_SHIFT_STREAM = 1  # build_episode seeds the shift with [spec.seed, 1], apart from sampling


@dataclass(frozen=True)
class EpisodeSpec:
    domain: str
    classes: tuple[int, ...]  # class indices within the domain, len = way
    support: tuple[int, ...]  # image indices into domain.images, class by class
    query: tuple[int, ...]
    shift: str | None = None  # shift family applied on the fly when building; None = none
    seed: int = 0  # seeds the on-the-fly shift
    # shift "procedural": the primitives drawn for this episode, in order (procedural.py);
    # empty otherwise, and then absent from to_dict, so other specs serialise as they always did
    composition: tuple[Primitive, ...] = ()

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        d.pop("composition")
        if self.composition:
            d["composition"] = [p.to_dict() for p in self.composition]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EpisodeSpec:
        keys = set(cls.__dataclass_fields__)
        if not {"domain", "classes", "support", "query"} <= set(d) or not set(d) <= keys:
            raise UserError(f"not an episode spec (keys {sorted(d)}; expected {sorted(keys)})")
        ints = {k: tuple(int(i) for i in d[k]) for k in ("classes", "support", "query")}
        steps = tuple(Primitive.from_dict(p) for p in d.get("composition", ()))
        return cls(
            domain=str(d["domain"]),
            shift=d.get("shift"),
            seed=int(d.get("seed", 0)),
            composition=steps,
            **ints,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> EpisodeSpec:
        return cls.from_dict(json.loads(s))


@dataclass
class Episode:
    spec: EpisodeSpec
    support_x: torch.Tensor  # uint8 [Ns, C, H, W]
    support_y: torch.Tensor  # int64 [Ns], values 0..way-1 (position of the class in spec.classes)
    query_x: torch.Tensor  # uint8 [Nq, C, H, W]
    query_y: torch.Tensor  # int64 [Nq]

    @property
    def way(self) -> int:
        return len(self.spec.classes)

    def to(self, device: torch.device | str) -> Episode:
        """The same episode with its tensors on `device` (the adapting actor's device)."""
        return Episode(
            self.spec,
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
        )


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")


def _check_shift(shift: str | None) -> None:
    if shift is not None and shift not in SHIFTS:
        raise UserError(f"unknown image shift {shift!r}; valid: {', '.join(SHIFTS)}")


def _check_domain(domain: Domain, way: int, per_class: int, what: str) -> list[np.ndarray]:
    """Image indices of every class; UserError if the domain cannot host such episodes."""
    if domain.num_classes < way:
        raise UserError(
            f"domain {domain.name!r} has {domain.num_classes} classes, way={way} needs {way}"
        )
    order = np.argsort(domain.labels, kind="stable")
    counts = np.bincount(domain.labels, minlength=domain.num_classes)
    short = np.flatnonzero(counts < per_class)
    if len(short):
        c = short[0]
        raise UserError(
            f"domain {domain.name!r} class {domain.class_names[c]!r} has {counts[c]} images, "
            f"{what}={per_class} needs {per_class}"
        )
    return np.split(order, np.cumsum(counts)[:-1])


def _spec(domain, classes, per_class_images, shots, shift, seed, exclude, counts) -> EpisodeSpec:
    support = [int(i) for imgs, k in zip(per_class_images, shots) for i in imgs[:k]]
    query = [int(i) for imgs, k in zip(per_class_images, shots) for i in imgs[k:]]
    classes = tuple(int(c) for c in classes)
    # drawn from the seed on a stream of its own: the images picked stay those of other shifts
    steps = episode_composition(seed, exclude, counts) if shift == PROCEDURAL_NAME else ()
    return EpisodeSpec(domain.name, classes, tuple(support), tuple(query), shift, seed, steps)


def sample_episode(
    domain: Domain,
    seed: int,
    way: int,
    shot: int,
    query: int,
    shift: str | None = None,
    exclude: tuple[str, ...] = (),
    counts: tuple[int, int] = PRIMITIVE_COUNTS,
) -> EpisodeSpec:
    """An N-way K-shot episode with `query` query images per class, drawn from seed; `exclude`:
    primitives a procedural composition may not use, `counts`: its fewest and most primitives."""
    _check_sizes(way=way, shot=shot, query=query)
    _check_shift(shift)
    by_class = _check_domain(domain, way, shot + query, "shot+query")
    rng = np.random.default_rng(seed)
    classes = rng.choice(domain.num_classes, way, replace=False)
    picks = [rng.choice(by_class[c], shot + query, replace=False) for c in classes]
    return _spec(domain, classes, picks, [shot] * way, shift, seed, exclude, counts)


def sample_variable_episode(
    domain: Domain,
    seed: int,
    max_way: int = 20,
    max_shot: int = 10,
    query: int = 5,
    min_way: int = 5,
    shift: str | None = None,
    exclude: tuple[str, ...] = (),
    counts: tuple[int, int] = PRIMITIVE_COUNTS,
) -> EpisodeSpec:
    """A variable-way, class-imbalanced episode (formula in the module docstring)."""
    _check_sizes(min_way=min_way, max_way=max_way, max_shot=max_shot, query=query)
    _check_shift(shift)
    if max_way < min_way:
        raise UserError(f"max_way={max_way} is below min_way={min_way}")
    by_class = _check_domain(domain, min_way, query + 1, "1+query")
    rng = np.random.default_rng(seed)
    way = int(rng.integers(min_way, min(max_way, domain.num_classes) + 1))
    classes = rng.choice(domain.num_classes, way, replace=False)
    log_shot = rng.uniform(0.0, np.log(max_shot + 1), size=way)
    shots = [
        min(int(np.exp(s)), max_shot, len(by_class[c]) - query) for s, c in zip(log_shot, classes)
    ]
    picks = [rng.choice(by_class[c], k + query, replace=False) for c, k in zip(classes, shots)]
    return _spec(domain, classes, picks, shots, shift, seed, exclude, counts)


def _labels(domain: Domain, spec: EpisodeSpec, idx: tuple[int, ...]) -> torch.Tensor:
    position = {c: i for i, c in enumerate(spec.classes)}
    labels = domain.labels[np.asarray(idx, dtype=np.int64)]
    missing = [int(c) for c in labels if int(c) not in position]
    assert not missing, f"episode images of classes {missing[:3]} not in spec.classes"
    return torch.tensor([position[int(c)] for c in labels], dtype=torch.int64)


def build_episode(dataset: Dataset, spec: EpisodeSpec) -> Episode:
    """Tensors for spec; the same spec always gives identical tensors."""
    domain = dataset.domain(spec.domain)
    _check_shift(spec.shift)
    n = len(domain.images)
    bad = [i for i in spec.support + spec.query if not 0 <= i < n]
    if bad:
        raise UserError(f"episode image index {bad[0]} outside domain {spec.domain!r} (0..{n - 1})")
    support_x = domain.images[np.asarray(spec.support, dtype=np.int64)]
    query_x = domain.images[np.asarray(spec.query, dtype=np.int64)]
    if spec.shift is not None:
        # one call over support + query: per-image parameters, one reproducible stream
        both, stream = np.concatenate([support_x, query_x]), [spec.seed, _SHIFT_STREAM]
        if spec.shift == PROCEDURAL_NAME:  # the recorded composition, else the seed's
            steps = spec.composition or episode_composition(spec.seed)
            both = apply_composition(both, steps, np.random.default_rng(stream))
        else:
            both = apply_shift(spec.shift, both, stream)
        support_x, query_x = both[: len(support_x)], both[len(support_x) :]
    return Episode(
        spec=spec,
        support_x=torch.from_numpy(np.ascontiguousarray(support_x)),
        support_y=_labels(domain, spec, spec.support),
        query_x=torch.from_numpy(np.ascontiguousarray(query_x)),
        query_y=_labels(domain, spec, spec.query),
    )


@dataclass
class EpisodeSampler:
    """Episode specs indexed by an integer: spec(i) depends only on (seed, i) and the settings."""

    dataset: Dataset
    domains: list[str]
    way: int
    shot: int  # max_shot when variable
    query: int
    seed: int
    variable: bool = False  # variable way (5..way) and class-imbalanced shots (1..shot)
    shifts: tuple[str, ...] = field(default=())  # if set, one family drawn per episode
    exclude: tuple[str, ...] = field(default=())  # primitives procedural episodes may not use
    counts: tuple[int, int] = PRIMITIVE_COUNTS  # fewest and most primitives of a composition

    def __post_init__(self):
        if not self.domains:
            raise UserError("EpisodeSampler needs at least one domain")
        _check_sizes(way=self.way, shot=self.shot, query=self.query)
        for s in self.shifts:
            _check_shift(s)
        min_way = min(5, self.way)
        for name in self.domains:  # fail now, not at some later index
            domain = self.dataset.domain(name)
            if self.variable:
                _check_domain(domain, min_way, self.query + 1, "1+query")
            else:
                _check_domain(domain, self.way, self.shot + self.query, "shot+query")

    def spec(self, index: int) -> EpisodeSpec:
        """The index-th episode spec."""
        if index < 0:
            raise UserError(f"episode index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, index])
        domain = self.dataset.domains[self.domains[int(rng.integers(len(self.domains)))]]
        episode_seed = int(rng.integers(2**63 - 1))
        shift = self.shifts[int(rng.integers(len(self.shifts)))] if self.shifts else None
        if self.variable:
            return sample_variable_episode(
                domain,
                episode_seed,
                max_way=self.way,
                max_shot=self.shot,
                query=self.query,
                min_way=min(5, self.way),
                shift=shift,
                exclude=self.exclude,
                counts=self.counts,
            )
        return sample_episode(
            domain, episode_seed, self.way, self.shot, self.query, shift, self.exclude, self.counts
        )
