"""feddymem: federated, unsupervised image anomaly detection (FedDyMem) on Flower."""

__version__ = "0.1.0"

import logging as _logging

# faiss logs at INFO which of its CPU builds it could not load ("Could not load library with
# AVX512 support ... ModuleNotFoundError"): normal on most machines, alarming to read.
_logging.getLogger("faiss.loader").setLevel(_logging.WARNING)
