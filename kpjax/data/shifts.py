"""Input shifts generated in code, for accuracy beyond the test distribution.

Liebenwein et al. ("Lost in Pruning", MLSys 2021) show that a pruned network
matching the dense one on the test set can lose more under distribution
shift. These are five of Hendrycks & Dietterich's corruptions (CIFAR-10-C,
ICLR 2019), severities 1–5, with the constants of their CIFAR generator,
on uint8 NHWC images (any H, W and 1 or 3 channels), in [0, 1] units:

  gaussian_noise   x + ε, ε ~ N(0, σ²), σ = .04 .06 .08 .09 .10
  gaussian_blur    Gaussian filter of σ = .4 .6 .7 .8 1 pixels (edges
                   repeated, radius ⌊4σ + ½⌋, per channel)
  contrast         (x − x̄)·c + x̄, x̄ the image's mean per channel,
                   c = .75 .5 .4 .3 .15
  brightness       V + c in HSV, c = .05 .1 .15 .2 .3 (V = max over
                   channels; hue and saturation kept: the pixel scales by
                   min(V + c, 1)/V; grayscale: x + c)
  jpeg             JPEG re-encoding at quality 80 65 58 50 40 (Pillow)

then clipped to [0, 1] and rounded back to uint8. What differs from the
generator: it ships images as PNG/JPEG of its own outputs and uses skimage
(blur) and colour-space conversions; here the same operations are written
with NumPy, and the noise has its own seeded generator.

May import: numpy, PIL.
"""

from __future__ import annotations

import io

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
_CONSTANTS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg": (80, 65, 58, 50, 40),
}
SHIFTS = tuple(_CONSTANTS)


def _gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sigma, size=x.shape)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable filter along H, then W, edges repeated."""
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        padded = np.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return x


def _contrast(x: np.ndarray, c: float) -> np.ndarray:
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * c + mean


def _brightness(x: np.ndarray, c: float) -> np.ndarray:
    v = x.max(axis=-1, keepdims=True)
    v_new = np.minimum(v + c, 1.0)
    # Hue and saturation fixed: RGB scales with V; a black pixel (S = 0) becomes grey V + c.
    return np.where(v > 0, x * v_new / np.where(v > 0, v, 1.0), v_new)


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(images)
    for i, image in enumerate(images):
        gray = image.shape[-1] == 1
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if gray else image).save(buf, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out[i] = decoded[..., None] if gray else decoded
    return out


def shift_images(images: np.ndarray, shift: str, severity: int, seed: int = 0) -> np.ndarray:
    """`images` (uint8, (B, H, W, C), C = 1 or 3) under `shift` at `severity` 1–5.

    Deterministic: the noise is drawn from `seed`. Returns a new uint8 array.
    """
    if shift not in _CONSTANTS:
        raise ValueError(f"unknown shift {shift!r}; known: {', '.join(SHIFTS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 (B, H, W, 1 or 3), got {images.dtype} {images.shape}")
    c = _CONSTANTS[shift][severity - 1]
    if shift == "jpeg":
        return _jpeg(images, c)
    x = images.astype(np.float64) / 255.0
    if shift == "gaussian_noise":
        x = _gaussian_noise(x, c, np.random.default_rng(seed))
    elif shift == "gaussian_blur":
        x = _gaussian_blur(x, c)
    elif shift == "contrast":
        x = _contrast(x, c)
    else:
        x = _brightness(x, c)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def prune_potential(compressions, accuracies, reference: float, delta: float = 0.005) -> float:
    """The largest compression whose accuracy is within `delta` of the unpruned
    network's (Liebenwein et al.'s prune potential; accuracies as fractions,
    so δ = 0.5 points is 0.005); 1.0 when none is (the network cannot be pruned)."""
    ok = [c for c, a in zip(compressions, accuracies) if a >= reference - delta]
    return max(ok, default=1.0)
