"""Stain normalisation against the published methods, on images synthesised in the test.

Reinhard et al. 2001 (Color transfer between images): RGB -> LMS -> log10 -> l-alpha-beta (Ruderman),
per-channel mean/std transfer, and back. Macenko et al. 2009: optical density OD = -ln((I + 1) / I0),
tissue = all channels above beta, the plane of the two largest principal directions of tissue OD, the
stain vectors at the alpha-th and (100 - alpha)-th percentile angles in that plane, concentrations by
least squares, scaled by the 99th-percentile (max) concentrations of the reference.

Images are made by Beer-Lambert from known stain vectors and concentrations, so the stain vectors and
maximum concentrations a correct implementation must find are known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError
from layer2_training import stain

# Reinhard et al. 2001, eq. 4 and 6 (RGB -> LMS and its published inverse, 4 decimals)
RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
LMS2RGB = np.array([[4.4679, -3.5873, 0.1193], [-1.2186, 2.3809, -0.1624], [0.0497, -0.2439, 1.2045]])
# The widely used Macenko reference: H and E optical-density unit vectors (columns) and max concentrations
HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MAX_REF = np.array([1.9705, 1.0308])
# Ruifrok & Johnston 2001 H and E vectors (normalised below): a differently stained source. Their eosin
# barely absorbs red (0.072), so pure-eosin pixels count as tissue (every channel's OD above beta = 0.15)
# only from concentration 2.1 on: the source's eosin runs up to 2.8.
HE_RUIFROK = np.array([[0.650, 0.072], [0.704, 0.990], [0.286, 0.105]])
SOURCE_MAX = np.array([1.4, 2.8])
IO = 240.0


def lab_of(rgb: np.ndarray) -> np.ndarray:
    """(k, 3) RGB -> Ruderman l-alpha-beta, written out as in the paper: float64, no clamping."""
    lms = np.log10(rgb @ RGB2LMS.T)
    big_l, m, s = lms[:, 0], lms[:, 1], lms[:, 2]
    return np.stack([(big_l + m + s) / np.sqrt(3), (big_l + m - 2 * s) / np.sqrt(6), (big_l - m) / np.sqrt(2)], 1)


def log_lms_of(lab: np.ndarray) -> np.ndarray:
    """l-alpha-beta -> log10 LMS, the paper's eq. 5."""
    el, a, b = lab[:, 0] / np.sqrt(3), lab[:, 1] / np.sqrt(6), lab[:, 2] / np.sqrt(2)
    return np.stack([el + a + b, el + a - b, el - 2 * a], 1)


def rgb_of(lab: np.ndarray) -> np.ndarray:
    """Inverse of `lab_of` with the paper's published LMS -> RGB matrix."""
    return 10.0 ** log_lms_of(lab) @ LMS2RGB.T


