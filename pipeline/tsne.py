"""Two-dimensional maps of vectors with scikit-learn's Barnes-Hut t-SNE (``rnnenc embed``).

A module of its own, importing neither torch nor scikit-learn at import time, so that ``rnnenc
embed --help`` reads ``DEFAULT_PERPLEXITY`` without paying for torch (``pipeline.embed``
imports it at once).
"""

from __future__ import annotations

import numpy as np

DEFAULT_PERPLEXITY = 30.0


def tsne_2d(vectors: np.ndarray, seed: int = 0, perplexity: float = DEFAULT_PERPLEXITY) -> np.ndarray:
    """(n, 2) Barnes-Hut t-SNE coordinates of ``vectors`` (n, d), reproducible for a seed.

    Parameters:
        vectors: one row per point.
        seed: t-SNE's random state (the initialisation is PCA, so the seed matters little).
        perplexity: the effective number of neighbours; lowered to (n - 1) / 3 for small n,
            as t-SNE needs n > 3 perplexity.

    Fewer than 5 points are placed by PCA instead (t-SNE has no neighbourhoods to keep).
    """
    from sklearn.manifold import TSNE

    x = np.asarray(vectors, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if n < 5:
        centred = x - x.mean(0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        out = np.zeros((n, 2))
        k = min(2, u.shape[1])
        out[:, :k] = u[:, :k] * s[:k]
        return out
    perplexity = min(perplexity, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                method="barnes_hut", angle=0.5, max_iter=1000)
    return tsne.fit_transform(x)


__all__ = ["DEFAULT_PERPLEXITY", "tsne_2d"]
