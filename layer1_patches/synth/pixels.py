"""Pixels of a synthetic slide: the tile renderer (layout lives in `slides.py`, the TIFF writer in `pyramid.py`).

Every pixel is a pure function of its level-0 position and the `Layout`, so tiles agree across borders
and the ground-truth masks in `slides.py` are evaluated by the same functions the renderer uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

F32 = np.float32
BACKGROUND = 240.0
# Optical density per unit stain (R, G, B), Beer-Lambert: pink stroma, purple nuclei over a 240 background.
EOSIN_OD = np.array([0.05, 0.45, 0.25], F32)
HAEM_OD = np.array([0.65, 0.90, 0.30], F32)
EOSIN_STROMA = 1.0
HAEM_STROMA = 0.04


@dataclass(frozen=True)
class NucleusKind:
    """A population of nuclei on a jittered grid: one candidate nucleus per `cell` x `cell` px square."""

    stream: int
    cell: float
    presence: float
    jitter: float
    radius: tuple[float, float]
    aspect: tuple[float, float]
    jag: float
    darkness: tuple[float, float]
    rim: float


@dataclass(frozen=True, eq=False)
class Layout:
    """Everything a pixel depends on; built once per slide by `slides.make_layout`."""

    size: int
    tile: int
    hash_seed: int
    coarse: np.ndarray
    step: float
    edge_amp: float
    grain: np.ndarray
    fibres: np.ndarray
    edge: np.ndarray
    tumour: tuple[np.ndarray, ...]
    holes: tuple[np.ndarray, ...]
    normal: NucleusKind
    malignant: NucleusKind


Gain = Callable[[np.ndarray, np.ndarray], np.ndarray]


def periodic_noise(rng: np.random.Generator, period: int, gain_of: Gain) -> np.ndarray:
    """Unit-variance noise filtered in Fourier space by `gain_of(fx, fy)`, hence tileable with `period`."""
    freq = np.fft.fftfreq(period)
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    gain = gain_of(fx, fy)
    out = np.fft.ifft2(np.fft.fft2(rng.standard_normal((period, period))) * gain).real
    return ((out - out.mean()) / out.std()).astype(F32)


def _fibre_gain(angle: float, um: float) -> Gain:
    """Stroma fibres: long (~15 um) along `angle`, thin with a ~3 um period across it."""
    def gain(fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        along = fx * math.cos(angle) + fy * math.sin(angle)
        across = np.abs(fy * math.cos(angle) - fx * math.sin(angle))
        return np.asarray(np.exp(-(along * 15 * um) ** 2) * np.exp(-((across - 1 / (3 * um)) * 12 * um) ** 2))
    return gain


def make_textures(rng: np.random.Generator, tile: int, um: float,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel grain, stroma fibres and tissue-edge wobble (in [-1, 1], ~20 um blobs); `um` is px per um.

    Periods are 4, 5 and 6 tiles: level-0 tiles read them by slicing, and their sum repeats every 60 tiles.
    """
    grain = periodic_noise(rng, 4 * tile, lambda fx, fy: np.exp(-(np.hypot(fx, fy) / 0.3) ** 2))
    fibres = sum(periodic_noise(rng, 5 * tile, _fibre_gain(a, um)) for a in rng.uniform(0, np.pi, 3))
    edge = periodic_noise(rng, 6 * tile, lambda fx, fy: np.exp(-(np.hypot(fx, fy) * 20 * um) ** 2))
    fibres = np.asarray(fibres)
    return grain, (fibres / fibres.std()).astype(F32), np.clip(F32(0.5) * edge, -1, 1)


