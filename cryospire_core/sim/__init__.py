"""Simulated data with ground truth: phantoms and particle images."""
