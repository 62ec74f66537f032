"""Residual k-means on synthetic embeddings with planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from sid_index.errors import ConfigError, DataError
from sid_index.rq_kmeans import RQKMeans, RQKMeansConfig


def planted(n_clusters: int = 8, per: int = 40, dim: int = 24, seed: int = 0):
    """Unit-ish vectors around `n_clusters` well-separated centres; returns (x, labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)) * 3.0
    labels = np.repeat(np.arange(n_clusters), per)
    x = centres[labels] + 0.1 * rng.standard_normal((len(labels), dim))
    return x.astype(np.float32), labels


def test_codes_shape_range_and_dtype() -> None:
    x, _ = planted()
    rq = RQKMeans.fit(x, RQKMeansConfig(levels=(8, 16, 4), niter=10))
    codes = rq.encode(x)
    assert codes.shape == (len(x), 3) and codes.dtype == np.int32
    assert rq.level_sizes == (8, 16, 4)
    assert (codes >= 0).all() and (codes < np.array([8, 16, 4])).all()


def test_planted_clusters_recovered_at_level_0() -> None:
    x, labels = planted(n_clusters=8)
    # The default seeds level 0 with k-means++, which finds well-separated groups.
    codes = RQKMeans.fit(x, RQKMeansConfig(levels=(8, 4), niter=20, nredo=2)).encode(x)
    # Each planted cluster maps to exactly one level-0 code, and different clusters to
    # different codes (a perfect partition up to relabelling).
    pairs = np.unique(np.column_stack([labels, codes[:, 0]]), axis=0)
    assert len(pairs) == 8
    assert len(np.unique(pairs[:, 0])) == 8 and len(np.unique(pairs[:, 1])) == 8


@pytest.mark.parametrize("kmeanspp_levels", [0, 1, 3])
def test_deterministic_with_seed(kmeanspp_levels: int) -> None:
    x, _ = planted(seed=3)
    cfg = RQKMeansConfig(levels=(6, 6, 6), niter=8, seed=7, kmeanspp_levels=kmeanspp_levels)
    a = RQKMeans.fit(x, cfg)
    b = RQKMeans.fit(x, cfg)
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    for ca, cb in zip(a.codebooks, b.codebooks, strict=True):
        np.testing.assert_array_equal(ca, cb)


def test_kmeanspp_seeding_spreads_centres() -> None:
    from sid_index.rq_kmeans import _kmeans_pp

    x, labels = planted(n_clusters=8, per=40)
    x[:40] = x[0]  # cluster 0 collapsed to exact duplicates: only one of them may be chosen
    hits = 0
    for seed in range(20):
        centres = _kmeans_pp(x, 8, np.random.default_rng(seed))
        assert len(np.unique(centres, axis=0)) == 8
        nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=0)
        hits += len(np.unique(labels[nearest])) == 8
    assert hits >= 17  # D² sampling lands one seed per separated cluster almost always


def test_residual_error_shrinks_with_levels() -> None:
    x, _ = planted(n_clusters=4, per=60, seed=1)
    rq = RQKMeans.fit(x, RQKMeansConfig(levels=(4, 8, 8), niter=10))
    mses = [f.mse for f in rq.fits]
    assert mses[0] > mses[1] > mses[2] >= 0
    err = np.mean(np.sum((x - rq.reconstruct(rq.encode(x))) ** 2, axis=1))
    assert err == pytest.approx(mses[-1], rel=1e-3)


def test_codebook_capped_at_distinct_points() -> None:
    base = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    x = base[np.arange(20) % 5]  # 20 rows, only 5 distinct
    rq = RQKMeans.fit(x, RQKMeansConfig(levels=(16, 4)))
    assert rq.level_sizes == (5, 1)  # level 1 sees only zero residuals
    assert rq.fits[0].capped and rq.fits[0].distinct_points == 5 and rq.fits[0].requested == 16
    assert rq.fits[1].capped and rq.fits[1].distinct_points == 1
    codes = rq.encode(x)
    # Exact: equal rows get equal codes, distinct rows distinct codes, zero residual.
    np.testing.assert_array_equal(codes[:, 0], np.arange(20) % 5)
    np.testing.assert_allclose(rq.reconstruct(codes), x, atol=1e-6)
    assert rq.fits[-1].mse == pytest.approx(0.0, abs=1e-10)


def test_small_catalogue_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    x, _ = planted(n_clusters=4, per=10)  # 40 points, far below 39 * 32
    rq = RQKMeans.fit(x, RQKMeansConfig(levels=(32,), niter=5))
    assert rq.level_sizes == (32,)
    err = capfd.readouterr().err
    assert "WARNING" not in err and "please provide" not in err


def test_single_item() -> None:
    x = np.ones((1, 4), dtype=np.float32)
    rq = RQKMeans.fit(x, RQKMeansConfig(levels=(256, 256)))
    assert rq.level_sizes == (1, 1)
    np.testing.assert_array_equal(rq.encode(x), [[0, 0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": ()}, "levels=()"),
        ({"levels": (8, 0)}, "levels=(8, 0)"),
        ({"niter": 0}, "niter=0"),
        ({"nredo": 0}, "nredo=0"),
        ({"kmeanspp_levels": -1}, "kmeanspp_levels=-1"),
        ({"max_points_per_centroid": 0}, "max_points_per_centroid=0"),
        ({"levels": (2,) * 26}, "must be <= 25"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RQKMeansConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_embeddings() -> None:
    cfg = RQKMeansConfig(levels=(2,))
    with pytest.raises(DataError, match="non-empty"):
        RQKMeans.fit(np.zeros((0, 4), dtype=np.float32), cfg)
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(DataError, match=r"rows \[2\]"):
        RQKMeans.fit(x, cfg)
    rq = RQKMeans.fit(np.eye(4, dtype=np.float32), cfg)
    with pytest.raises(DataError, match="width 3"):
        rq.encode(np.ones((2, 3), dtype=np.float32))
