"""imbalance_core.preprocess: CIFAR-10's GCN + ZCA against their definitions, computed here independently
(pylearn2's global_contrast_normalize with scale 55, and ZCA whitening with filter bias 0.1) on small
matrices, so that no 3072 x 3072 eigendecomposition is needed."""
import numpy as np
import pytest

from imbalance_core import preprocess as P


def _gcn_reference(x: np.ndarray, scale: float = 55.0) -> np.ndarray:
    """Centre each row, then scale it to L2 norm `scale` (pylearn2: subtract_mean, use_std=False)."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=1, keepdims=True)
    return scale * xc / np.linalg.norm(xc, axis=1, keepdims=True)


def _zca_reference(x: np.ndarray, bias: float):
    """(mean, W) from the SVD of the centred data (not an eigendecomposition of the covariance):
    W = V diag((s^2/N + bias)^-1/2) V^T, and the eigenvalues lambda = s^2/N of the covariance."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd((x - mean) / np.sqrt(len(x)), full_matrices=False)
    lam = s ** 2
    return mean, (vt.T * (lam + bias) ** -0.5) @ vt, lam, vt.T


def _correlated(n: int, d: int, seed: int) -> np.ndarray:
    """n rows of d correlated features with eigenvalues spread over [0.01, 10] (so bias 0.1 matters)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.sqrt(np.geomspace(0.01, 10.0, d))
    return (rng.normal(size=(n, d)) * scales) @ q.T + rng.normal(size=d) * 3


def test_gcn_gives_each_image_norm_55_and_zero_mean():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 3 * 4 * 4)).astype(np.uint8)
    x[1] = x[1] // 4 + 100                                   # a low-contrast image is stretched to norm 55 too
    g = P.gcn(x)
    assert g.dtype == np.float32 and g.shape == x.shape
    assert np.linalg.norm(g.astype(np.float64), axis=1) == pytest.approx(np.full(40, 55.0), rel=1e-5)
    assert np.abs(g.mean(1)).max() < 1e-4
    assert np.allclose(g, _gcn_reference(x), rtol=1e-5, atol=1e-4)
    # the same image at another contrast and brightness gives the same output (what GCN is for)
    assert np.allclose(P.gcn(2.0 * x[:3] + 7.0), g[:3], rtol=1e-5, atol=1e-4)
    # a constant image has no contrast to normalise: zeros, not NaN
    assert np.array_equal(P.gcn(np.full((1, 12), 9, np.uint8)), np.zeros((1, 12), np.float32))


def test_zca_whitens_to_identity_up_to_its_bias():
    x = _correlated(4000, 6, seed=1)
    bias = 0.1
    mean, w = P.fit_zca(x, bias=bias)
    ref_mean, ref_w, lam, v = _zca_reference(x, bias)
    assert np.allclose(mean, ref_mean, atol=1e-5)
    assert np.allclose(w, ref_w, rtol=1e-4, atol=1e-5)
    assert np.allclose(w, w.T, atol=1e-5)                   # ZCA (symmetric), not PCA whitening
    z = (x - mean).astype(np.float64) @ w
    cov = z.T @ z / len(z)
    # eigenvalue lambda of the input covariance becomes lambda / (lambda + bias): identity up to the bias
    expect = (v * (lam / (lam + bias))) @ v.T
    assert np.allclose(cov, expect, atol=1e-4)
    assert not np.allclose(cov, np.eye(6), atol=0.05)        # the bias visibly shrinks the small directions
    # without a bias the covariance is the identity
    _, w0 = P.fit_zca(x, bias=1e-12)
    z0 = (x - mean).astype(np.float64) @ w0
    assert np.allclose(z0.T @ z0 / len(z0), np.eye(6), atol=1e-3)


def test_cifar_whitened_is_gcn_then_zca_fitted_on_train():
    """Both splits: GCN per image, then the ZCA (mean and W) fitted on the GCN'd *training* images."""
    rng = np.random.default_rng(2)
    base = _correlated(600, 3 * 2 * 2, seed=3)
    train_x = np.clip(base[:500] * 20 + 128, 0, 255).astype(np.uint8).reshape(500, 3, 2, 2)
    test_x = np.clip(base[500:] * 20 + 128 + rng.normal(size=(100, 12)), 0, 255).astype(np.uint8).reshape(100, 3, 2, 2)
    tr, te = P.cifar_whitened(train_x, test_x)
    assert tr.shape == train_x.shape and te.shape == test_x.shape and tr.dtype == te.dtype == np.float32
    g_tr, g_te = _gcn_reference(train_x.reshape(500, -1)), _gcn_reference(test_x.reshape(100, -1))
    mean, w, _, _ = _zca_reference(g_tr, P.ZCA_BIAS)
    assert P.GCN_SCALE == 55.0 and P.ZCA_BIAS == 0.1
    assert np.allclose(tr.reshape(500, -1), (g_tr - mean) @ w, rtol=1e-3, atol=2e-3)
    assert np.allclose(te.reshape(100, -1), (g_te - mean) @ w, rtol=1e-3, atol=2e-3)
