"""Backbone initialization from ImageNet-trained weights (Keras files, TF-slim checkpoints)."""
