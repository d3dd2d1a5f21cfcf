"""The systems the suite compares: raw pyzmq, zmqruntime, zmqruntime 0.6.5, Dask, ipyparallel."""
