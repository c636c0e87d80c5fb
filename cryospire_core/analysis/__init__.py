"""What a trained run says: latent-space analysis, the explorer's model, map-quality metrics and part scores."""
