"""prepare: the digits split, the torchvision loaders on fabricated IDX files, device-resident batches."""

import hashlib
import itertools
import struct
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits

from litpipe import paths
from litpipe.config import Params
from litpipe.data.prepared import Batches, Split, load_meta, load_split
from litpipe.errors import StageError
from litpipe.stages import prepare


def params_with(default_params: dict, **data: object) -> Params:
    return Params.model_validate(default_params).override({f"data.{k}": v for k, v in data.items()})


def digits_source() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as they ship (1 x 8 x 8 images of 0..16, and labels), read here: the reference
    the split is checked against, not litpipe's loader."""
    digits = load_digits()
    return torch.from_numpy(digits.images.astype("uint8")).unsqueeze(1), torch.from_numpy(digits.target)


def source_indices_of(splits: dict[str, Split], source: tuple[torch.Tensor, torch.Tensor]) -> dict[str, set[int]]:
    """For each split, the indices of the source samples its rows are, matched by image bytes and label.

    The digits hold a few identical images: a row takes one of the source indices not yet taken with
    its bytes and label, so a sample split twice runs out of indices instead of matching itself again.
    """
    untaken = defaultdict(list)
    for index, (image, label) in enumerate(zip(*source)):
        untaken[image.numpy().tobytes(), int(label)].append(index)
    taken = {}
    for name, split in splits.items():
        taken[name] = set()
        for row, (image, label) in enumerate(zip(split.x, split.y)):
            candidates = untaken[image.numpy().tobytes(), int(label)]
            assert candidates, f"{name} row {row} is not in the source, or is a source sample another row already is"
            taken[name].add(candidates.pop())
    return taken


def test_digits_split_is_stratified_complete_and_documented(workspace, default_params):
    params = params_with(default_params)
    prepare.run(params)
    meta = load_meta()
    splits = {name: load_split(name) for name in paths.SPLITS}
    assert sum(len(s.y) for s in splits.values()) == 1797
    assert meta["sizes"] == {name: len(s.y) for name, s in splits.items()}
    assert splits["test"].x.dtype == torch.uint8 and splits["test"].x.shape[1:] == (1, 8, 8)
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    # Stratified: every class's share in each split is within one sample of the overall share.
    total = torch.stack([torch.bincount(s.y, minlength=10) for s in splits.values()]).sum(0)
    for split in splits.values():
        expected = total * len(split.y) / 1797
        assert (torch.bincount(split.y, minlength=10) - expected).abs().max() <= 1.5
    # Every sample of the source is in exactly one split, and no two splits share one.
    taken = source_indices_of(splits, digits_source())
    assert set().union(*taken.values()) == set(range(1797))
    for first, second in itertools.combinations(paths.SPLITS, 2):
        assert not taken[first] & taken[second], (first, second)
    # Normalisation stats come from the training split alone.
    assert meta["mean"][0] == pytest.approx(splits["train"].x.double().mean().item())
    files = [file for name in paths.SPLITS for file in paths.split_files(name)]
    assert meta["sha256"] == {file.name: hashlib.sha256(file.read_bytes()).hexdigest() for file in files}


def test_split_depends_on_split_seed_only(workspace, default_params):
    prepare.run(params_with(default_params, split_seed=0))
    first = load_meta()["sha256"]
    prepare.run(Params.model_validate(default_params).override({"seed": 123, "data.split_seed": 0}))
    assert load_meta()["sha256"] == first  # the training seed does not move the split
    prepare.run(params_with(default_params, split_seed=1))
    assert load_meta()["sha256"]["test-x.npy"] != first["test-x.npy"]


