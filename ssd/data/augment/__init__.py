"""SSD's training augmentation: the recipe and its photometric, zoom-out/crop and resize steps."""
