"""On-the-fly target augmentations named in SPEC.md: LDS smoothing and 13C isotope substitution.

Both act on the *target* spectrum only, as numpy arrays of shape (B, 501) (linear intensity, base
peak 1), and both return spectra renormalised to a base peak of 1.

**LDS (label-distribution smoothing).** Every target is convolved with a Gaussian over m/z
(sigma = 1.5 m/z units, kernel truncated at 4 sigma, i.e. +-6 bins), then renormalised to max 1.
Intensity that would move below m/z 0 or above m/z 500 is dropped.

**13C isotope substitution on 5% of molecules.** What it means here: the selected molecule is
treated as its singly 13C-labelled isotopologue, with the label on a carbon chosen uniformly at
random, and the target becomes the *expected* spectrum of that isotopologue. A fragment ion of
nominal mass k carries the labelled carbon with probability n_C(fragment) / n_C(molecule); with
carbons spread evenly over the mass, that is ~ k / M (M = nominal molecular weight), so a fraction
``min(1, k / M)`` of the peak at m/z k moves to k + 1 and the rest stays (the molecular ion moves
entirely). Molecules without carbon, or with unknown M, are left unchanged.

Why the target only: the inputs come pre-featurized from the shards (ECFP bits, counts, graph),
and a featurized 13C variant would need RDKit in every loader worker. The substitution therefore
acts as a physically shaped label perturbation (the model sees the isotope pattern a labelled
analogue of the same skeleton would give) rather than a new input; items carry an ``aug13c`` flag
so a training loop can weight or exclude them. We do *not* add natural-abundance 13C peaks
(~1.1% per carbon): library spectra already contain them, so that would count them twice.

Determinism: whether a row is substituted is a hash of ``(seed, epoch, global row)``, so the same
rows are chosen in every run and in every DataLoader worker layout, and a new set each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def gaussian_kernel(sigma: float = 1.5, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian kernel over integer offsets ``-r..r`` with ``r = ceil(truncate*sigma)``."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = int(np.ceil(truncate * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def normalize_max(y: np.ndarray) -> np.ndarray:
    """Scale each row so its maximum is 1 (all-zero rows stay zero)."""
    m = y.max(axis=-1, keepdims=True)
    return np.divide(y, m, out=np.zeros_like(y), where=m > 0)


def smooth_lds(y: np.ndarray, sigma: float = 1.5, truncate: float = 4.0) -> np.ndarray:
    """Gaussian-smooth targets along m/z and renormalise to base peak 1.

    Parameters
    ----------
    y
        Spectra, shape (B, 501) or (501,), linear intensity.
    sigma
        Standard deviation in m/z units (bins).

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    y = np.asarray(y, dtype=np.float32)
    k = gaussian_kernel(sigma, truncate)
    r = len(k) // 2
    n = y.shape[-1]
    padded = np.zeros(y.shape[:-1] + (n + 2 * r,), dtype=np.float32)
    padded[..., r:r + n] = y
    out = np.zeros_like(y)
    for j, w in enumerate(k):           # out[i] = sum_j k[j] * y[i + r - j]
        out += w * padded[..., 2 * r - j:2 * r - j + n]
    return normalize_max(out)


def isotope_13c_shift(y: np.ndarray, mw: np.ndarray, has_carbon: np.ndarray) -> np.ndarray:
    """Expected spectrum of the singly 13C-labelled isotopologue (see the module docstring).

    Parameters
    ----------
    y
        Spectra, shape (B, 501), linear intensity.
    mw
        Nominal molecular weights, shape (B,); rows with ``mw <= 0`` are left unchanged.
    has_carbon
        Bool, shape (B,); rows without carbon are left unchanged.

    Returns
    -------
    numpy.ndarray
        float32 (B, 501), renormalised to base peak 1 where changed.
    """
    y = np.asarray(y, dtype=np.float32)
    mw = np.asarray(mw, dtype=np.float32).reshape(-1, 1)
    mz = np.arange(y.shape[-1], dtype=np.float32)[None, :]
    frac = np.clip(np.divide(mz, mw, out=np.zeros((len(mw), y.shape[-1]), np.float32),
                             where=mw > 0), 0.0, 1.0)
    moved = y * frac
    out = y - moved
    out[:, 1:] += moved[:, :-1]          # m/z 500 moving to 501 falls off the end
    keep = (mw[:, 0] <= 0) | ~np.asarray(has_carbon, dtype=bool)
    out[keep] = y[keep]
    return normalize_max(out)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _M64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def select_rows(rows: np.ndarray, *, fraction: float, seed: int, epoch: int) -> np.ndarray:
    """Bool mask: which of ``rows`` (global row numbers) are chosen this epoch."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed) * np.uint64(1_000_003) + np.uint64(epoch))
        h = _splitmix64(np.asarray(rows, dtype=np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


@dataclass(frozen=True)
class Augment:
    """The augmentation settings a dataset applies to each batch of targets.

    Parameters
    ----------
    lds_sigma
        Sigma of the LDS Gaussian in m/z units; ``None`` switches smoothing off.
    isotope_fraction
        Share of molecules given the 13C substitution each epoch (0 switches it off).
    seed
        Seed of the per-epoch row selection.
    """

    lds_sigma: float | None = 1.5
    isotope_fraction: float = 0.05
    seed: int = 42

    def __call__(self, y: np.ndarray, *, rows: np.ndarray, mw: np.ndarray,
                 has_carbon: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(augmented targets (B, 501) float32, aug13c mask (B,) bool)``."""
        y = np.asarray(y, dtype=np.float32)
        mask = np.zeros(len(y), dtype=bool)
        if self.isotope_fraction > 0:
            mask = select_rows(rows, fraction=self.isotope_fraction, seed=self.seed, epoch=epoch)
            mask &= np.asarray(has_carbon, dtype=bool) & (np.asarray(mw) > 0)
            if mask.any():
                y = y.copy()
                y[mask] = isotope_13c_shift(y[mask], np.asarray(mw)[mask], np.ones(mask.sum(), bool))
        if self.lds_sigma:
            y = smooth_lds(y, self.lds_sigma)
        return y, mask
