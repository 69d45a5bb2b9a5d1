"""`hyperflow data info` and `hyperflow pretrain`: outputs, and clear errors on bad input.

The commands run in this process (`jobs.cli.main`: no interpreter start-up per case); a refused
one must exit 2 before any training or Ray work starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import jobs.evaluate
import jobs.pretrain
from jobs.cli import main


@pytest.fixture
def refused(monkeypatch, capsys):
    """Run `hyperflow ARGV` in this process; it must exit 2 before training or Ray starts.
    Returns stderr."""

    def never(*args, **kwargs):
        raise AssertionError("work started before the input was refused")

    monkeypatch.setattr(jobs.pretrain, "pretrain_rank", never)
    monkeypatch.setattr(jobs.evaluate, "connect", never)

    def run(*argv: str) -> str:
        code = main(list(argv))
        err = capsys.readouterr().err
        assert code == 2, err
        return err

    return run


def test_data_info_lists_domains_and_writes_a_contact_sheet(tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    assert main(["data", "info", "--dataset", "glyphs", "--sheet", str(sheet), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
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
def test_pretrain_bad_input(refused, tmp_path, argv, needle):
    out = tmp_path / "target"
    assert needle in refused("pretrain", "--config", "tiny", "--out", str(out), *argv)
    assert not out.exists()


def test_empty_folder_dataset(refused, tmp_path):
    (tmp_path / "empty").mkdir()
    err = refused(
        "data",
        "info",
        "--dataset",
        f"folder:{tmp_path / 'empty'}",
        "--sheet",
        str(tmp_path / "s.png"),
    )
    assert "empty" in err
    assert not (tmp_path / "s.png").exists()


def test_too_few_images_and_too_many_ways(refused, tiny_target, tmp_path):
    small = _folder(tmp_path / "small", classes=6, per_class=3)  # 3 < shot + query
    err = refused(
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
    )
    assert "class0" in err, err
    err = refused(
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
    )
    assert "500" in err, err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()
