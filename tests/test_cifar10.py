"""prepare on CIFAR-10 through torchvision's real CIFAR10 class, on batch files fabricated in its layout."""

import http.client
import pickle
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from litpipe.config import Params
from litpipe.data.prepared import load_meta, load_split
from litpipe.data.torchvision_sets import load_cifar10
from litpipe.errors import StageError
from litpipe.stages import prepare

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = {"train": 3, "test": 2}  # images of each class in each batch file


def cifar10_params(default_params: dict, root: Path) -> Params:
    return Params.model_validate(default_params).override({"data.dataset": "cifar10", "data.root": str(root)})


def fabricate(root: Path) -> dict[str, dict]:
    """The files of cifar-10-python.tar.gz as torchvision reads them: each batch a pickled dict with
    "data" (uint8 N x 3072: the R, then G, then B plane of a 32 x 32 image, row by row) and "labels";
    batches.meta's "label_names". Returns the batches by file name.

    The official files were pickled by Python 2, whose str keys torchvision's `encoding="latin1"` reads
    as str; Python 3 bytes keys (b"data") stay bytes, and torchvision fails with KeyError: 'data'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.tile(np.arange(len(CLASSES)), PER_CLASS["test" if name == "test_batch" else "train"])
        data = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        batches[name] = {"batch_label": name, "data": data, "labels": labels.tolist()}
    meta = {"label_names": CLASSES, "num_cases_per_batch": len(CLASSES) * PER_CLASS["train"]}
    for name, contents in {**batches, "batches.meta": meta}.items():
        (folder / name).write_bytes(pickle.dumps(contents, protocol=2))
    return batches


def test_cifar10_loader_reads_the_batches_channels_first(tmp_path, default_params):
    batches = fabricate(tmp_path / "cifar")
    source = load_cifar10(cifar10_params(default_params, tmp_path / "cifar").data)
    assert source.class_names == CLASSES and source.pixel_max == 255
    assert source.images.dtype == torch.uint8 and tuple(source.images.shape) == (150, 3, 32, 32)
    assert source.labels.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    test = batches["test_batch"]
    assert source.test_images.numpy().tobytes() == test["data"].tobytes()  # the rows, in C x H x W order
    assert source.test_labels.tolist() == test["labels"]


def test_cifar10_through_prepare(workspace, default_params):
    batches = fabricate(Path("mirror"))
    prepare.run(cifar10_params(default_params, Path("mirror")))
    meta = load_meta()
    assert meta["class_names"] == CLASSES and meta["num_classes"] == 10
    assert meta["input_shape"] == [3, 32, 32]
    assert meta["official_test_split"] is True
    n_train = sum(len(batch["labels"]) for name, batch in batches.items() if name != "test_batch")
    assert meta["sizes"]["train"] + meta["sizes"]["val"] == n_train
    test, fabricated = load_split("test"), batches["test_batch"]
    assert test.y.tolist() == fabricated["labels"]
    assert test.x.shape == (len(fabricated["labels"]), 3, 32, 32)
    np.testing.assert_array_equal(test.x[7].numpy(), fabricated["data"][7].reshape(3, 32, 32))
    assert test.x.numpy().tobytes() == fabricated["data"].tobytes()
    # The training images are the training batches' rows, each once.
    train_rows = {row.tobytes() for name, batch in batches.items() if name != "test_batch" for row in batch["data"]}
    prepared = [image.numpy().tobytes() for name in ("train", "val") for image in load_split(name).x]
    assert len(prepared) == len(set(prepared)) and set(prepared) == train_rows


def test_missing_cifar10_is_a_one_line_stage_error_that_leaves_nothing(workspace, default_params):
    # These machines cannot download: the loader must say where it looked, and a failed download
    # must leave neither the folders it made nor a partial cifar-10-python.tar.gz.
    before = sorted(Path().rglob("*"))
    with pytest.raises(StageError, match=r"^CIFAR10 is not under data/raw/cifar-10-batches-py ") as error:
        prepare.run(cifar10_params(default_params, Path("data/raw")))
    assert "\n" not in str(error.value)
    assert sorted(Path().rglob("*")) == before  # not even data/ or data/raw, which torchvision makes first


class Download:
    """A stand-in for urllib's response to torchvision's HEAD and GET requests: the first chunk of the
    archive, then `failure` (raised as the connection's fate), or the end of a file too short for its MD5."""

    def __init__(self, request: urllib.request.Request, failure: Exception | None, archive: Path) -> None:
        self.url, self.length = request.full_url, 1000
        self.failure, self.archive, self.reads = failure, archive, 0
        self.written: list[bool] = []  # whether the partial archive was on disk when the download failed

    def __enter__(self) -> "Download":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 1:
            return b"\x1f\x8b" + bytes(98)
        self.written.append(self.archive.exists())
        if self.failure is not None:
            raise self.failure
        return b""


@pytest.mark.parametrize(
    "failure",
    [http.client.IncompleteRead(b"", 900), ConnectionResetError(104, "Connection reset by peer"), None],
    ids=["incomplete", "reset", "corrupt"],
)
def test_a_failed_cifar10_download_leaves_no_partial_archive(workspace, default_params, monkeypatch, failure):
    responses: list[Download] = []

    def urlopen(request: urllib.request.Request) -> Download:
        responses.append(Download(request, failure, Path("data/raw/cifar-10-python.tar.gz")))
        return responses[-1]

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(StageError, match=r"^CIFAR10 is not under data/raw/cifar-10-batches-py ") as error:
        prepare.run(cifar10_params(default_params, Path("data/raw")))
    assert "\n" not in str(error.value)
    assert any(written for response in responses for written in response.written)  # there was one to remove
    assert list(Path().rglob("*")) == []
