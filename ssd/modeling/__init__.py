"""The networks (SSD300/512-VGG16, SSDLite-MobileNetV2), default boxes, box coding, losses, post-processing, checkpoints."""
