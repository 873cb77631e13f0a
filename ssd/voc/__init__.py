"""PASCAL VOC: annotation XML, pixel coordinates, result files, the metric, its table and scorer command line."""
