import numpy as np
import pytest
from PIL import Image

from hyperflow.data.folder import load_folder
from hyperflow.data.registry import load_dataset
from hyperflow.errors import UserError


def _save(path, mode, value, size=(20, 12), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"L": value, "RGB": (value, 0, 0), "RGBA": (value, value, value, 255)}[mode]
    img = Image.new(mode, size, color)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def flat(tmp_path):
    root = tmp_path / "pets"
    _save(root / "cat" / "a.png", "L", 200)
    _save(root / "cat" / "b.png", "RGB", 250)
    _save(root / "dog" / "c.jpg", "RGB", 90, fmt="JPEG")
    _save(root / "dog" / "d.PNG", "RGBA", 30)
    (root / "dog" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    return root


def test_flat_layout_is_one_domain_named_after_the_folder(flat):
    ds = load_folder(flat, image_size=16, channels=1)
    assert ds.names() == ["pets"] and ds.spec == f"folder:{flat}"
    d = ds.domains["pets"]
    assert d.split == "heldout" and d.family == "clean"
    assert d.class_names == ["cat", "dog"] and d.labels.tolist() == [0, 0, 1, 1]
    assert d.images.shape == (4, 1, 16, 16) and d.images.dtype == np.uint8
    assert abs(int(d.images[0, 0, 8, 8]) - 200) <= 1  # grey kept
    assert abs(int(d.images[2, 0, 8, 8]) - round(0.299 * 90)) <= 3  # JPEG red -> luma


def test_nested_layout_and_rgb(tmp_path):
    for dom in ("dom_b", "dom_a"):
        for cls in ("x", "y", "z"):
            _save(tmp_path / dom / cls / "1.png", "L", 100)
            _save(tmp_path / dom / cls / "2.jpeg", "RGB", 180, fmt="JPEG")
    (tmp_path / "README.txt").write_text("files next to domains are ignored")
    ds = load_dataset(f"folder:{tmp_path}", image_size=8, channels=3)
    assert ds.names() == ["dom_a", "dom_b"]
    d = ds.domains["dom_a"]
    assert d.images.shape == (6, 3, 8, 8) and d.class_names == ["x", "y", "z"]
    assert (d.images[0, :, 4, 4] == 100).all()  # grey -> equal RGB channels
    red = d.images[1, :, 4, 4].astype(int)
    assert red[0] > 150 and red[1] < 30 and red[2] < 30


def test_aspect_ratio_kept_by_padding_with_the_border_colour(tmp_path):
    img = np.full((10, 40), 255, dtype=np.uint8)  # wide white image, black bar in the middle
    img[:, 18:22] = 0
    (tmp_path / "c").mkdir()
    Image.fromarray(img).save(tmp_path / "c" / "bar.png")
    d = load_folder(tmp_path, image_size=20).domains[tmp_path.name]
    out = d.images[0, 0]
    assert (out[0] > 240).all() and (out[-1] > 240).all()  # padding continues the white
    assert out[10, 10] < 60  # the bar is still in the centre, still thin
    assert out[10, 4] > 240 and out[10, 16] > 240


def test_transparency_composited_over_white_and_palette(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent
    (tmp_path / "c").mkdir()
    rgba.save(tmp_path / "c" / "clear.png")
    Image.new("P", (8, 8), 3).save(tmp_path / "c" / "pal.png")
    d = load_folder(tmp_path, image_size=8).domains[tmp_path.name]
    assert (d.images[0] == 255).all() and d.images.shape == (2, 1, 8, 8)


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="nope"):
        load_folder(tmp_path / "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UserError, match=str(tmp_path)):
        load_folder(tmp_path)


def test_unreadable_image_is_named(flat):
    (flat / "cat" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="broken.png"):
        load_folder(flat)
    (flat / "cat" / "broken.png").unlink()
    (flat / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="notes.txt"):
        load_folder(flat)


def test_mixed_layout_is_an_error(flat):
    _save(flat / "domain_like" / "cls" / "e.png", "L", 1)
    with pytest.raises(UserError, match="mixes"):
        load_folder(flat)
