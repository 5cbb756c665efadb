"""A stand-in for the trainer package, put first on PYTHONPATH by tests of the local backend."""
