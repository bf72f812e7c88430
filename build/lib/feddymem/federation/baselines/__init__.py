"""Parameter-sharing baselines on Flower: FedAvg / FedProx over the generator and a federated
feature autoencoder (methods registered in `methods`)."""
