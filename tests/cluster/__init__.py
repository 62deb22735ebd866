"""Tests of cluster execution: SLURM jobs, workers in other network
namespaces, LSF through a stand-in bsub."""
