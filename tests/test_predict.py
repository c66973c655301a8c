"""`litpipe predict`: new image files through a trained model, prepared as the training images were; the classes
it writes are the model's on the same images from the prepared split; bad files and arguments in one line."""

import csv
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from litpipe import paths
from litpipe.data.prepared import load_meta, load_split
from litpipe.io import write_json
from litpipe.models.lit_model import LitModel
from litpipe.stages import fit

from .helpers import tool_env

SHOWN = 24  # test images written as files


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["litpipe", "predict", *args], env=tool_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture
def trained(digits, tmp_path):
    """A model fitted on digits, and SHOWN of the test images as 8-bit PNG files in new/ (digits' 0..16 pixels
    spread over 0..255, as an image file holds them), the last few in colour and at twice the size."""
    write_json(paths.SEARCH_BEST, {"params": {}})
    fit.run(digits.override({"train.max_epochs": 3}))
    test, pixel_max = load_split("test"), load_meta()["pixel_max"]
    folder = tmp_path / "new"
    (folder / "more").mkdir(parents=True)
    for index in range(SHOWN):
        grey = (test.x[index, 0].numpy().astype(np.float64) * 255 / pixel_max).round().astype(np.uint8)
        image = Image.fromarray(grey)
        if index >= SHOWN - 4:  # RGB, 16 x 16 (each pixel doubled): read back as grey and resized to 8 x 8
            image = image.convert("RGB").resize((16, 16), Image.NEAREST)
        image.save(folder / ("more" if index % 2 else "") / f"image-{index:02d}.png")
    return folder, test


def rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path)))


def test_new_images_get_the_classes_the_model_gives_the_same_images(trained):
    folder, test = trained
    result = predict(str(folder), "--out", "out/predictions.csv", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    written = rows("out/predictions.csv")
    assert [row["file"] for row in written] == sorted(str(path) for path in folder.rglob("*.png"))
    model = LitModel.from_checkpoint(paths.BEST_CKPT)
    with torch.no_grad():
        probabilities = model(test.x[:SHOWN]).softmax(dim=1)
    names = load_meta()["class_names"]
    for row in written:
        index = int(row["file"][-6:-4])
        if index >= SHOWN - 4:
            continue  # resized from 16 x 16: close to, not exactly, the original pixels
        ranked = probabilities[index].argsort(descending=True)
        assert [row["predicted"], row["top2"], row["top3"]] == [names[k] for k in ranked[:3].tolist()]
        assert float(row["probability"]) == pytest.approx(probabilities[index, ranked[0]].item(), abs=1e-6)
        assert float(row["probability2"]) == pytest.approx(probabilities[index, ranked[1]].item(), abs=1e-6)
    assert list(written[0]) == ["file", "predicted", "probability", "top2", "probability2", "top3", "probability3"]


def test_an_unreadable_file_stops_the_run_in_one_line_unless_skipped(trained):
    folder, _ = trained
    (folder / "notes.png").write_text("not an image")
    result = predict(str(folder), "--out", "predictions.csv")
    assert result.returncode == 1
    assert f"{folder / 'notes.png'}: cannot be read as an image" in result.stderr
    assert not (paths.PARAMS.parent / "predictions.csv").exists()  # nothing half-written

    result = predict(str(folder), str(folder / "image-00.png"), "--out", "predictions.csv", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert f"skipped {folder / 'notes.png'}: cannot be read" in result.stderr
    assert len(rows("predictions.csv")) == SHOWN + 1  # a file named twice is classified twice


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere"], "litpipe: nowhere: no such file or folder"),
        (["--top-k", "0", "."], "litpipe: --top-k must be at least 1 (got 0)"),
        (["params.yaml", "--checkpoint", "none.ckpt"], "predict failed: none.ckpt: not found"),
    ],
)
def test_bad_arguments_are_one_line(digits, args, message):
    result = predict(*args)
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
