"""SSD: Single Shot MultiBox Detector (SSD300 / SSD512 with a VGG16 backbone) in TensorFlow 2.

Box convention, held everywhere inside this package: normalized `[ymin, xmin, ymax, xmax]` in
[0, 1] relative to the image. VOC's 1-based inclusive pixel coordinates appear only at the file
boundaries (the converter's XML reader and the VOC result files).
"""

__version__ = "0.1.0"
