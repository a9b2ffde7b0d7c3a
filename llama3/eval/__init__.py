"""Model quality measurements: perplexity over a text and KL divergence against a reference."""
