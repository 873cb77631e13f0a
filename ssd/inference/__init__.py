"""Images in, detections out: the Detector, SavedModel and TensorFlow Lite export, batch-norm folding."""
