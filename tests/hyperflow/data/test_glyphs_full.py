from hyperflow.data.contact import dataset_info
from hyperflow.data.glyphs import load_glyphs


def test_full_default_build(tmp_path):
    """The real default benchmark (~20 s): class counts the design asks for."""
    ds = load_glyphs(cache_dir=tmp_path)
    for name in ds.names("base"):
        assert ds.domains[name].num_classes >= 40, name
    for name in ds.names("heldout"):
        assert ds.domains[name].num_classes >= 20, name
    assert all(len(d.images) == 20 * d.num_classes for d in ds.domains.values())
    info = dataset_info(ds)
    assert info["image_shape"] == [1, 32, 32] and len(info["domains"]) == len(ds.domains)
