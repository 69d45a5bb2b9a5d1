"""The bias parameter space: pick bias tensors by pattern, flatten them to one vector theta.

theta is a flat float vector of size P. Its layout records, for every selected parameter,
the name, the offset into theta and the shape, so a theta can be split back into tensors
and run through the model functionally (`torch.func.functional_call`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn

from hyperflow.errors import UserError


@dataclass(frozen=True)
class BiasEntry:
    name: str  # parameter name in model.named_parameters()
    offset: int  # start index in theta
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class BiasLayout:
    """Where each selected bias lives inside the flat vector theta [P]."""

    entries: tuple[BiasEntry, ...]

    @property
    def size(self) -> int:
        return sum(e.numel for e in self.entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def hash(self) -> str:
        """Short stable digest of names and shapes; stores and checkpoints compare it."""
        blob = json.dumps([[e.name, list(e.shape)] for e in self.entries])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> list[dict]:
        return [{"name": e.name, "offset": e.offset, "shape": list(e.shape)} for e in self.entries]

    @classmethod
    def from_json(cls, rows: list[dict]) -> BiasLayout:
        return cls(tuple(BiasEntry(r["name"], int(r["offset"]), tuple(r["shape"])) for r in rows))

    def split(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta [..., P] -> {name: tensor [..., *shape]} (views, no copy)."""
        assert theta.shape[-1] == self.size, (
            f"theta has {theta.shape[-1]} entries, layout has {self.size}"
        )
        lead = theta.shape[:-1]
        return {
            e.name: theta[..., e.offset : e.offset + e.numel].reshape(*lead, *e.shape)
            for e in self.entries
        }

    def layer_index(self) -> torch.Tensor:
        """int64 [P]: which entry each element of theta belongs to."""
        return torch.cat(
            [torch.full((e.numel,), i, dtype=torch.long) for i, e in enumerate(self.entries)]
        )


def select_biases(
    model: nn.Module, include: list[str] | None = None, exclude: list[str] | None = None
) -> BiasLayout:
    """Layout of the parameters whose names match any include glob and no exclude glob.

    Default include is every `*.bias` (conv, linear and norm layers alike).
    """
    include = include or ["*.bias"]
    exclude = exclude or []
    entries, offset = [], 0
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in include) and not any(
            fnmatch.fnmatchcase(name, pat) for pat in exclude
        ):
            entries.append(BiasEntry(name, offset, tuple(p.shape)))
            offset += p.numel()
    if not entries:
        raise UserError(
            f"bias patterns include={include} exclude={exclude} match no parameter of the model"
        )
    return BiasLayout(tuple(entries))


def get_theta(model: nn.Module, layout: BiasLayout) -> torch.Tensor:
    """The model's current biases flattened to theta [P] (a detached copy)."""
    params = dict(model.named_parameters())
    return torch.cat([params[e.name].detach().reshape(-1) for e in layout.entries]).clone()


def set_theta(model: nn.Module, layout: BiasLayout, theta: torch.Tensor) -> None:
    """Write theta [P] into the model's bias parameters in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in layout.split(theta).items():
            params[name].copy_(value)
