"""Deterministic synthetic whole-slide images with exact tumour annotations, for tests and the demo.

A slide is pale background, a few irregular pink tissue blobs with round regular nuclei, and tumour
regions (star-shaped polygons well inside tissue, some with a normal-tissue hole) whose nuclei are
larger, denser, darker and irregular, while the stroma stays the same colour: the tumour signal is
morphology only. The ASAP XML (Camelyon16 format) is the ground truth the pixels were drawn from.
Same `SynthSpec` -> byte-identical TIFF and XML.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from layer1_patches.shared.atomic import partial_path
from layer1_patches.shared.errors import CamnetError
from layer1_patches.synth.pixels import F32, Layout, NucleusKind, make_textures, tissue_signal, tumour_grid
from layer1_patches.synth.pyramid import level_sizes, write_pyramid

log = logging.getLogger(__name__)

GENERATOR = "CamNet synthetic slide v1"
MIN_SIZE = 512
COARSE_NODES = 129
TUMOUR_COLOR, HOLE_COLOR = "#F4FA58", "#64FE2E"


@dataclass(frozen=True)
class SynthSpec:
    """One synthetic slide; `tumour_fraction` is the approximate tumour share of the tissue area."""

    size: int
    seed: int
    mpp: float = 0.5
    tumour_fraction: float = 0.1
    tile: int = 256
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= 500_000:
            raise CamnetError(f"synthetic slide size {self.size} px is outside [{MIN_SIZE}, 500000]")
        if not 0 <= self.seed < 2**63:
            raise CamnetError(f"synthetic slide seed {self.seed} is outside [0, 2**63)")
        if not 0.1 <= self.mpp <= 8:
            raise CamnetError(f"synthetic slide mpp {self.mpp} is outside [0.1, 8] um/px")
        if not 0 <= self.tumour_fraction <= 0.8:
            raise CamnetError(f"synthetic slide tumour fraction {self.tumour_fraction} is outside [0, 0.8]")
        if self.tile % 16 or not 64 <= self.tile <= 2048:
            raise CamnetError(f"synthetic slide tile {self.tile} px is not a multiple of 16 in [64, 2048]")
        if not 1 <= self.jpeg_quality <= 100:
            raise CamnetError(f"synthetic slide JPEG quality {self.jpeg_quality} is outside [1, 100]")

    def description(self) -> str:
        """The TIFF ImageDescription: identifies the generator and every input, so reruns can skip."""
        return (f"{GENERATOR}: size={self.size} seed={self.seed} mpp={self.mpp!r} "
                f"tumour_fraction={self.tumour_fraction!r} tile={self.tile} jpeg_quality={self.jpeg_quality}")


@dataclass(frozen=True, eq=False)
class SynthTruth:
    """Ground truth of a written slide; polygons are level-0 (x, y) float pixels, as in the XML."""

    spec: SynthSpec
    tumour_polygons: list[np.ndarray]
    hole_polygons: list[np.ndarray]
    layout: Layout = field(repr=False)

    def _grid(self, downsample: int) -> tuple[int, np.ndarray, np.ndarray]:
        if not isinstance(downsample, int | np.integer) or downsample < 1:
            raise CamnetError(f"mask downsample {downsample!r} is not a positive integer")
        downsample = int(downsample)
        n = self.spec.size // downsample
        start = downsample * np.arange(n)
        return n, start + downsample / 2, start + downsample // 2

    def tissue_mask(self, downsample: int) -> np.ndarray:
        """(size // d, size // d) bool: tissue at the centre of each d x d block of level 0."""
        n, centres, index = self._grid(downsample)
        out = np.empty((n, n), bool)
        for r in range(0, n, 512):
            rows = slice(r, r + 512)
            out[rows] = tissue_signal(self.layout, centres, centres[rows], index, index[rows]) > 0
        return out

    def tumour_mask(self, downsample: int) -> np.ndarray:
        """(size // d, size // d) bool: inside a Tumor polygon and no `_2` hole, at block centres."""
        n, centres, _ = self._grid(downsample)
        out = np.empty((n, n), bool)
        for r in range(0, n, 512):
            # row blocks keep the rasteriser's per-row scratch small for large masks
            out[r:r + 512] = tumour_grid(self.layout, centres[0], centres[r], float(downsample), n,
                                         min(512, n - r))
        return out


def _exact(poly: np.ndarray) -> np.ndarray:
    # The XML carries 3 decimals; drawing from the parsed-back values makes pixels and XML agree exactly.
    return np.array([[float(f"{x:.3f}"), float(f"{y:.3f}")] for x, y in poly], np.float64)


def _star(rng: np.random.Generator, vertices: int, orders: range, budget: float) -> np.ndarray:
    """Unit-mean radii of an irregular star polygon, within [1 - budget, 1 + budget]."""
    angles = 2 * np.pi * np.arange(vertices) / vertices
    amps = rng.dirichlet(np.ones(len(orders))) * budget * 0.9
    radii = 1 + sum(a * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
                    for a, k in zip(amps, orders, strict=True))
    return np.asarray(radii + rng.uniform(-0.1, 0.1, vertices) * budget)


def _polygon(centre: np.ndarray, radii: np.ndarray, scale: float) -> np.ndarray:
    angles = 2 * np.pi * np.arange(radii.size) / radii.size
    return centre + scale * radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star_area(radii: np.ndarray) -> float:
    return float(0.5 * np.sum(radii * np.roll(radii, -1)) * math.sin(2 * math.pi / radii.size))


def _tissue_field(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """Coarse grid of approximate signed distance (px) to the tissue edge; 30-60% of nodes positive."""
    step = size / (COARSE_NODES - 1)
    v, u = np.meshgrid(np.linspace(0, 1, COARSE_NODES), np.linspace(0, 1, COARSE_NODES), indexing="ij")
    field = np.full(u.shape, -np.inf)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        scale, aspect, angle = rng.uniform(0.12, 0.24), rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        a = ((u - cx) * math.cos(angle) + (v - cy) * math.sin(angle)) / (scale / math.sqrt(aspect))
        b = ((v - cy) * math.cos(angle) - (u - cx) * math.sin(angle)) / (scale * math.sqrt(aspect))
        theta = np.arctan2(b, a)
        lobes = 1 + sum(rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                        for k in (2, 3, 4))
        field = np.maximum(field, 1 - np.hypot(a, b) / lobes)
    field += 0.25 * ndimage.zoom(rng.standard_normal((7, 7)), COARSE_NODES / 7, order=3)
    field += 0.06 * ndimage.zoom(rng.standard_normal((17, 17)), COARSE_NODES / 17, order=3)
    # a radial fall-off keeps tissue off the slide edge; one parallel to the edges would cut straight lines
    field -= 4 * (np.clip(np.hypot(u - 0.5, v - 0.5) - 0.4, 0, None) / 0.1) ** 2
    field -= np.quantile(field, 1 - rng.uniform(0.32, 0.5))
    grad = np.hypot(*np.gradient(field, step))
    # dividing by the gradient turns level sets into distances; the floor keeps flat regions finite
    return (field / np.maximum(grad, 0.3 * np.median(grad))).astype(F32), step


def _tumours(rng: np.random.Generator, coarse: np.ndarray, step: float, margin: float, spec: SynthSpec,
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Star polygons (and holes) whose every point has all its coarse nodes deep enough in tissue."""
    if spec.tumour_fraction == 0:
        return [], []
    um = 1 / spec.mpp
    free = coarse > margin + step
    target = spec.tumour_fraction * np.count_nonzero(coarse > 0) * step**2
    regions = max(1, min(int(rng.integers(1, 4)), int(target / (math.pi * (120 * um) ** 2))))
    tumours: list[np.ndarray] = []
    holes: list[np.ndarray] = []
    for area in rng.dirichlet(np.full(regions, 3.0)) * target:
        # about one vertex per 25 um of outline, like a hand-drawn annotation
        vertices = int(np.clip(2 * math.sqrt(math.pi * area) / (25 * um), 48, 240))
        radii = _star(rng, vertices, range(2, 6), 0.33)
        hole_radii = _star(rng, 32, range(2, 5), 0.15)
        with_hole = area >= math.pi * (50 * um) ** 2
        gross = area / (1 - 0.09 * _star_area(hole_radii) / _star_area(radii)) if with_hole else area
        scale = math.sqrt(gross / _star_area(radii))
        # a point within (edt - 1.5) steps of a free node has all four surrounding nodes free
        room = ndimage.distance_transform_edt(free) * step - 1.5 * step
        fits = np.flatnonzero(room.ravel() >= scale * radii.max())
        if fits.size:
            node = int(rng.choice(fits))
        else:
            node = int(np.argmax(room))
            scale = float(room.ravel()[node]) / radii.max()
            if (tumours and scale < 40 * um) or scale <= 0:
                break
        i, j = divmod(node, coarse.shape[1])
        centre = np.array([j * step, i * step])
        tumours.append(_exact(_polygon(centre, radii, scale)))
        if with_hole and scale >= 50 * um:
            direction = rng.uniform(0, 2 * np.pi)
            offset = 0.1 * scale * np.array([math.cos(direction), math.sin(direction)])
            holes.append(_exact(_polygon(centre + offset, hole_radii, 0.3 * scale)))
        jj, ii = np.meshgrid(np.arange(coarse.shape[1]), np.arange(coarse.shape[0]))
        free &= np.hypot(jj - j, ii - i) * step > scale * radii.max() + 2 * step
    return tumours, holes


def make_layout(spec: SynthSpec) -> tuple[Layout, list[np.ndarray], list[np.ndarray]]:
    """The slide's geometry and textures; tissue does not depend on `tumour_fraction`."""
    tex_seq, field_seq, tumour_seq, hash_seq = np.random.SeedSequence([spec.seed, spec.size]).spawn(4)
    um, t = 1 / spec.mpp, spec.tile
    grain, fibres, edge = make_textures(np.random.default_rng(tex_seq), t, um)
    coarse, step = _tissue_field(np.random.default_rng(field_seq), spec.size)
    edge_amp = 10 * um
    tumours, holes = _tumours(np.random.default_rng(tumour_seq), coarse, step, edge_amp, spec)
    layout = Layout(
        size=spec.size, tile=t, hash_seed=int(hash_seq.generate_state(1, np.uint64)[0]),
        coarse=coarse, step=step, edge_amp=edge_amp, grain=grain,
        fibres=fibres, edge=edge,
        tumour=tuple(tumours), holes=tuple(holes),
        normal=NucleusKind(stream=1, cell=14 * um, presence=0.7, jitter=0.3, radius=(3.0 * um, 4.0 * um),
                           aspect=(0.8, 1.0), jag=0.06, darkness=(0.9, 1.1), rim=0.1),
        malignant=NucleusKind(stream=2, cell=13 * um, presence=1.0, jitter=0.3, radius=(4.3 * um, 5.6 * um),
                              aspect=(0.5, 0.8), jag=0.5, darkness=(1.5, 1.8), rim=0.35))
    return layout, tumours, holes


def annotation_xml(tumours: list[np.ndarray], holes: list[np.ndarray]) -> str:
    """ASAP XML as in Camelyon16: Tumor polygons, then `_2` (non-tumour) holes."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    shapes = [(p, "Tumor", TUMOUR_COLOR) for p in tumours] + [(p, "_2", HOLE_COLOR) for p in holes]
    for index, (poly, group, color) in enumerate(shapes):
        lines.append(f'\t\t<Annotation Name="Annotation {index}" Type="Polygon" PartOfGroup="{group}" '
                     f'Color="{color}">')
        lines.append("\t\t\t<Coordinates>")
        lines += [f'\t\t\t\t<Coordinate Order="{k}" X="{x:.3f}" Y="{y:.3f}" />'
                  for k, (x, y) in enumerate(poly)]
        lines += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>", '\t\t<Group Name="Tumor" PartOfGroup="None" '
              'Color="#00ff00">', "\t\t\t<Attributes />", "\t\t</Group>"]
    if holes:
        lines += [f'\t\t<Group Name="_2" PartOfGroup="None" Color="{HOLE_COLOR}">', "\t\t\t<Attributes />",
                  "\t\t</Group>"]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)


def write_synthetic_slide(path_tif: Path, path_xml: Path | None, spec: SynthSpec) -> SynthTruth:
    """Write the slide (and its XML unless None) atomically via `.<name>.partial`; returns the truth."""
    layout, tumours, holes = make_layout(spec)
    outputs: list[Path] = []
    try:
        outputs.append(partial_path(path_tif))
        write_pyramid(outputs[-1], layout, spec.mpp, spec.jpeg_quality, spec.description())
        if path_xml is not None:
            outputs.append(partial_path(path_xml))
            outputs[-1].write_text(annotation_xml(tumours, holes), encoding="utf-8")
            os.replace(outputs[-1], path_xml)
        os.replace(outputs[0], path_tif)
    except OSError as err:
        raise CamnetError(f"cannot write synthetic slide {path_tif}: {err.strerror or err}") from err
    finally:
        for partial in outputs:
            partial.unlink(missing_ok=True)
    return SynthTruth(spec, tumours, holes, layout)


def slide_name(index: int, per_patient: int = 2) -> str:
    """Camelyon17-style stem: `per_patient` nodes per patient (slide i is patient i // per_patient, node
    i % per_patient), so metadata parsing sees several patients."""
    return f"patient_{index // per_patient:03d}_node_{index % per_patient}"


def slide_seed(seed: int, index: int) -> int:
    """Per-slide seed: slide i is the same whatever the cohort size."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _complete(path_tif: Path, path_xml: Path, spec: SynthSpec) -> bool:
    if not (path_tif.is_file() and path_xml.is_file()):
        return False
    try:
        with tifffile.TiffFile(path_tif) as tif:
            first = tif.pages[0]
            return (isinstance(first, tifffile.TiffPage) and first.description == spec.description()
                    and len(tif.pages) == len(level_sizes(spec.size)))
    except Exception:  # noqa: BLE001 - any unreadable file is simply regenerated
        return False


@dataclass(frozen=True)
class CohortSpec:
    """A synthetic cohort: slide i is `patient_<i // slides_per_patient>_node_<i % slides_per_patient>`, and its
    pixels depend on `seed` and i only (the same slide under another patient number looks the same)."""

    n_slides: int
    size: int
    seed: int = 0
    tumour_fraction: float = 0.1
    mpp: float = 0.5
    slides_per_patient: int = 2


def write_cohort(out: Path, n_slides: int, size: int, seed: int, tumour_fraction: float = 0.1,
                 mpp: float = 0.5) -> list[Path]:
    """Write `n_slides` slides + XMLs into `out`, two per patient (skipping complete ones); returns the slide
    paths."""
    return write_cohort_spec(out, CohortSpec(n_slides, size, seed, tumour_fraction, mpp))


def write_cohort_spec(out: Path, cohort: CohortSpec) -> list[Path]:
    """Write the cohort's slides + XMLs into `out` (skipping complete ones); returns the slide paths."""
    n_slides, size, seed = cohort.n_slides, cohort.size, cohort.seed
    if n_slides < 1:
        raise CamnetError(f"number of synthetic slides {n_slides} must be at least 1")
    if cohort.slides_per_patient < 1:
        raise CamnetError(f"slides per patient {cohort.slides_per_patient} must be at least 1")
    if seed < 0:
        raise CamnetError(f"synthetic cohort seed {seed} must be non-negative")
    specs = [SynthSpec(size=size, seed=slide_seed(seed, i), mpp=cohort.mpp, tumour_fraction=cohort.tumour_fraction)
             for i in range(n_slides)]
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CamnetError(f"cannot create output directory {out}: {err.strerror or err}") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise CamnetError(f"output directory {out} is not writable")
    paths = []
    for i, spec in enumerate(specs):
        stem = slide_name(i, cohort.slides_per_patient)
        tif, xml = out / f"{stem}.tif", out / f"{stem}.xml"
        paths.append(tif)
        if _complete(tif, xml, spec):
            log.info("synth: %s exists, skipped", tif.name)
            continue
        start = time.perf_counter()
        truth = write_synthetic_slide(tif, xml, spec)
        log.info("synth: wrote %s (%d px, %d tumour regions, %d holes) in %.1f s", tif.name, size,
                 len(truth.tumour_polygons), len(truth.hole_polygons), time.perf_counter() - start)
    return paths
