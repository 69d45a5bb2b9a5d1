import numpy as np
import pytest
from PIL import Image

from hyperflow.data import registry
from hyperflow.data.contact import contact_sheet, dataset_info
from hyperflow.data.dataset import Dataset
from hyperflow.data.glyphs import GlyphParams
from hyperflow.data.registry import DATASETS, load_dataset
from hyperflow.errors import UserError


def test_unknown_spec_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"'imagenet'.*glyphs.*folder:PATH"):
        load_dataset("imagenet")


@pytest.mark.parametrize("spec", ["glyphs:extra", "glyphs-wide:x", "folder:", "folder"])
def test_malformed_specs(spec):
    with pytest.raises(UserError, match="glyphs|folder"):
        load_dataset(spec)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registry_entry_loads_through_load_dataset(name, tmp_path, monkeypatch):
    # glyphs with a tiny parameter set: this tests the wiring, test_glyphs tests the build
    tiny = GlyphParams(max_classes=2, images_per_class=1)
    real = registry.load_glyphs
    monkeypatch.setattr(registry, "load_glyphs", lambda *a, **k: real(*a, **k, params=tiny))
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("L", (5, 5), 9).save(tmp_path / "imgs" / "a" / "x.png")
    spec = {"folder": f"folder:{tmp_path / 'imgs'}"}.get(name, name)
    ds = load_dataset(spec, image_size=12, channels=3, cache_dir=tmp_path / "cache")
    assert isinstance(ds, Dataset) and ds.spec == spec and ds.names()
    assert all(d.images.shape[1:] == (3, 12, 12) for d in ds.domains.values())


def test_bad_image_size_and_channels():
    with pytest.raises(UserError, match="channels"):
        load_dataset("glyphs", channels=2)
    with pytest.raises(UserError, match="image_size"):
        load_dataset("glyphs", image_size=0)


def test_names_filters_by_split(tiny_dataset):
    assert tiny_dataset.names() == ["alpha", "beta", "gamma"]
    assert tiny_dataset.names("heldout") == ["gamma"]
    with pytest.raises(UserError, match="'test'"):
        tiny_dataset.names("test")


def test_contact_sheet_and_info(tiny_dataset, tmp_path):
    path = contact_sheet(tiny_dataset, tmp_path / "sheet.png", classes_per_domain=3)
    img = np.asarray(Image.open(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 10  # not blank
    info = dataset_info(tiny_dataset)
    assert info["image_shape"] == [1, 32, 32]
    assert info["domains"]["gamma"] == {
        "split": "heldout",
        "family": "clean",
        "classes": 20,
        "images": 140,
    }
