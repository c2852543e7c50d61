import numpy as np
import pytest

from keepset.data.corruption import (
    BLUR_SIGMAS_PER_32PX, CORRUPTION_KINDS, FILL, NOISE_SIGMAS, OCCLUSION_FRACTIONS, corrupt_images,
)


def _images(n=40, c=1, h=28, w=28, seed=0):
    # values in [0.05, 0.95] and never exactly FILL, so a constant patch of FILL is unambiguous
    x = np.random.default_rng(seed).uniform(0.05, 0.95, size=(n, c, h, w)).astype(np.float32)
    x[x == FILL] = 0.3
    return x


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
@pytest.mark.parametrize("n,fraction", [(40, 0.25), (7, 0.5), (10, 0.0), (10, 1.0), (3, 0.34)])
def test_exact_count_and_untouched_rest(kind, n, fraction):
    x = _images(n)
    before = x.copy()
    out, mask = corrupt_images(x, kind, fraction=fraction, severity=3, seed=1)
    assert mask.dtype == np.bool_ and mask.shape == (n,)
    assert mask.sum() == int(round(fraction * n))
    assert out.dtype == np.float32 and out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(x, before)                              # input not modified
    assert out[~mask].tobytes() == x[~mask].tobytes()            # unchosen byte-identical
    if mask.any():
        assert all(not np.array_equal(out[i], x[i]) for i in np.flatnonzero(mask))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_noise_has_the_documented_std(severity):
    x = np.full((200, 1, 16, 16), 0.5, dtype=np.float32)   # mid grey: clipping is negligible
    out, mask = corrupt_images(x, "gaussian_noise", fraction=0.5, severity=severity, seed=0)
    resid = (out[mask] - x[mask]).ravel()
    sigma = NOISE_SIGMAS[severity - 1]
    clipped = np.mean(np.abs(resid) >= 0.5 - 1e-6)
    assert clipped < 0.25
    if severity < 5:  # no clipping to speak of: the std is the documented one
        assert abs(resid.std() - sigma) < 0.03 * sigma
        assert abs(resid.mean()) < 0.01


def _high_freq_energy(img):
    """Energy of the 2-D spectrum outside the central (low-frequency) half, per image."""
    f = np.fft.fftshift(np.fft.fft2(img, axes=(-2, -1)), axes=(-2, -1))
    h, w = img.shape[-2:]
    yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    band = (np.abs(yy) > h // 4) | (np.abs(xx) > w // 4)
    return (np.abs(f) ** 2 * band).sum(axis=(-3, -2, -1))


def test_blur_matches_scipy_and_removes_high_frequencies():
    from scipy.ndimage import gaussian_filter

    x = _images(12, c=3, h=28, w=24)
    energies = []
    for severity in range(1, 6):
        out, mask = corrupt_images(x, "blur", fraction=0.5, severity=severity, seed=2)
        sigma = BLUR_SIGMAS_PER_32PX[severity - 1] * 24 / 32
        ref = gaussian_filter(x[mask].astype(np.float64), sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3.0)
        np.testing.assert_allclose(out[mask], ref, atol=1e-6)
        before, after = _high_freq_energy(x[mask]), _high_freq_energy(out[mask])
        assert np.all(after < before)
        energies.append(after.sum())
    assert all(a > b for a, b in zip(energies, energies[1:]))  # stronger severity, less high-frequency energy


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_occlusion_is_one_constant_patch_of_the_documented_size(severity):
    x = _images(30, c=3, h=28, w=20)
    out, mask = corrupt_images(x, "occlusion", fraction=0.5, severity=severity, seed=3)
    ph = int(round(OCCLUSION_FRACTIONS[severity - 1] * 28))
    pw = int(round(OCCLUSION_FRACTIONS[severity - 1] * 20))
    positions = set()
    for i in np.flatnonzero(mask):
        changed = np.any(out[i] != x[i], axis=0)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        assert (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == (ph, pw)
        assert changed.sum() == ph * pw                          # a full rectangle, nothing else
        patch = out[i][:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert np.all(patch == np.float32(FILL))
        positions.add((rows[0], cols[0]))
    if severity < 5:
        assert len(positions) > 1                                # the position is drawn per image


def test_blank_is_constant_grey():
    x = _images(10)
    out, mask = corrupt_images(x, "blank", fraction=0.3, severity=1, seed=0)
    assert np.all(out[mask] == np.float32(FILL))


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_same_seed_same_bytes(kind):
    x = _images(20, c=3, h=12, w=12)
    a = corrupt_images(x, kind, fraction=0.4, severity=4, seed=7)
    b = corrupt_images(x, kind, fraction=0.4, severity=4, seed=7)
    c = corrupt_images(x, kind, fraction=0.4, severity=4, seed=8)
    assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1]) or a[0].tobytes() != c[0].tobytes()


@pytest.mark.parametrize("kwargs,match", [
    ({"fraction": -0.1}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"fraction": float("nan")}, "fraction"),
    ({"fraction": "half"}, "fraction"), ({"severity": 0}, "severity"), ({"severity": 6}, "severity"),
    ({"severity": 2.5}, "severity"), ({"severity": True}, "severity"), ({"kind": "fog"}, "unknown corruption"),
])
def test_bad_arguments_one_line_errors(kwargs, match):
    args = {"kind": "blur", "fraction": 0.5, "severity": 3, **kwargs}
    kind = args.pop("kind")
    with pytest.raises(ValueError, match=match) as err:
        corrupt_images(_images(4), kind, **args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("images,match", [
    (np.zeros((4, 28, 28), np.float32), "4-D"),
    (np.zeros((4, 1, 8, 8), np.uint8), "floats"),
    (np.full((4, 1, 8, 8), 2.0, np.float32), r"\[0, 1\]"),
    (np.full((4, 1, 8, 8), np.nan, np.float32), "finite"),
])
def test_bad_images_one_line_errors(images, match):
    with pytest.raises(ValueError, match=match) as err:
        corrupt_images(images, "gaussian_noise", fraction=0.5, severity=1, seed=0)
    assert "\n" not in str(err.value)
