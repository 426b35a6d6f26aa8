"""A synthetic chest phantom in Hounsfield units, for the mock hardware (numpy only).

The anatomy is a function of `t`, the relative position from the lung apices (0) to the upper
abdomen (1). A `Phantom` precomputes a few base images along `t` (soft edges, so that there
is partial volume as on a real scanner) and a few spatially correlated noise fields; a slice
is then one base image plus a shifted window of a noise field, clipped: two passes over the
pixels, well over a thousand 512 x 512 slices per second on one core.

Stored values are HU + 1024, clipped to 0..4095 (12 significant bits), as unsigned 16-bit.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

HU_OFFSET = 1024  # stored value = HU + HU_OFFSET (Rescale Intercept -1024, slope 1)
STORED_MAX = 4095

AIR, LUNG, FAT, SOFT, BLOOD, LIVER = -1000.0, -850.0, -100.0, 40.0, 45.0, 60.0
TABLE, CANCELLOUS, CORTICAL, RIB, STERNUM = 250.0, 700.0, 1150.0, 900.0, 750.0


class _Canvas:
    """An image in HU over pixel-centre coordinates `x` (columns) and `y` (rows), in mm."""

    def __init__(self, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> None:
        self.x, self.y = x, y
        self.img = np.full((y.size, x.size), AIR, dtype=np.float32)

    def _span(self, axis: npt.NDArray[np.float32], lo: float, hi: float) -> slice:
        return slice(int(np.searchsorted(axis, lo)), int(np.searchsorted(axis, hi, "right")))

    def ellipse(
        self, cx: float, cy: float, a: float, b: float, hu: float, width: float = 1.5
    ) -> None:
        """Paint an ellipse with soft edges (`width` mm of partial volume), in its bounding box."""
        rows = self._span(self.y, cy - b - width, cy + b + width)
        cols = self._span(self.x, cx - a - width, cx + a + width)
        x = (self.x[cols] - cx)[np.newaxis, :] / a
        y = (self.y[rows] - cy)[:, np.newaxis] / b
        signed_mm = (np.sqrt(x * x + y * y) - 1.0) * min(a, b)  # negative inside
        coverage = np.clip(0.5 - signed_mm / width, 0.0, 1.0)
        region = self.img[rows, cols]
        region += coverage * (hu - region)


def _bump(t: float, centre: float, half_width: float) -> float:
    """A smooth 0..1 bump, 1 at `centre`, 0 beyond `half_width` from it."""
    u = (t - centre) / half_width
    return 0.0 if abs(u) >= 1.0 else math.cos(u * math.pi / 2) ** 2


def chest_hu(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], t: float
) -> npt.NDArray[np.float32]:
    """The noiseless phantom at relative position `t` (0: apices .. 1: upper abdomen), in HU.

    `x` and `y` are the pixel-centre coordinates (mm, increasing) of the columns and rows:
    x towards the patient's left, y posterior (patient coordinates, supine and head first).
    """
    c = _Canvas(x, y)
    # table: a shallow carbon-fibre shell, 8 mm thick, under the patient
    c.ellipse(0, -605, 730, 730, TABLE)
    c.ellipse(0, -605, 722, 722, AIR)
    c.ellipse(0, 0, 165, 118, FAT)  # body with subcutaneous fat
    c.ellipse(0, 2, 150, 104, SOFT)  # muscle and organs
    # lungs: small at the apices, largest mid-chest, pushed up by the diaphragm below
    lung = 0.25 + 0.75 * _bump(t, 0.55, 0.62)
    for side in (-1, 1):
        c.ellipse(side * 68, 5, 52 * lung + 8, 72 * lung + 10, LUNG, 2.0)
    liver = _bump(t, 1.0, 0.4)
    if liver > 0:  # the liver rises under the right lung (image left for HFS)
        c.ellipse(-55, 10, 30 + 70 * liver, 25 + 60 * liver, LIVER)
    heart = _bump(t, 0.7, 0.3)
    if heart > 0:
        c.ellipse(22, -15, 12 + 48 * heart, 10 + 40 * heart, BLOOD)
    trachea = _bump(t, 0.0, 0.45)
    if trachea > 0:
        c.ellipse(0, -30, 9 * trachea + 2, 8 * trachea + 2, AIR)
    c.ellipse(0, 28, 13, 13, BLOOD)  # aorta, in front of the spine
    # spine: vertebral body (cortex and cancellous bone) and spinous process; sternum
    c.ellipse(0, 62, 20, 17, CORTICAL)
    c.ellipse(0, 62, 16, 13, CANCELLOUS)
    c.ellipse(0, 92, 6, 14, CORTICAL)
    c.ellipse(0, -96, 14, 5, STERNUM)
    # ribs: a ring of small bones inside the fat layer, fewer near the abdomen
    ribs = 9 if t < 0.85 else 6
    for k in range(ribs):
        ang = math.pi * (0.15 + 0.7 * k / (ribs - 1))
        for side in (-1, 1):
            c.ellipse(side * 146 * math.sin(ang), -100 * math.cos(ang) + 4, 5.5, 4.0, RIB, 1.0)
    return c.img


def _noise_field(
    rng: np.random.Generator, shape: tuple[int, int], sigma_hu: float
) -> npt.NDArray[np.int16]:
    """Gaussian noise with a short correlation length (as reconstructed CT noise has)."""
    white = rng.standard_normal(shape).astype(np.float32)
    # the mean of 2 x 2 neighbours, rescaled to unit variance
    smooth = white + np.roll(white, 1, 0)
    smooth += np.roll(smooth, 1, 1)
    smooth /= 2
    return np.rint(smooth * sigma_hu).astype(np.int16)


class Phantom:
    """Precomputed base images and noise; `slice(t, seed)` returns stored values (uint16)."""

    def __init__(
        self,
        rows: int = 512,
        columns: int = 512,
        pixel_spacing_mm: tuple[float, float] = (0.7, 0.7),
        *,
        levels: int = 24,
        noise_hu: float = 10.0,
        noise_fields: int = 2,
        seed: int = 0,
    ) -> None:
        self.rows, self.columns = rows, columns
        dy, dx = pixel_spacing_mm
        y = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * dy
        x = (np.arange(columns, dtype=np.float32) - (columns - 1) / 2) * dx
        #: x and y (mm) of the first pixel's centre, the image centre being on the axis
        self.origin_mm = (-(columns - 1) / 2 * dx, -(rows - 1) / 2 * dy)
        self._levels = max(2, levels)
        self._bases = [
            np.clip(
                np.rint(chest_hu(x, y, k / (self._levels - 1))) + HU_OFFSET, 0, STORED_MAX
            ).astype(np.int16)
            for k in range(self._levels)
        ]
        rng = np.random.default_rng(seed)
        self._pad = 64
        shape = (rows + self._pad, columns + self._pad)
        self._noise = [_noise_field(rng, shape, noise_hu) for _ in range(max(1, noise_fields))]

    def slice(self, t: float, seed: int) -> npt.NDArray[np.uint16]:
        """The stored values of a slice at relative position `t` (clamped to 0..1), read-only.

        `seed` picks the noise (field and shift); consecutive seeds give different noise.
        """
        level = round(min(max(t, 0.0), 1.0) * (self._levels - 1))
        noise = self._noise[seed % len(self._noise)]
        k = (seed * 2654435761) & 0xFFFFFFFF  # spread consecutive seeds over the shifts
        oy, ox = (k >> 8) % self._pad, (k >> 20) % self._pad
        window = noise[oy : oy + self.rows, ox : ox + self.columns]
        out = np.add(self._bases[level], window)
        np.clip(out, 0, STORED_MAX, out=out)
        pixels = out.view(np.uint16)
        pixels.flags.writeable = False
        return pixels


@functools.lru_cache(maxsize=4)
def shared_phantom(
    rows: int, columns: int, pixel_spacing_mm: tuple[float, float], noise_hu: float = 10.0
) -> Phantom:
    """One `Phantom` per geometry for the whole process (it is immutable once built)."""
    return Phantom(rows, columns, pixel_spacing_mm, noise_hu=noise_hu)