def write_idx(path: Path, array: torch.Tensor) -> None:
    """torchvision's IDX layout: magic (0, 0, dtype 0x08=uint8, ndim), big-endian sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def fabricate(root: Path, folder: str, n_train: int = 200, n_test: int = 50) -> None:
    generator = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.mark.parametrize(
    ("dataset", "folder", "first_class"),
    [("mnist", "MNIST", "0 - zero"), ("fashion_mnist", "FashionMNIST", "T-shirt/top"), ("kmnist", "KMNIST", "o")],
)
def test_torchvision_datasets_through_the_real_classes(workspace, default_params, dataset, folder, first_class):
    fabricate(Path("mirror"), folder)
    prepare.run(params_with(default_params, dataset=dataset, root="mirror", val_fraction=0.2))
    meta = load_meta()
    assert meta["official_test_split"] is True
    assert meta["sizes"] == {"train": 160, "val": 40, "test": 50}  # torchvision's own test split is kept
    assert meta["input_shape"] == [1, 28, 28]
    assert meta["class_names"][0] == first_class
    assert load_split("test").y.tolist() == (torch.arange(50) % 10).tolist()


def test_missing_torchvision_data_is_a_clear_stage_error(workspace, default_params):
    # These machines cannot download: the loader must say where it looked instead of a traceback.
    with pytest.raises(StageError, match=r"MNIST is not under .*empty/MNIST/raw"):
        prepare.run(params_with(default_params, dataset="mnist", root="empty"))
    assert not paths.PREPARED.exists()


def test_batches_cover_each_sample_once_per_epoch_in_a_seeded_order():
    split = Split(torch.arange(10).view(10, 1, 1, 1).to(torch.uint8), torch.arange(10))
    batches = Batches(split, batch_size=4, shuffle=True, seed=3)
    assert len(batches) == 3
    epoch1 = torch.cat([y for _, y in batches])
    epoch2 = torch.cat([y for _, y in batches])
    assert sorted(epoch1.tolist()) == list(range(10)) == sorted(epoch2.tolist())
    assert not torch.equal(epoch1, epoch2)  # a new permutation each epoch
    again = Batches(split, batch_size=4, shuffle=True, seed=3)
    assert torch.equal(torch.cat([y for _, y in again]), epoch1)  # same seed, same order
    assert [y.tolist() for _, y in Batches(split, 4, shuffle=False)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_every_dataset_name_has_a_loader_and_only_prepare_imports_them():
    from litpipe.data import DATASETS
    from litpipe.data.loaders import LOADERS

    assert list(LOADERS) == list(DATASETS)


def test_train_images_is_a_sample_of_the_training_split_in_proportion_to_its_classes(default_params):
    """data.train_images (learning curves, quick runs): that many of the training images, each class in its
    share; the validation and test splits stay as they are; a count the split cannot give stops prepare."""
    from litpipe.data import digits

    params = params_with(default_params)
    source = digits.load(params.data)
    full = prepare.split(source, params)
    sampled = prepare.split(source, params_with(default_params, train_images=100))
    kept = sampled["train"][1]
    assert len(kept) == 100 and set(kept.tolist()) <= set(full["train"][1].tolist())
    shares = torch.bincount(full["train"][2], minlength=10) * 100 / len(full["train"][2])
    assert (torch.bincount(sampled["train"][2], minlength=10) - shares).abs().max() < 1
    for split in ("val", "test"):
        assert torch.equal(sampled[split][1], full[split][1])
    everything = len(full["train"][1])
    whole = prepare.split(source, params_with(default_params, train_images=everything))
    assert torch.equal(whole["train"][1], full["train"][1])
    for n in (9, everything + 1):
        said = rf"data.train_images {n}: the training split holds {everything} images of 10 classes; choose from 10 to"
        with pytest.raises(StageError, match=said):
            prepare.split(source, params_with(default_params, train_images=n))


def test_synthetic_cifar10_has_cifar10s_shape_and_colour(monkeypatch, default_params):
    from litpipe.data import synthetic

    monkeypatch.setattr(synthetic, "CIFAR_TRAIN_IMAGES", 1000)
    monkeypatch.setattr(synthetic, "TEST_IMAGES", 200)
    source = synthetic.load_cifar10(params_with(default_params, dataset="synthetic_cifar10", val_fraction=0.2).data)
    assert source.images.shape == (800, 3, 32, 32) and source.images.dtype == torch.uint8
    assert (len(source.val_labels), len(source.test_labels)) == (200, 200)
    channels = source.images.float().mean(dim=(2, 3))  # each image's mean colour: not grey
    assert (channels.max(dim=1).values - channels.min(dim=1).values).median() > 20


def test_synthetic_validation_images_come_from_held_out_originals(monkeypatch, default_params):
    """synthetic_mnist's validation split is drawn from digits that no training image was drawn from (as the
    test split is), not carved out of warped copies of the training digits; the sizes stay MNIST's."""
    from litpipe.data import synthetic

    monkeypatch.setattr(synthetic, "TRAIN_IMAGES", 2000)
    monkeypatch.setattr(synthetic, "TEST_IMAGES", 500)
    drawn = []  # the originals each split's images are drawn from, in order: train, validation, test
    draw = synthetic.draw
    monkeypatch.setattr(
        synthetic, "draw", lambda originals, *rest, **kw: drawn.append(originals) or draw(originals, *rest, **kw)
    )
    params = params_with(default_params, dataset="synthetic_mnist", val_fraction=0.15)
    source = synthetic.load(params.data)
    assert (len(source.labels), len(source.val_labels), len(source.test_labels)) == (1700, 300, 500)
    train, val, test = ({image.numpy().tobytes() for image in originals} for originals in drawn)
    assert not train & val and not train & test and not val & test
    splits = prepare.split(source, params)  # prepare keeps the official validation split as it is
    assert torch.equal(splits["val"][2], source.val_labels) and splits["val"][0] is source.val_images
    assert torch.equal(splits["train"][1], torch.arange(1700))
