"""Trained weights of other frameworks read into this project's models: file formats and their layouts."""
