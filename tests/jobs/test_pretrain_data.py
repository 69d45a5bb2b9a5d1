"""`hyperflow data info` and `hyperflow pretrain`: outputs, and clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def test_data_info_lists_domains_and_writes_a_contact_sheet(cli, tmp_path):
    sheet = tmp_path / "sheet.png"
    proc = cli("data", "info", "--dataset", "glyphs", "--sheet", str(sheet), "--json")
    info = json.loads(proc.stdout)
    splits = {d["split"] for d in info["domains"].values()}
    assert splits == {"base", "heldout"}
    assert all(d["classes"] >= 5 and d["images"] > 0 for d in info["domains"].values())
    assert sheet.stat().st_size > 10_000
    assert Image.open(sheet).size[0] > 200


def test_pretrain_writes_target_files(tiny_target):
    meta = json.loads((tiny_target / "target.json").read_text())
    assert meta["config"]["backbone"] == "test_resnet"
    assert meta["bias_size"] == sum(int(np.prod(e["shape"])) for e in meta["layout"])
    assert (tiny_target / "target.safetensors").stat().st_size > 0


def _folder(root, classes: int, per_class: int):
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((20, 20), 10 * c + i, np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--set", "target.backbone=no_such_net"], "no_such_net"),
        (["--set", "target.include=['*.qkv.bias']"], "qkv"),
        (["--set", "pretrain.epochz=2"], "pretrain.epochz"),
        (["--set", "data.dataset=nope"], "nope"),
        (["--set", "data.dataset=folder:/no/such/folder"], "/no/such/folder"),
    ],
)
def test_pretrain_bad_input(cli, tmp_path, argv, needle):
    out = tmp_path / "target"
    proc = cli("pretrain", "--config", "tiny", "--out", str(out), *argv, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert not out.exists()


def test_empty_folder_dataset(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = cli(
        "data",
        "info",
        "--dataset",
        f"folder:{tmp_path / 'empty'}",
        "--sheet",
        str(tmp_path / "s.png"),
        check=False,
    )
    assert proc.returncode == 2 and "empty" in proc.stderr
    assert not (tmp_path / "s.png").exists()


def test_too_few_images_and_too_many_ways(cli, tiny_target, tmp_path):
    small = _folder(tmp_path / "small", classes=6, per_class=3)  # 3 < shot + query
    proc = cli(
        "evaluate",
        "--config",
        "tiny",
        "--target",
        str(tiny_target),
        "--dataset",
        f"folder:{small}",
        "--methods",
        "direct",
        "--out",
        str(tmp_path / "e1"),
        check=False,
    )
    assert proc.returncode == 2 and "class0" in proc.stderr, proc.stderr
    proc = cli(
        "evaluate",
        "--config",
        "tiny",
        "--target",
        str(tiny_target),
        "--methods",
        "direct",
        "--set",
        "episodes.way=500",
        "--out",
        str(tmp_path / "e2"),
        check=False,
    )
    assert proc.returncode == 2 and "500" in proc.stderr, proc.stderr
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()
