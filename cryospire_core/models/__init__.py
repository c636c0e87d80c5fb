"""The models of each stage and how they are fitted: consensus, part discovery, parts, the hierarchical model, latents and the shared training loop."""
