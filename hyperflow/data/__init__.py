"""Datasets, image shifts and few-shot episodes.

dataset = load_dataset("glyphs")                 # or "folder:PATH"
sampler = EpisodeSampler(dataset, dataset.names("base"), way=5, shot=5, query=15, seed=0)
episode = build_episode(dataset, sampler.spec(0))
"""

from hyperflow.data.contact import contact_sheet, dataset_info
from hyperflow.data.dataset import Dataset, Domain
from hyperflow.data.episodes import (
    Episode,
    EpisodeSampler,
    EpisodeSpec,
    build_episode,
    sample_episode,
    sample_variable_episode,
)
from hyperflow.data.glyphs import GlyphParams, load_glyphs
from hyperflow.data.registry import DATASETS, load_dataset
from hyperflow.data.shifts import COLLECTION_SHIFTS, SHIFTS, ShiftParams, apply_shift

__all__ = [
    "COLLECTION_SHIFTS",
    "DATASETS",
    "SHIFTS",
    "Dataset",
    "Domain",
    "Episode",
    "EpisodeSampler",
    "EpisodeSpec",
    "GlyphParams",
    "ShiftParams",
    "apply_shift",
    "build_episode",
    "contact_sheet",
    "dataset_info",
    "load_dataset",
    "load_glyphs",
    "sample_episode",
    "sample_variable_episode",
]
