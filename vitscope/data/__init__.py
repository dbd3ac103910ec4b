"""Reading images (and, later, datasets)."""
