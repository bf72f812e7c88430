"""Generated data sources: synthetic anomalies in real normals, rendered products, and the
multi-source mixtures built from real and generated sources."""
