"""Image folders of real size (thousands of files) train under `hpsearch run`, held in memory and streamed.

Folders this large are decoded by DataLoader worker processes inside hpsearch's own worker process,
so this is also the test that a worker may start children.
"""

from __future__ import annotations

import json

import pytest

from .support import run_cli

pytestmark = pytest.mark.slow

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 240, 20  # 2,600 files: past the parallel-decoding threshold


# Both layouts are read the same way in both modes by the trainer tests (test_trainer_data.py: tiny_imagenet_layout,
# plain_image_folder, streamed_image_folder_gives_the_same_batches); end to end, each mode runs once, with the
# processes it starts inside hpsearch's worker: parallel decoding (in memory) and DataLoader workers (streamed).
@pytest.mark.parametrize(("layout", "in_memory"), [("tinyimagenet", True), ("imagefolder", False)],
                         ids=["tinyimagenet-in-memory", "imagefolder-streamed"])
def test_a_folder_of_thousands_of_images_trains(layout, in_memory, write_space, workdir, image_folder):
    root = image_folder(workdir / "images", layout, CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS)
    space = write_space({
        "study": {"name": "folder", "n_trials": 1},
        "task": {"data": {"name": "imagefolder", "root": str(root), "image_size": 32, "val_fraction": 0.1,
                          "augment": "standard", "in_memory": in_memory}},
        "train": {"epochs": 2, "batch_size": 128},
    })
    result = run_cli("run", str(space), cwd=workdir, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1/1 finished" in result.stdout
    status = run_cli("status", "--format", "json", cwd=workdir)
    trials = json.loads(status.stdout)
    assert [t["state"] for t in trials] == ["COMPLETE"]
    # Ten classes with distinct colours: learnable well above chance (0.1) in two epochs, whatever learning
    # rate the sampler draws (measured 0.46-0.9 across layouts, seeds and rates).
    assert trials[0]["value"] > 0.3
