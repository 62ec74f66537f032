"""Honest baselines under the project's evaluation protocol: most-popular and SASRec."""
