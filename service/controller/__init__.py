"""The controller: reconcile desired attempts (DB) with workloads (PyTorchJobs or local processes)."""
