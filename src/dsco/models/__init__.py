"""Diffusion backends behind one interface, and classifiers by name."""
