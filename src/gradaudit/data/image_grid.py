"""A PNG grid of images: ground truth on top, reconstructions under different defenses below.

Layout (all in pixels, ``PAD`` = 8)::

    PAD | label column | PAD | image 0 | PAD | image 1 | ... | image N-1 | PAD

The label column is as wide as the widest row label. Each image is shown ``scale`` times larger with
nearest-neighbour upscaling (every source pixel becomes a ``scale x scale`` block, so 32x32 pixels stay
visible). Vertically: ``PAD``, then an optional band of column headers (``captions`` argument), then per row
the images (``H * scale`` tall, or the label's height if taller), a caption band under the images if the row
has captions, and ``PAD``. The background is white; row labels are vertically centred on the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from gradaudit.errors import ConfigError

PAD = 8
FONT_SIZE = 14
#: Vertical space between an image and its caption.
CAPTION_GAP = 2
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)

Row = tuple[str, Tensor, "Sequence[str] | None"]


def load_font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font at ``size`` points (Pillow >= 10.1), else its fixed bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def text_size(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``text`` drawn with ``font`` (default :func:`load_font`), from (0, 0)."""
    font = font if font is not None else load_font()
    if not text:
        return 0, 0
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return int(right), int(bottom)


def line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> int:
    """Height of one line of text (enough for ascenders and descenders)."""
    return text_size("Ag(0)|dB", font)[1]


def to_uint8_hwc(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` float image in [0, 1] (C = 1 or 3) -> ``[H, W, 3]`` uint8 RGB (gray repeated), rounded."""
    arr = image.detach().to(torch.float64).cpu().nan_to_num(0.0).clamp(0.0, 1.0)
    arr = (arr * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


_Parsed = list[tuple[str, Tensor, "list[str] | None"]]


def _validate(rows: Sequence, captions: Sequence[str] | None) -> tuple[_Parsed, int, int, int]:
    """Check the rows; return them as (label, images, captions) with the column count and image size."""
    what = "save_reconstruction_grid"
    if not rows:
        raise ConfigError("save_reconstruction_grid: no rows given")
    parsed: _Parsed = []
    n_cols = h = w = None
    for i, row in enumerate(rows):
        if not isinstance(row, (tuple, list)) or len(row) not in (2, 3):
            raise ConfigError(f"{what}: row {i} must be (label, images, captions), got {type(row).__name__}")
        label, images = row[0], row[1]
        row_caps = row[2] if len(row) == 3 else None
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ConfigError(f"{what}: row {i} ('{label}') images must be [B, C, H, W], got {shape}")
        b, c, ih, iw = images.shape
        if c not in (1, 3):
            raise ConfigError(f"{what}: row {i} ('{label}') has {c} channels; expected 1 or 3")
        if n_cols is None:
            n_cols, h, w = b, ih, iw
        if b != n_cols:
            raise ConfigError(
                f"{what}: row {i} ('{label}') has {b} images but row 0 has {n_cols}; "
                "all rows need the same width"
            )
        if (ih, iw) != (h, w):
            raise ConfigError(f"{what}: row {i} ('{label}') images are {ih}x{iw}, row 0's are {h}x{w}")
        if row_caps is not None:
            row_caps = [str(s) for s in row_caps]
            if len(row_caps) != b:
                raise ConfigError(f"{what}: row {i} ('{label}') has {len(row_caps)} captions for {b} images")
        parsed.append((str(label), images, row_caps))
    if n_cols == 0:
        raise ConfigError("save_reconstruction_grid: rows hold no images")
    if captions is not None and len(captions) != n_cols:
        raise ConfigError(f"{what}: {len(captions)} column captions for {n_cols} columns")
    return parsed, n_cols, h, w


def save_reconstruction_grid(
    rows: Sequence[Row],
    path: str | Path,
    *,
    scale: int = 4,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write a PNG grid of image rows and return its path.

    ``rows`` is a list of ``(row_label, images, row_captions)``: ``images`` a ``[B, C, H, W]`` tensor in
    ``[0, 1]`` (C = 1 shown gray, or 3 RGB), ``row_captions`` a list of ``B`` strings drawn under the images
    (e.g. ``"24.1 dB"``) or None for none. All rows must have the same number of images and image size.
    ``captions`` (optional, ``B`` strings) are column headers drawn above the first row. ``scale`` is the
    nearest-neighbour upscaling factor. Parent directories of ``path`` are created. See the module docstring
    for the exact layout.
    """
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ConfigError(f"save_reconstruction_grid: scale must be a positive integer, got {scale!r}")
    parsed, n_cols, h, w = _validate(rows, captions)
    font = load_font()
    text_h = line_height(font)
    cell_w, cell_h = w * scale, h * scale

    label_w = max(text_size(label, font)[0] for label, _, _ in parsed)
    x_images = PAD + label_w + PAD
    width = x_images + n_cols * cell_w + (n_cols - 1) * PAD + PAD
    header_h = text_h + CAPTION_GAP if captions is not None else 0
    row_heights = []
    for label, _, row_caps in parsed:
        body = max(cell_h, text_size(label, font)[1])
        row_heights.append(body + (CAPTION_GAP + text_h if row_caps is not None else 0) + PAD)
    height = PAD + header_h + sum(row_heights)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    def col_x(j: int) -> int:
        return x_images + j * (cell_w + PAD)

    def centred(text: str, x0: int, y0: int) -> None:
        tw = text_size(text, font)[0]
        draw.text((x0 + (cell_w - tw) // 2, y0), text, fill=TEXT_COLOR, font=font)

    y = PAD
    if captions is not None:
        for j, text in enumerate(captions):
            centred(str(text), col_x(j), y)
        y += header_h
    for (label, images, row_caps), row_h in zip(parsed, row_heights):
        body = max(cell_h, text_size(label, font)[1])
        lh = text_size(label, font)[1]
        draw.text((PAD, y + (body - lh) // 2), label, fill=TEXT_COLOR, font=font)
        for j in range(n_cols):
            tile = to_uint8_hwc(images[j])
            tile = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
            canvas.paste(Image.fromarray(tile, mode="RGB"), (col_x(j), y))
            if row_caps is not None:
                centred(row_caps[j], col_x(j), y + body + CAPTION_GAP)
        y += row_h

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
