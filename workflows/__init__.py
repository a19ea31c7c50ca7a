"""Dask orchestration, workflow files and the ``rnnenc`` command line."""