def _tex(tex: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Texture at integer pixel indices; slices (no copy) when the window does not wrap."""
    period = tex.shape[0]
    x0, y0 = int(ix[0]) % period, int(iy[0]) % period
    contiguous = ix[-1] - ix[0] == len(ix) - 1 and iy[-1] - iy[0] == len(iy) - 1
    if contiguous and x0 + len(ix) <= period and y0 + len(iy) <= period:
        return tex[y0:y0 + len(iy), x0:x0 + len(ix)]
    return tex[np.ix_(iy % period, ix % period)]


def _interp_coarse(lay: Layout, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    last = lay.coarse.shape[0] - 1
    u = np.clip(xs / lay.step, 0, last - 1e-6)
    v = np.clip(ys / lay.step, 0, last - 1e-6)
    j, i = u.astype(np.int64), v.astype(np.int64)
    fu, fv = (u - j).astype(F32), (v - i).astype(F32)[:, None]
    rows = lay.coarse[i] * (1 - fv) + lay.coarse[i + 1] * fv
    return rows[:, j] * (1 - fu) + rows[:, j + 1] * fu


def tissue_signal(lay: Layout, xs: np.ndarray, ys: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Roughly the signed distance (px) into tissue at centres `xs` x `ys`; tissue where > 0."""
    return _interp_coarse(lay, xs, ys) + F32(lay.edge_amp) * _tex(lay.edge, ix, iy)


def polygon_mask(polys: tuple[np.ndarray, ...], ox: float, oy: float, step: float, w: int, h: int,
                 ) -> np.ndarray:
    """Union of polygon interiors (even-odd) on a grid: pixel (i, j) is centred at (ox+step*j, oy+step*i)."""
    out = np.zeros((h, w), bool)
    yc = oy + step * np.arange(h)
    for poly in polys if h and w else ():
        x1, y1 = poly[:, 0], poly[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        if y1.max() < yc[0] or y1.min() > yc[-1] or x1.max() < ox or x1.min() > ox + step * (w - 1):
            continue
        rows, edges = np.nonzero((y1 > yc[:, None]) != (y2 > yc[:, None]))
        t = (yc[rows] - y1[edges]) / (y2[edges] - y1[edges])
        xcross = x1[edges] + t * (x2[edges] - x1[edges])
        # a crossing toggles inside/outside for every centre strictly to its right
        col = np.clip(np.floor((xcross - ox) / step).astype(np.int64) + 1, 0, w)
        toggles = np.zeros((h, w + 1), np.uint8)
        np.add.at(toggles, (rows, col), 1)
        out |= (np.cumsum(toggles[:, :w], axis=1, dtype=np.uint8) & 1).astype(bool)
    return out


def tumour_grid(lay: Layout, ox: float, oy: float, step: float, w: int, h: int) -> np.ndarray:
    """Tumour = inside a Tumor polygon and outside every `_2` hole, exactly as the XML says."""
    mask = polygon_mask(lay.tumour, ox, oy, step, w, h)
    if mask.any() and lay.holes:
        mask &= ~polygon_mask(lay.holes, ox, oy, step, w, h)
    return mask


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_uniform(seed: int, stream: int, ci: np.ndarray, cj: np.ndarray, n: int) -> np.ndarray:
    """(n, len(ci)) uniforms in [0, 1) that depend only on (seed, stream, cell): a splitmix64 per cell."""
    with np.errstate(over="ignore"):
        key = (np.full(ci.shape, seed, np.uint64) * _GOLDEN
               + ci.astype(np.int64).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
               + cj.astype(np.int64).astype(np.uint64) * np.uint64(0xABC98388FB8FAC03)
               + np.uint64(stream) * np.uint64(0x8CB92BA72F3D8DD7))
        out = np.empty((n, ci.size), np.float64)
        for k in range(n):
            z = key + np.uint64(k + 1) * _GOLDEN
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
            out[k] = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


_HARMONICS = (3, 4, 5, 6, 7)
CROWDING = 0.85


def _uncrowded(present: np.ndarray, cx: np.ndarray, cy: np.ndarray, r0: np.ndarray, prio: np.ndarray,
               ) -> np.ndarray:
    """Drop a nucleus overlapping a higher-priority neighbour: a rule local to 3x3 cells, so tiles agree."""
    keep = present.copy()
    core = (slice(1, -1), slice(1, -1))
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di == dj == 0:
                continue
            other = (slice(1 + di, present.shape[0] - 1 + di), slice(1 + dj, present.shape[1] - 1 + dj))
            close = np.hypot(cx[core] - cx[other], cy[core] - cy[other]) < CROWDING * (r0[core] + r0[other])
            keep[core] &= ~(close & present[other] & (prio[other] > prio[core]))
    return keep


def nuclei_layer(lay: Layout, kind: NucleusKind, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Haematoxylin density (h, w) of the nuclei of `kind` overlapping the level-0 window at (x0, y0)."""
    layer = np.zeros((h, w), F32)
    reach = kind.radius[1] / math.sqrt(kind.aspect[0]) * (1 + kind.jag) + 2
    # one ring of cells beyond those that can reach the window, so every candidate sees all its neighbours
    lo_i = math.floor((y0 - reach) / kind.cell) - 2
    lo_j = math.floor((x0 - reach) / kind.cell) - 2
    ci, cj = np.meshgrid(np.arange(lo_i, math.floor((y0 + h + reach) / kind.cell) + 3),
                         np.arange(lo_j, math.floor((x0 + w + reach) / kind.cell) + 3), indexing="ij")
    u = hash_uniform(lay.hash_seed, kind.stream, ci.ravel(), cj.ravel(), 8 + 2 * len(_HARMONICS))
    u = u.reshape(u.shape[0], *ci.shape)
    cy = (ci + 0.5 + kind.jitter * (2 * u[1] - 1)) * kind.cell
    cx = (cj + 0.5 + kind.jitter * (2 * u[2] - 1)) * kind.cell
    r0 = kind.radius[0] + (kind.radius[1] - kind.radius[0]) * u[3]
    inner = (slice(1, -1), slice(1, -1))
    keep = _uncrowded(u[0] < kind.presence, cx, cy, r0, u[7])[inner].ravel()
    u = u[(slice(None), *inner)].reshape(u.shape[0], -1)
    cx, cy, r0 = cx[inner].ravel(), cy[inner].ravel(), r0[inner].ravel()
    aspect = kind.aspect[0] + (kind.aspect[1] - kind.aspect[0]) * u[4]
    amps = kind.jag / len(_HARMONICS) * u[8:8 + len(_HARMONICS)]
    extent = r0 / np.sqrt(aspect) * (1 + amps.sum(axis=0)) + 1
    keep &= (cx + extent > x0) & (cx - extent < x0 + w) & (cy + extent > y0) & (cy - extent < y0 + h)
    if not keep.any():
        return layer
    u, cx, cy, r0, aspect, amps = u[:, keep], cx[keep], cy[keep], r0[keep], aspect[keep], amps[:, keep]
    half = math.ceil(float(extent[keep].max()))
    win = np.arange(2 * half + 1)
    ox, oy = np.floor(cx).astype(np.int64) - half, np.floor(cy).astype(np.int64) - half
    dx = (ox[:, None] + win + 0.5 - cx[:, None]).astype(F32)[:, None, :]
    dy = (oy[:, None] + win + 0.5 - cy[:, None]).astype(F32)[:, :, None]
    theta = (np.pi * u[5]).astype(F32)[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    major = (r0 / np.sqrt(aspect)).astype(F32)[:, None, None]
    minor = (r0 * np.sqrt(aspect)).astype(F32)[:, None, None]
    un = (dx * cos + dy * sin) / major
    vn = (dy * cos - dx * sin) / minor
    dn = np.hypot(un, vn)
    z = (un + 1j * vn) / np.maximum(dn, F32(1e-6))
    rho = np.ones_like(dn)
    zk = z * z
    for k in range(len(_HARMONICS)):
        zk = zk * z  # _HARMONICS are consecutive orders from 3
        phase = np.exp(2j * np.pi * u[8 + len(_HARMONICS) + k]).astype(np.complex64)[:, None, None]
        rho += amps[k].astype(F32)[:, None, None] * (zk * phase).real
    alpha = np.clip((rho - dn) * r0.astype(F32)[:, None, None] + 0.5, 0, 1)
    dark = (kind.darkness[0] + (kind.darkness[1] - kind.darkness[0]) * u[6]).astype(F32)[:, None, None]
    # chromatin margination: darker towards the nuclear membrane
    stamps = alpha * dark * (1 + F32(kind.rim) * (np.minimum(dn / rho, 1) ** 2 - F32(0.5)))
    for n in range(stamps.shape[0]):
        top, left = int(oy[n]) - y0, int(ox[n]) - x0
        a, b = max(top, 0), min(top + win.size, h)
        c, d = max(left, 0), min(left + win.size, w)
        if a < b and c < d:
            view = layer[a:b, c:d]
            np.maximum(view, stamps[n, a - top:b - top, c - left:d - left], out=view)
    return layer


def render_tile(lay: Layout, x0: int, y0: int) -> np.ndarray:
    """The level-0 tile (tile, tile, 3) uint8 at (x0, y0); positions past the slide edge are rendered too."""
    t = lay.tile
    ix, iy = np.arange(x0, x0 + t), np.arange(y0, y0 + t)
    bg = F32(BACKGROUND) + F32(1.5) * _tex(lay.grain, ix, iy)
    g = lay.coarse
    i0, j0 = int(y0 / lay.step), int(x0 / lay.step)
    near = g[i0:int((y0 + t) / lay.step) + 2, j0:int((x0 + t) / lay.step) + 2]
    if near.size == 0 or float(near.max()) + lay.edge_amp < -0.5:
        return _to_uint8(np.repeat(bg[..., None], 3, axis=2))
    signal = tissue_signal(lay, ix + 0.5, iy + 0.5, ix, iy)
    alpha = np.clip(signal + F32(0.5), 0, 1)
    if not alpha.any():
        return _to_uint8(np.repeat(bg[..., None], 3, axis=2))
    tumour = tumour_grid(lay, x0 + 0.5, y0 + 0.5, 1.0, t, t)
    if tumour.all():
        haem = nuclei_layer(lay, lay.malignant, x0, y0, t, t)
    elif tumour.any():
        haem = np.where(tumour, nuclei_layer(lay, lay.malignant, x0, y0, t, t),
                        nuclei_layer(lay, lay.normal, x0, y0, t, t))
    else:
        haem = nuclei_layer(lay, lay.normal, x0, y0, t, t)
    grain = _tex(lay.grain, ix, iy)
    texture = 1 + F32(0.18) * _tex(lay.fibres, ix, iy) + F32(0.05) * _tex(lay.edge, ix, iy)
    # nuclei displace stroma, so eosin fades where haematoxylin is
    eosin = F32(EOSIN_STROMA) * texture * (1 - F32(0.75) * np.minimum(haem, 1))
    haem = haem * (1 + F32(0.12) * grain) + F32(HAEM_STROMA)
    od = (haem[..., None] * HAEM_OD + eosin[..., None] * EOSIN_OD) * alpha[..., None]
    return _to_uint8(bg[..., None] * np.exp(-od))


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb + F32(0.5), 0, 255).astype(np.uint8)