def reinhard_reference(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """One image, float64, straight from the paper's definition (exact inverse of RGB -> LMS)."""
    lab = lab_of(image.reshape(-1, 3).astype(np.float64))
    out = (lab - lab.mean(0)) / lab.std(0) * std + mean
    return np.linalg.solve(RGB2LMS, (10.0 ** log_lms_of(out)).T).T.reshape(image.shape)


def tinted(seed: int, low: float, high: float, tint: tuple[float, float, float], size: int = 24) -> np.ndarray:
    """A random RGB image whose values stay where LMS >= 1 (the code clamps log10 at 0 below that)."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(low, high, (size, size, 3)) * np.array(tint)).astype(np.float32)


def norm(images: np.ndarray, method: str, params: dict) -> np.ndarray:
    return stain.normalize(tf.constant(images, tf.float32), method, params).numpy()


# --- Reinhard ---------------------------------------------------------------------------------------------


def test_lab_transform_is_rudermans() -> None:
    rgb = np.array([[100.0, 100.0, 100.0], [200.0, 120.0, 180.0], [30.0, 60.0, 90.0]])
    np.testing.assert_allclose(stain.rgb_to_lab(tf.constant(rgb, tf.float32)).numpy(), lab_of(rgb), atol=1e-5)
    # hand-worked grey 100: LMS = 100 * row sums = (99.96, 99.93, 99.73); log10 = (1.9998262, 1.9996959,
    # 1.9988258); l = sum / sqrt 3 = 3.4631478, alpha = (L + M - 2S) / sqrt 6 = 0.0007636,
    # beta = (L - M) / sqrt 2 = 0.0000922
    expected = [3.4631478, 0.0007636, 0.0000922]
    np.testing.assert_allclose(lab_of(rgb[:1])[0], expected, atol=1e-7)
    np.testing.assert_allclose(stain.rgb_to_lab(tf.constant(rgb[:1], tf.float32)).numpy()[0], expected, atol=2e-6)


def test_lab_round_trip_is_identity() -> None:
    rgb = np.array([[100.0, 100.0, 100.0], [200.0, 120.0, 180.0], [30.0, 60.0, 90.0], [250.0, 250.0, 5.0]])
    back = stain.lab_to_rgb(stain.rgb_to_lab(tf.constant(rgb, tf.float32))).numpy()
    np.testing.assert_allclose(back, rgb, atol=0.01)
    # the code inverts the forward matrix exactly: the paper's printed inverse (LMS2RGB) is the same to
    # within its rounding (its product with RGB2LMS is off the identity by up to 0.0072), about 2 % here
    np.testing.assert_allclose(back, rgb_of(lab_of(rgb)), rtol=0.02, atol=2.0)


def test_reinhard_output_has_the_target_statistics() -> None:
    target = tinted(1, 140, 240, (0.95, 0.75, 0.9))
    mean, std = (t.numpy() for t in stain.reinhard_stats(tf.constant(target)))
    images = np.stack([tinted(2, 100, 230, (0.8, 0.9, 1.0)), tinted(3, 150, 200, (1.0, 0.6, 0.8))])
    out = norm(images, "reinhard", {"mean": mean.tolist(), "std": std.tolist()})
    assert out.min() > 0 and out.max() < 255  # no clipping, so the transfer is exact
    for image in out:
        lab = lab_of(image.reshape(-1, 3).astype(np.float64))
        np.testing.assert_allclose(lab.mean(0), mean, atol=1e-4)
        np.testing.assert_allclose(lab.std(0), std, rtol=1e-3)
    np.testing.assert_allclose(mean, lab_of(target.reshape(-1, 3).astype(np.float64)).mean(0), atol=1e-5)


def test_reinhard_leaves_an_image_with_the_target_statistics_unchanged() -> None:
    image = tinted(4, 90, 240, (0.9, 0.7, 0.85))
    params = stain.fit_reference(image, "reinhard")
    np.testing.assert_allclose(norm(image[None], "reinhard", params)[0], image, atol=0.05)


def test_reinhard_batch_equals_each_image_normalised_on_its_own() -> None:
    """Regression for the vectorised batch: statistics stay per image (the old version was a map_fn)."""
    images = np.stack([tinted(5, 100, 230, (0.8, 0.9, 1.0)), tinted(6, 150, 200, (1.0, 0.6, 0.8)),
                       tinted(7, 60, 120, (1.0, 1.0, 1.0)), tinted(8, 200, 250, (0.9, 0.8, 0.95))])
    params = stain.fit_reference(tinted(9, 140, 240, (0.95, 0.75, 0.9)), "reinhard")
    out = norm(images, "reinhard", params)
    mean, std = np.array(params["mean"]), np.array(params["std"])
    for image, got in zip(images, out, strict=True):
        np.testing.assert_allclose(got, np.clip(reinhard_reference(image, mean, std), 0, 255), atol=0.02)
        np.testing.assert_allclose(got, norm(image[None], "reinhard", params)[0], atol=1e-3)
    assert norm(np.zeros((0, 24, 24, 3)), "reinhard", params).shape == (0, 24, 24, 3)


# --- Macenko ----------------------------------------------------------------------------------------------


def concentrations(rng: np.random.Generator, n: int, max_c: np.ndarray, background: int) -> np.ndarray:
    """(2, n) H and E concentrations, in groups that pin what each step of the method must get right:
    10 % pure H and 10 % pure E (their directions are the extreme angles); 5 % at each stain's maximum, so
    the 99th percentile is exactly `max_c`; 0.5 % pure-stain outliers above the maximum, which a plain max
    (rather than the 99th percentile) would report; 0.25 % noise just beyond each pure stain's angle, which
    the min and max angle (rather than the 1st and 99th percentile) would take as the stain; mixtures;
    then `background` stain-free pixels."""
    k, out, noise = n // 20, n // 200, n // 400
    c = np.zeros((2, n))
    c[0, :2 * k] = rng.uniform(0.5, 1.5, 2 * k) * max_c[0] / MAX_REF[0]
    c[1, 2 * k:4 * k] = rng.uniform(0.8, 1.0, 2 * k) * max_c[1] / MAX_REF[1]
    c[0, 4 * k:5 * k], c[1, 4 * k:5 * k] = max_c[0], rng.uniform(0.2, 0.6, k)
    c[1, 5 * k:6 * k], c[0, 5 * k:6 * k] = max_c[1], rng.uniform(0.2, 0.6, k)
    i = 6 * k
    c[0, i:i + out] = 1.3 * max_c[0]
    c[1, i + out:i + 2 * out] = 1.3 * max_c[1]
    i += 2 * out
    c[:, i:i + noise] = np.array([0.7 * max_c[0], -0.02 * max_c[1]])[:, None]
    c[:, i + noise:i + 2 * noise] = np.array([-0.02 * max_c[0], 0.93 * max_c[1]])[:, None]
    i += 2 * noise
    c[0, i:n - background] = rng.uniform(0.3, 0.9, n - background - i) * max_c[0]
    c[1, i:n - background] = rng.uniform(0.1, 0.85, n - background - i) * max_c[1]
    return c


def beer_lambert(he: np.ndarray, conc: np.ndarray) -> np.ndarray:
    """(3, 2) stain OD vectors, (2, n) concentrations -> (n, 3) RGB, with Macenko's I = I0 exp(-OD) - 1."""
    return (IO * np.exp(-(he @ conc)) - 1.0).T


def he_image(he: np.ndarray, max_c: np.ndarray, seed: int, side: int = 64, background: int = 400
             ) -> tuple[np.ndarray, np.ndarray]:
    """(side, side, 3) float RGB and its concentrations; background pixels are near-white, stain-free."""
    rng = np.random.default_rng(seed)
    n = side * side
    conc = concentrations(rng, n, max_c, background)
    rgb = beer_lambert(he, conc)
    rgb[n - background:] = rng.uniform(226, 234, (background, 3))  # OD < beta: not tissue
    return rgb.reshape(side, side, 3).astype(np.float32), conc


def unit(he: np.ndarray) -> np.ndarray:
    return he / np.linalg.norm(he, axis=0)


def test_macenko_finds_the_stain_vectors_and_max_concentrations() -> None:
    image, _ = he_image(HE_REF, MAX_REF, seed=0)
    params = stain.fit_reference(image, "macenko")
    np.testing.assert_allclose(params["he"], HE_REF, atol=2e-4)  # hematoxylin first: the larger red OD
    np.testing.assert_allclose(params["max_c"], MAX_REF, atol=2e-4)


def test_macenko_on_8_bit_pixels_stays_close() -> None:
    image, _ = he_image(HE_REF, MAX_REF, seed=1)
    params = stain.fit_reference(np.round(image).astype(np.uint8), "macenko")
    np.testing.assert_allclose(params["he"], HE_REF, atol=0.01)
    np.testing.assert_allclose(params["max_c"], MAX_REF, atol=0.01)


def test_macenko_normalising_tissue_to_itself_is_identity() -> None:
    image, _ = he_image(unit(HE_RUIFROK), SOURCE_MAX, seed=2, background=0)
    params = stain.fit_reference(image, "macenko")
    np.testing.assert_allclose(norm(image[None], "macenko", params)[0], image, atol=0.05)


def test_macenko_maps_concentrations_onto_the_reference_stains() -> None:
    """Known answer: same concentrations, rescaled by max_ref / max_source, re-rendered with the reference
    vectors; background pixels go through the same least-squares projection."""
    source_he, source_max = unit(HE_RUIFROK), SOURCE_MAX
    image, _ = he_image(source_he, source_max, seed=3)
    od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1.0) / IO)
    conc = np.linalg.pinv(source_he) @ od.T  # the tissue's exact concentrations, and background's projection
    expected = beer_lambert(HE_REF, conc * (MAX_REF / source_max)[:, None]).reshape(image.shape)
    white = np.full((64, 64, 3), 230.0, np.float32)  # no tissue: passed through untouched
    out = norm(np.stack([image, white]), "macenko", {"he": HE_REF.tolist(), "max_c": MAX_REF.tolist()})
    np.testing.assert_allclose(out[0], np.clip(expected, 0, 255), atol=0.1)
    np.testing.assert_array_equal(out[1], white)


def test_macenko_needs_some_tissue() -> None:
    white = np.full((32, 32, 3), 230, np.uint8)
    white[0, :15] = (60, 30, 90)  # 15 tissue pixels: fewer than the 16 needed
    with pytest.raises(CamnetError, match="too little tissue"):
        stain.fit_reference(white, "macenko")
    params = {"he": HE_REF.tolist(), "max_c": MAX_REF.tolist()}
    np.testing.assert_array_equal(norm(white[None], "macenko", params)[0], white)


def test_unknown_method_is_a_user_error() -> None:
    with pytest.raises(CamnetError, match="unknown stain method 'vahadane'"):
        stain.fit_reference(np.zeros((8, 8, 3), np.uint8), "vahadane")
    with pytest.raises(CamnetError, match="unknown stain method 'vahadane'"):
        stain.normalize(tf.zeros((1, 8, 8, 3)), "vahadane", {})
