"""A researcher's own data: image folders through prepare, a split bigger than memory through the loader,
and raw data under DVC from `dvc add` to a fresh clone that pulls everything and re-runs nothing."""

import json
import math
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from litpipe import paths
from litpipe.config import Params
from litpipe.data.prepared import load_meta, load_split
from litpipe.errors import StageError
from litpipe.stages import prepare

from .helpers import copy_repo, copy_workspace, missing, require_tool, run, tool_env

CLASSES = ("circle", "square", "triangle")


def shape_image(kind: str, size: int, rng: np.random.Generator, colour: bool = True) -> np.ndarray:
    """A filled shape on a noisy background, placed at random: a class a small model learns from pixels."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    r = rng.uniform(0.2, 0.3) * size
    mask = {
        "circle": (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2,
        "square": (abs(yy - cy) <= r * 0.8) & (abs(xx - cx) <= r * 0.8),
        "triangle": (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - cy + r) / 2),
    }[kind]
    base = rng.integers(0, 70, (size, size, 3))
    base[mask] = rng.integers(150, 256, 3)  # one random colour per image: the shape, not the colour, is the class
    image = base.astype(np.uint8)
    return image if colour else image.mean(axis=2).astype(np.uint8)


def write_folder(root: Path, per_class: int, size: int = 24, seed: int = 0, **options) -> None:
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            Image.fromarray(shape_image(kind, size, rng, **options)).save(root / kind / f"{kind}-{index:03d}.png")


def params_for(default_params: dict, **data: object) -> Params:
    return Params.model_validate(default_params).override({f"data.{k}": v for k, v in data.items()})


# --- the folder dataset ------------------------------------------------------------------------------------


def test_a_folder_of_colour_images_is_prepared_with_its_class_names(workspace, default_params):
    write_folder(Path("images"), per_class=20)
    (Path("images/circle/notes.txt")).write_text("not an image")  # skipped, as are hidden files and folders
    (Path("images/.ipynb_checkpoints")).mkdir()
    Image.fromarray(shape_image("square", 24, np.random.default_rng(9))).save("images/square/.hidden.png")
    prepare.run(params_for(default_params, dataset="folder", root="images"))
    meta = load_meta()
    assert meta["class_names"] == list(CLASSES) and meta["input_shape"] == [3, 24, 24]
    assert sum(meta["sizes"].values()) == 60 and meta["official_test_split"] is False
    splits = {name: load_split(name) for name in paths.SPLITS}
    # Every split row is one of the files, pixel for pixel, with its directory's label; none is used twice.
    files = {
        np.asarray(Image.open(file)).transpose(2, 0, 1).tobytes(): CLASSES.index(file.parent.name)
        for file in Path("images").glob("*/[!.]*.png")
    }
    rows = [(x.numpy().tobytes(), int(y)) for split in splits.values() for x, y in zip(split.x, split.y)]
    assert sorted(rows) == sorted(files.items())


def test_an_official_test_split_grey_images_and_resizing(workspace, default_params):
    write_folder(Path("images/train"), per_class=12, size=30, colour=False)
    write_folder(Path("images/test"), per_class=4, size=30, seed=1, colour=False)
    Image.fromarray(shape_image("circle", 50, np.random.default_rng(2), colour=False)[:, :40]).save(
        "images/train/circle/wide.png"  # 40 wide, 50 high: resized to 16 across, then cropped about the centre
    )
    prepare.run(params_for(default_params, dataset="folder", root="images", image_size=16))
    meta = load_meta()
    assert meta["input_shape"] == [1, 16, 16] and meta["official_test_split"] is True
    assert meta["sizes"]["test"] == 12 and meta["sizes"]["train"] + meta["sizes"]["val"] == 37
    test = load_split("test")
    expected = torch.from_numpy(np.array(Image.open("images/test/square/square-000.png")))[None, None].float()
    resized = torch.nn.functional.interpolate(expected, size=(16, 16), mode="bilinear", antialias=True)
    assert (test.x[4, 0].int() - resized[0, 0].round().int()).abs().max() <= 1  # the first square, resized


def test_sixteen_bit_and_palette_images_are_read_at_eight_bits(workspace, default_params):
    write_folder(Path("images"), per_class=6, size=8, colour=False)
    grey = np.full((8, 8), 40000, dtype=np.uint16)
    Image.fromarray(grey).save("images/circle/deep.png")  # a 16-bit PNG: PIL's convert("L") would clip it to 255
    prepare.run(params_for(default_params, dataset="folder", root="images"))
    x = torch.cat([load_split(name).x for name in paths.SPLITS])
    assert (x.flatten(1) == round(40000 / 257)).all(dim=1).sum() == 1


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # its header intact, its pixels cut


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (
            lambda root: (root / "square/square-001.png").write_bytes(b"\x89PNG not really"),
            "square-001.png: not an image",
        ),
        (lambda root: truncate(root / "square/square-001.png"), "square-001.png: cannot be decoded"),
        (
            lambda root: Image.new("RGB", (30, 24)).save(root / "circle/odd.png"),
            r"odd.png is 30x24 pixels, .* is 24x24: set data.image_size",
        ),
        (lambda root: shutil.rmtree(root / "triangle") or shutil.rmtree(root / "square"), "1 class directories"),
        (lambda root: [file.unlink() for file in (root / "circle").iterdir()], r"circle: no image files"),
        (lambda root: shutil.rmtree(root), "is not a directory"),
    ],
    ids=["not-an-image", "truncated", "other-size", "one-class", "empty-class", "no-folder"],
)
def test_bad_image_folders_are_one_line_and_change_nothing(workspace, default_params, damage, said):
    write_folder(Path("images"), per_class=6)
    params = params_for(default_params, dataset="folder", root="images")
    prepare.run(params)
    before = {file: file.read_bytes() for file in paths.PREPARED.iterdir()}
    damage(Path("images"))
    with pytest.raises(StageError, match=said) as raised:
        prepare.run(params)
    assert "\n" not in str(raised.value)
    assert {file: file.read_bytes() for file in paths.PREPARED.iterdir()} == before  # the last data, whole
    assert sorted(path.name for path in paths.PREPARED.parent.iterdir()) == ["prepared"]  # no temporary left


def test_a_test_class_the_training_data_lacks_is_refused(workspace, default_params):
    write_folder(Path("images/train"), per_class=6)
    write_folder(Path("images/test"), per_class=2)
    (Path("images/test/hexagon")).mkdir()
    with pytest.raises(StageError, match=r"\['hexagon'\] are not among the training classes"):
        prepare.run(params_for(default_params, dataset="folder", root="images"))


def test_a_class_too_small_to_split_is_one_line(workspace, default_params):
    write_folder(Path("images"), per_class=6)
    for file in sorted(Path("images/circle").iterdir())[1:]:
        file.unlink()
    with pytest.raises(StageError, match="cannot split the data in proportion to its classes"):
        prepare.run(params_for(default_params, dataset="folder", root="images"))


def test_a_root_outside_data_raw_is_flagged_as_untracked(workspace, default_params, caplog):
    write_folder(Path("images"), per_class=6)
    prepare.run(params_for(default_params, dataset="folder", root="images"))
    assert "data.root images is outside data/raw: DVC does not track it" in caplog.text


# --- a split bigger than memory ----------------------------------------------------------------------------


@contextmanager
def memory_cgroup(limit: int):
    """A fresh cgroup with a memory limit (v1 or v2): yields the function a child runs to join it, and the
    cgroup's directory (its peak usage)."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    base = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/memory")
    group = base / f"litpipe-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))
        swap = group / ("memory.swap.max" if v2 else "memory.memsw.limit_in_bytes")
        if swap.exists():  # no swapping past the limit either (v1 counts memory and swap together)
            swap.write_text("0" if v2 else str(limit))
    except OSError as error:
        if group.exists():
            group.rmdir()
        missing(f"cannot make a memory-limited cgroup under {base} ({error}); needs root")

    def join() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    try:
        yield join, group
    finally:
        group.rmdir()


