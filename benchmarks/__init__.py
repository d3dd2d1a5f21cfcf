"""Runnable benchmarks of zmqruntime against a raw pyzmq baseline measured in the same run."""
