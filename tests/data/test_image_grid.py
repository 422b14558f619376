"""The reconstruction grid PNG: size, placement of upscaled images, captions, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradaudit.errors import ConfigError
from gradaudit.report import save_reconstruction_grid
from gradaudit.data import image_grid as G


def quantised(b: int, c: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Images whose values are exact multiples of 1/255, so the PNG holds them exactly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g).float() / 255.0


def upscaled(image: torch.Tensor, scale: int) -> np.ndarray:
    arr = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.kron(arr, np.ones((scale, scale, 1), dtype=np.uint8))


LABELS = ["ground truth", "no defense", "noise 0.01"]


def make_rows():
    truth = quantised(3, 3, seed=0)
    recon = quantised(3, 3, seed=1)
    gray = quantised(3, 1, seed=2)
    return [
        (LABELS[0], truth, None),
        (LABELS[1], recon, ["24.1 dB", "19.0 dB", "30.5 dB"]),
        (LABELS[2], gray, ["11.0 dB", "12.0 dB", "13.0 dB"]),
    ]


def test_grid_size_and_placement(tmp_path):
    rows = make_rows()
    out = save_reconstruction_grid(rows, tmp_path / "sub" / "grid.png", scale=4)
    assert out == tmp_path / "sub" / "grid.png" and out.is_file()
    img = np.asarray(Image.open(out).convert("RGB"))

    pad, cell, gap, lh = G.PAD, 32 * 4, G.CAPTION_GAP, G.line_height()
    label_w = max(G.text_size(label)[0] for label in LABELS)
    x0 = pad + label_w + pad
    assert img.shape[1] == x0 + 3 * cell + 2 * pad + pad
    row_h = [cell + pad, cell + gap + lh + pad, cell + gap + lh + pad]
    assert img.shape[0] == pad + sum(row_h)

    tops = [pad, pad + row_h[0], pad + row_h[0] + row_h[1]]
    for (_, images, _), top in zip(rows, tops):
        for j in range(3):
            left = x0 + j * (cell + pad)
            np.testing.assert_array_equal(img[top : top + cell, left : left + cell], upscaled(images[j], 4))
    # gray row really is gray; gap between images and below the caption-less first row is white
    gray_block = img[tops[2] : tops[2] + cell, x0 : x0 + cell]
    assert (gray_block[..., 0] == gray_block[..., 1]).all() and (gray_block[..., 1] == gray_block[..., 2]).all()
    assert (img[tops[0] : tops[0] + cell, x0 + cell : x0 + cell + pad] == 255).all()
    assert (img[tops[0] + cell : tops[1], x0:] == 255).all()
    # captions drawn (dark pixels) under the images of captioned rows; row labels drawn left of the images
    for top in tops[1:]:
        band = img[top + cell : top + cell + gap + lh, x0 : x0 + cell]
        assert (band < 128).any()
    for top in tops:
        assert (img[top : top + cell, pad : pad + label_w] < 128).any()
    assert (img[:, :pad] == 255).all() and (img[:pad] == 255).all()


def test_column_headers_scale_and_extra_columns_change_size_exactly(tmp_path):
    rows = [("truth", quantised(2, 3), None)]
    base = Image.open(save_reconstruction_grid(rows, tmp_path / "a.png", scale=2)).size
    assert base[1] == G.PAD + 64 + G.PAD
    headed = Image.open(save_reconstruction_grid(rows, tmp_path / "b.png", scale=2, captions=["#0", "#1"])).size
    assert headed == (base[0], base[1] + G.line_height() + G.CAPTION_GAP)
    wider = [("truth", quantised(3, 3), None)]
    widened = Image.open(save_reconstruction_grid(wider, tmp_path / "c.png", scale=2)).size
    assert widened == (base[0] + 64 + G.PAD, base[1])
    bigger = Image.open(save_reconstruction_grid(rows, tmp_path / "d.png", scale=5)).size
    assert bigger == (base[0] + 2 * (32 * 3), base[1] + 32 * 3)


def test_row_widths_and_captions_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="same width"):
        save_reconstruction_grid([("a", quantised(3, 3), None), ("b", quantised(2, 3), None)], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="captions"):
        save_reconstruction_grid([("a", quantised(2, 3), ["only one"])], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="column captions"):
        save_reconstruction_grid([("a", quantised(2, 3), None)], tmp_path / "x.png", captions=["x"])
    with pytest.raises(ConfigError, match="channels"):
        save_reconstruction_grid([("a", quantised(2, 2), None)], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="16x16"):
        mixed = [("a", quantised(2, 3), None), ("b", quantised(2, 3, 16, 16), None)]
        save_reconstruction_grid(mixed, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="scale"):
        save_reconstruction_grid([("a", quantised(2, 3), None)], tmp_path / "x.png", scale=0)
    with pytest.raises(ConfigError, match="no rows"):
        save_reconstruction_grid([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
