"""COCO: category ids, pixel coordinates, results JSON, the pycocotools metric and its scorer command line."""
