"""The offline "embedded" set built from photos inside the installed wheels."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gradaudit.data import embedded, load_dataset
from gradaudit.errors import ConfigError


def build(**kw):
    embedded._photos.cache_clear()  # decode the photos again: determinism must not come from the cache
    return load_dataset("embedded", **kw)


def test_shape_size_and_classes():
    ds = build()
    n, c, h, w = ds.images.shape
    assert (c, h, w) == (3, 32, 32) and n >= 48 and ds.images.dtype == torch.uint8
    assert ds.num_classes >= 6 and len(set(ds.classes)) == ds.num_classes
    counts = torch.bincount(ds.labels, minlength=ds.num_classes)
    assert counts.tolist() == [len(embedded.CROPS)] * ds.num_classes
    assert ds.name == "embedded" and len(ds.mean) == len(ds.std) == 3
    # real photos, not blank crops: every image has texture
    assert float(ds.images.float().std(dim=(1, 2, 3)).min()) > 5


def test_two_builds_are_byte_identical():
    a, b = build(), build()
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert torch.equal(a.labels, b.labels) and a.classes == b.classes and a.mean == b.mean and a.std == b.std


def test_same_bytes_in_a_fresh_process():
    code = ("import hashlib; from gradaudit.data import load_dataset; d = load_dataset('embedded'); "
            "print(hashlib.sha256(d.images.numpy().tobytes()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == hashlib.sha256(build().images.numpy().tobytes()).hexdigest()


def _reference_photos() -> dict[str, np.ndarray]:
    """The same photos through each library's own public API."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        hopper = np.asarray(im.convert("RGB"))
    return {"astronaut": skimage.data.astronaut(), "coffee": skimage.data.coffee(),
            "chelsea": skimage.data.chelsea(), "rocket": skimage.data.rocket(),
            "motorcycle": skimage.data.stereo_motorcycle()[0], "china": load_sample_image("china.jpg"),
            "flower": load_sample_image("flower.jpg"), "grace_hopper": hopper}


def test_labels_match_their_photos():
    ds = build()
    refs = _reference_photos()
    assert set(ds.classes) <= set(refs)
    thumbs = {}
    for name, photo in refs.items():  # centre square of each photo, 32x32
        h, w = photo.shape[:2]
        s = min(h, w)
        sq = photo[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        thumbs[name] = np.asarray(Image.fromarray(sq).resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    for label, name in enumerate(ds.classes):
        first = ds.images[ds.labels == label][0].permute(1, 2, 0).numpy().astype(np.float64)  # full-square crop
        errors = {other: np.abs(first - t).mean() for other, t in thumbs.items()}
        assert min(errors, key=errors.get) == name, (name, errors)
        assert errors[name] < 6.0


def test_normalisation_is_computed_from_the_set_and_round_trips():
    ds = build()
    x, _ = ds.batch(range(len(ds)))
    z = ds.normalize(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    assert torch.allclose(ds.denormalize(z), x, atol=1e-6)


def test_image_size_override():
    small, big = build(image_size=16), build()
    assert small.images.shape == (len(big), 3, 16, 16)
    assert torch.equal(small.labels, big.labels)
    # same content at a lower resolution: 2x2 block means agree closely
    pooled = torch.nn.functional.avg_pool2d(big.images.float(), 2)
    assert float((pooled - small.images.float()).abs().mean()) < 4.0
    assert build(image_size=32).images.numpy().tobytes() == big.images.numpy().tobytes()


def test_splits():
    assert torch.equal(build(split="test").images, build().images)
    with pytest.raises(ConfigError, match="valid: test, train"):
        build(split="validation")


def test_crop_boxes_stay_inside_the_photo():
    for w, h in [(512, 512), (640, 427), (300, 451), (7, 5)]:
        boxes = embedded.crop_boxes(w, h)
        assert len(boxes) == len(embedded.CROPS) == len(set(boxes))
        for left, top, right, bottom in boxes:
            assert 0 <= left < right <= w and 0 <= top < bottom <= h and right - left == bottom - top