@pytest.mark.slow
def test_a_split_larger_than_the_memory_limit_streams_through_the_loader(tmp_path, default_params):
    """synthetic_mnist at 224 x 224: a 2.6 GB training split, trained in a cgroup limited to 2 GiB. The fit and
    its two DataLoader workers take about 1.4 GiB of it themselves: each process that imports torch (a CUDA
    build) and Lightning holds about 0.5 GiB."""
    limit = 2 * 2**30
    params = Params.model_validate(default_params).override(
        {
            "data.dataset": "synthetic_mnist",
            "data.image_size": 224,
            "model.kwargs.mlp.width": 16,
            "model.kwargs.mlp.depth": 1,
            "train.batch_size": 512,
            "train.steps_per_call": 1,
            "train.max_epochs": 1,
            "train.accelerator": "cpu",
            "search.enabled": False,
            "observe.histograms": False,
            "observe.activations": False,
        }
    )
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump()))  # JSON is YAML
    with memory_cgroup(limit) as (join, group):
        for stage, limited in (("prepare", False), ("search", False), ("fit", True)):
            result = subprocess.run(
                ["litpipe", stage],
                cwd=tmp_path,
                env=tool_env(),
                capture_output=True,
                text=True,
                timeout=900,
                preexec_fn=join if limited else None,
            )
            assert result.returncode == 0, f"{stage}: {result.stderr[-3000:]}"
        usage_files = [group / name for name in ("memory.peak", "memory.max_usage_in_bytes") if (group / name).exists()]
        if not usage_files:  # cgroup v2 before Linux 5.19
            missing(f"{group} reports no peak memory usage (memory.peak needs Linux 5.19)")
        peak = int(usage_files[0].read_text())
    train = tmp_path / paths.split_files("train")[0]
    assert train.stat().st_size > 1.15 * limit
    log = (tmp_path / "logs/fit.log").read_text()
    assert re.search(r"data: DataLoader with 2 workers on cpu \(splits \d+ MiB", log), log
    metrics = json.loads((tmp_path / paths.FIT_METRICS).read_text())
    # It learned from the streamed images: better than guessing among ten classes.
    assert metrics["best_val_loss"] < math.log(10) and metrics["best_val_acc"] > 0.1, metrics
    # The fit and its workers ran in the cgroup (each process holds about 0.5 GiB), within its limit.
    assert 2**28 < peak <= limit, peak


