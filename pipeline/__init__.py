"""rnnenc library: pure, partition-level stages of the Cho et al. (2014) pipeline.

Nothing in this package creates a Dask client; orchestration lives in ``workflows``.
"""

__version__ = "0.1.0"
