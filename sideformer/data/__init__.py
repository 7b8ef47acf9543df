"""Datasets in the metadata.json layout, their checks, transforms and synthetic scenes."""
