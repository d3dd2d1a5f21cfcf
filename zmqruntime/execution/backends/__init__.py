"""Worker backends: owned processes, remote engines (and their inlet), Dask."""
