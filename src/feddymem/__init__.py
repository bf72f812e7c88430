"""feddymem: federated, unsupervised image anomaly detection (FedDyMem) on Flower."""

__version__ = "0.1.0"
