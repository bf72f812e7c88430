"""FedDyMem itself, free of Flower: memory generator G_k, metric loss, memory-reduce, the
server's weighted k-means and one client's local model (docs/method.md)."""
