"""From TFRecords to training and evaluation batches: the record schema, the files, decoding, preprocessing."""
