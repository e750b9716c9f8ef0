"""Generated datasets on disk, in the layouts hpsearch reads: for tests, benchmarks and the GPU check.

Nothing can be downloaded in tests or on an offline GPU box, yet the image-folder readers must meet
folders of real size. These are learnable (each class has its own colour), so a search over them
must beat chance. Needs numpy and Pillow only.
"""

from __future__ import annotations

from pathlib import Path


def write_image_folder(root: Path, layout: str, classes: int, train_per_class: int, test_per_class: int,
                       size: int = 32) -> Path:
    """A generated dataset on disk in `layout` ("imagefolder" or "tinyimagenet"), learnable: each class
    has its own mean colour, each image is that colour plus noise. Returns root."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, (classes, 3))
    names = [f"n{i:08d}" for i in range(classes)]

    def image(label: int) -> Image.Image:
        pixels = colours[label] + rng.normal(0, 40, (size, size, 3))
        return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))

    if layout == "tinyimagenet":
        (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "wnids.txt").write_text("\n".join(names) + "\n")
        for label, wnid in enumerate(names):
            folder = root / "train" / wnid / "images"
            folder.mkdir(parents=True)
            for i in range(train_per_class):
                image(label).save(folder / f"{wnid}_{i}.JPEG", quality=90)
        (root / "val" / "images").mkdir(parents=True)
        lines = []
        for label, wnid in enumerate(names):
            for i in range(test_per_class):
                filename = f"val_{label}_{i}.JPEG"
                image(label).save(root / "val" / "images" / filename, quality=90)
                lines.append(f"{filename}\t{wnid}\t0\t0\t{size}\t{size}")
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    elif layout == "imagefolder":
        for split, per_class in (("train", train_per_class), ("val", test_per_class)):
            for label, name in enumerate(names):
                folder = root / split / name
                folder.mkdir(parents=True)
                for i in range(per_class):
                    image(label).save(folder / f"{i}.png")
    else:
        raise ValueError(layout)
    return root
