"""Detection on one site: backbones and feature taps, k-NN, coreset sampling, anomaly maps,
the detector family (memory bank, Gaussian, autoencoder), thresholds and the model file."""
