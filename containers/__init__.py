"""inferline.containers."""