# --- raw data under DVC, from dvc add to a fresh clone -------------------------------------------------------


def dvc(args: list[str], repo: Path) -> str:
    return run(["dvc", *args], repo).stdout


def set_data(repo: Path, dataset: str, root: str) -> None:
    """Change data.dataset and data.root in params.yaml and nothing else, comments included."""
    path = repo / "params.yaml"
    text = re.sub(r"(?m)^  dataset: \S+", f"  dataset: {dataset}", path.read_text(), count=1)
    path.write_text(re.sub(r"(?m)^  root: \S+", f"  root: {root}", text, count=1))


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the repository where a researcher added 300 PNG images with `dvc add`, changed only
    data.dataset and data.root, ran `dvc repro`, committed, and pushed to a remote of their own."""
    require_tool("dvc")
    base = tmp_path_factory.mktemp("own")
    repo, remote = copy_repo(base / "repo"), base / "remote"
    write_folder(repo / "data/raw/shapes", per_class=100)
    dvc(["add", "data/raw/shapes"], repo)
    set_data(repo, "folder", "data/raw/shapes")
    run(["dvc", "repro"], repo, timeout=1800)
    dvc(["remote", "modify", "--local", "storage", "url", str(remote)], repo)
    dvc(["push"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "shapes data, pipeline run"], repo)
    return repo, remote


@pytest.mark.slow
def test_own_images_run_through_the_whole_pipeline(own_data):
    repo, _ = own_data
    meta = json.loads((repo / paths.META).read_text())
    assert meta["class_names"] == list(CLASSES) and meta["input_shape"] == [3, 24, 24]
    test = json.loads((repo / paths.TEST_METRICS).read_text())
    assert test["samples"] == 60 and test["accuracy"] > 1 / 3  # above chance on three classes
    report = (repo / paths.REPORT_HTML).read_text()
    for name in CLASSES:
        assert name in report
    assert (repo / "data/raw/shapes.dvc").exists() and "/shapes" in (repo / "data/raw/.gitignore").read_text()


@pytest.mark.slow
def test_a_fresh_clone_pulls_data_and_outputs_and_reruns_nothing(own_data, tmp_path):
    repo, remote = own_data
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "data/raw/shapes").exists() and not (clone / paths.BEST_CKPT).exists()
    dvc(["remote", "modify", "--local", "storage", "url", str(remote)], clone)
    dvc(["pull"], clone)
    assert len(list((clone / "data/raw/shapes").glob("*/*.png"))) == 300
    assert (clone / paths.BEST_CKPT).read_bytes() == (repo / paths.BEST_CKPT).read_bytes()
    assert "Data and pipelines are up to date" in dvc(["status"], clone)
    repro = dvc(["repro"], clone)
    assert "Running stage" not in repro, repro

    # One raw image changes: prepare re-runs, and the stages after it see new prepared data.
    image = clone / "data/raw/shapes/circle/circle-007.png"
    Image.fromarray(shape_image("circle", 24, np.random.default_rng(99))).save(image)
    status = json.loads(dvc(["status", "--json"], clone))
    assert {"changed deps": {"data/raw": "modified"}} in status["prepare"], status
    assert "sanity" not in status  # nothing after prepare changed yet: its input is the prepared data
    assert "Running stage 'prepare'" in dvc(["repro", "prepare"], clone)
    after = json.loads(dvc(["status", "--json"], clone))
    for stage in ("sanity", "lr_find", "search"):
        assert {"changed deps": {"data/prepared": "modified"}} in after[stage], after


@pytest.mark.slow
def test_an_added_and_a_removed_raw_image_rerun_prepare(own_data, tmp_path):
    """Raw data under DVC is a dependency of prepare: an image added to data/raw makes `dvc repro` re-run
    prepare, which then splits 301 images; two removed (the added one and one of the 300), 299."""
    repo = copy_workspace(own_data[0], tmp_path / "repo")
    raw = repo / "data/raw/shapes"
    added = raw / "square/square-added.png"

    def add() -> None:
        Image.fromarray(shape_image("square", 24, np.random.default_rng(7))).save(added)

    def remove() -> None:
        added.unlink()
        (raw / "triangle/triangle-000.png").unlink()

    for change, images in ((add, 301), (remove, 299)):
        change()
        status = json.loads(dvc(["status", "--json", "prepare"], repo))
        assert {"changed deps": {"data/raw": "modified"}} in status["prepare"], (change.__name__, status)
        assert "Running stage 'prepare'" in dvc(["repro", "prepare"], repo), change.__name__
        assert sum(json.loads((repo / paths.META).read_text())["sizes"].values()) == images, change.__name__
