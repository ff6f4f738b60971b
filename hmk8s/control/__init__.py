"""Putting a trained agent to work: loading it, guarding it, and running it as a controller."""
