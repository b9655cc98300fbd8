"""Conversion jobs: the job manager and the processes (or dask.distributed tasks) that convert."""
