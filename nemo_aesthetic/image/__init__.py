"""Image decoding, embedding models and classifiers on embeddings."""
