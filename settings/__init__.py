"""inferline.settings."""
