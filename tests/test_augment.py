"""Random flips and crops of training images (litpipe.models.augment), and the fit that uses them."""

import pytest
import torch
import torch.nn.functional as F

from litpipe import paths
from litpipe.config import Params
from litpipe.data.prepared import load_meta, load_split
from litpipe.errors import ConfigError, StageError
from litpipe.io import read_json, write_json
from litpipe.models import lit_model
from litpipe.models.augment import augment, random_crop, random_flip
from litpipe.models.lit_model import LitModel
from litpipe.stages import fit, sanity
from litpipe.training import build_model

CHANNELS = pytest.mark.parametrize("channels", [1, 3])


def images(channels: int, n: int = 64, side: int = 8) -> torch.Tensor:
    """Random uint8 images without zeros (the padding): no two windows of one, or its mirror image, are
    alike, so each output says which transformation made it."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1, 256, (n, channels, side, side), dtype=torch.uint8, generator=generator)


@CHANNELS
def test_flip_mirrors_some_samples_and_leaves_the_others_untouched(channels):
    x = images(channels)
    torch.manual_seed(0)
    out = random_flip(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    mirrored = [bool(torch.equal(out[i], x[i].flip(-1))) for i in range(len(x))]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(len(x))]
    assert all(m != k for m, k in zip(mirrored, kept))  # each sample exactly one of the two
    assert 10 < sum(mirrored) < len(x) - 10


def crop_offsets(x: torch.Tensor, out: torch.Tensor, padding: int) -> list[tuple[int, int]]:
    """For each sample, the offset of the window of its zero-padded image that `out` holds."""
    padded = F.pad(x, (padding,) * 4)
    height, width = x.shape[-2:]
    offsets = []
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + height, dx : dx + width])
        ]
        assert len(found) == 1, f"sample {i}: windows {found}"
        offsets.extend(found)
    return offsets


@CHANNELS
@pytest.mark.parametrize("padding", [1, 2, 7])
def test_crop_takes_a_window_of_the_padded_image_at_a_random_offset(channels, padding):
    x = images(channels, n=256)
    torch.manual_seed(0)
    out = random_crop(x, padding)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    offsets = crop_offsets(x, out, padding)
    assert len(set(offsets)) > min(10, (2 * padding + 1) ** 2 // 2)
    assert {dy for dy, _ in offsets} == {dx for _, dx in offsets} == set(range(2 * padding + 1))


@CHANNELS
def test_flip_then_crop(channels):
    x = images(channels)
    torch.manual_seed(0)
    out = augment(x, flip=True, crop=2)
    torch.manual_seed(0)
    flipped = random_flip(x)
    crop_offsets(flipped, out, 2)  # the crop of the flipped batch, drawn after the flips


def test_off_is_the_identity_and_draws_no_random_numbers():
    x = images(3)
    before = torch.get_rng_state()
    assert augment(x, flip=False, crop=0) is x
    assert torch.equal(torch.get_rng_state(), before)


def test_augmentation_is_reproducible_under_a_seed():
    x = images(3)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(augment(x, flip=True, crop=2))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.needs_gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augmentation_runs_on_the_batchs_device():
    x = images(3)
    torch.manual_seed(0)
    out = augment(x.cuda(), flip=True, crop=2)
    assert out.device.type == "cuda" and out.dtype == torch.uint8
    # Drawn from the GPU's generator: the CPU's is untouched.
    torch.manual_seed(0)
    before = torch.get_rng_state()
    augment(x.cuda(), flip=True, crop=2)
    assert torch.equal(torch.get_rng_state(), before)


def fitted(params: Params) -> tuple[dict, str]:
    """Fit with the given params; the metrics and the per-epoch history it wrote."""
    write_json(paths.SEARCH_BEST, {"params": {}})
    fit.run(params)
    return read_json(paths.FIT_METRICS), paths.FIT_HISTORY.read_text()


@pytest.fixture
def training_images(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every training piece the model steps on, as (images given, images trained on): the module's own
    augment call is watched, and still does the work."""
    seen = []

    def watched(x: torch.Tensor, flip: bool, crop: int) -> torch.Tensor:
        out = augment(x, flip, crop)
        seen.append((x.clone(), out.clone()))
        return out

    monkeypatch.setattr(lit_model, "augment", watched)
    return seen


def changed(pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(not torch.equal(given, trained) for given, trained in pieces)


@pytest.mark.slow
def test_a_fit_with_augmentation_trains_and_records_it(digits, training_images):
    params = digits.override({"train.max_epochs": 3, "train.accelerator": "cpu"})
    fitted(params)
    assert training_images and changed(training_images) == 0  # off: every step on the stored images
    training_images.clear()
    augmented = params.override({"train.augment_flip": True, "train.augment_crop": 1})
    metrics, history = fitted(augmented)
    # On: the steps trained on flipped and cropped images (each piece of 64 digits, all unchanged by chance:
    # below 2**-64).
    assert changed(training_images) == len(training_images) > 0
    assert metrics["best_val_acc"] > 0.5  # ten classes: it learned
    model = LitModel.from_checkpoint(paths.BEST_CKPT)
    assert (model.hparams.augment_flip, model.hparams.augment_crop) == (True, 1)
    # Each piece draws its own numbers before its step: the same numbers however many pieces a batch holds.
    assert fitted(augmented.override({"train.steps_per_call": 1})) == (metrics, history)


def test_the_overfit_check_trains_on_the_stored_batch_and_the_other_checks_augment(digits, training_images):
    """sanity.run with augmentation on: the overfit steps see its fixed batch exactly as stored (a batch that
    changes every step cannot be memorised); fast_dev_run and the profiler train as the fit would, augmented."""
    params = digits.override(
        {
            "train.augment_flip": True,
            "train.augment_crop": 2,
            "sanity.overfit_epochs": 3,
            "sanity.overfit_max_loss": 100.0,  # three steps: the check passes, the point is what they train on
        }
    )
    sanity.run(params)
    batch = load_split("train").head(params.train.batch_size).x
    overfit = [(given, trained) for given, trained in training_images if torch.equal(given, batch)]
    others = [(given, trained) for given, trained in training_images if not torch.equal(given, batch)]
    assert len(overfit) == params.sanity.overfit_epochs  # one step per epoch on the one batch
    assert changed(overfit) == 0
    assert others and changed(others) == len(others)


def test_a_crop_padding_as_large_as_the_image_fails_naming_the_param(digits):
    meta = load_meta()
    assert min(meta["input_shape"][-2:]) == 8
    build_model(digits.override({"train.augment_crop": 7}), meta)
    with pytest.raises(StageError, match=r"^train\.augment_crop: 8 pixels .* use at most 7") as error:
        build_model(digits.override({"train.augment_crop": 8}), meta)
    assert "\n" not in str(error.value)


def test_the_search_can_tune_augmentation(digits):
    space = {"train.augment_crop": [0, 2], "train.augment_flip": [False, True]}
    assert digits.override({"search.space": space}).search.dimensions().keys() == space.keys()
    with pytest.raises(ConfigError, match="search.space.train.augment_crop"):
        digits.override({"search.space": {"train.augment_crop": [0, 2000]}})
