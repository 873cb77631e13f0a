"""Which anchors the training loss covers: the two hard example miners (`loss.hard_example_mining`).

Target convention as in `ssd.modeling.losses`: cls_targets > 0 positives, 0 negatives (background),
-1 ignored. Both miners rank by a per-anchor score that is not differentiated through.

"ssd" (`ssd_hard_negatives`): SSD's rule. In each image the negatives with the highest score, at
  most floor(negative_ratio x positives in the image); an image without positives mines nothing.
"tfod" (`tfod_hard_examples`): the TF Object Detection API's HardExampleMiner with
  `loss_type: CLASSIFICATION`. In each image:
    1. greedy NMS over the predicted (decoded) boxes in decreasing order of classification loss: a
       box is skipped when its IoU with an already selected one is > miner_iou_threshold; at most
       miner_num_hard_examples are selected (tf.image.non_max_suppression, as the API);
    2. of the selection, every positive, and the negatives in selection order while their running
       count is <= max(min_negatives_per_image, int(negative_ratio x positives selected)).
  Ignored anchors the API lets through have zero weight in both of its losses, so leaving them
  out changes nothing. The API sums both the classification and the box loss over this set, so a
  positive that the NMS drops (its predicted box a near-copy of a costlier one's) has neither.
"""

from __future__ import annotations

import tensorflow as tf


def ssd_hard_negatives(scores: tf.Tensor, cls_targets: tf.Tensor, negative_ratio: float) -> tf.Tensor:
    """[B, A] bool: per image the top k negatives by `scores` [B, A], highest first,
    k = min(floor(negative_ratio * positives in the image), negatives in the image) (Caffe's
    integer cast). Equal scores rank the lower anchor index first."""
    cls_targets = tf.convert_to_tensor(cls_targets, tf.int32)
    negative = tf.equal(cls_targets, 0)
    num_positive = tf.reduce_sum(tf.cast(cls_targets > 0, tf.float32), axis=1)
    num_negative = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1)
    num_mined = tf.minimum(tf.cast(tf.floor(negative_ratio * num_positive), tf.int32), num_negative)

    scores = tf.where(negative, tf.stop_gradient(tf.cast(scores, tf.float32)), -float("inf"))
    order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1)  # inverse permutation: the rank of each anchor
    return tf.logical_and(negative, rank < num_mined[:, None])


def _tfod_image(losses: tf.Tensor, boxes: tf.Tensor, cls_targets: tf.Tensor, loss_config) -> tf.Tensor:
    """One image: [A] losses, [A, 4] boxes, [A] targets -> [A] bool, the mined set."""
    selected = tf.image.non_max_suppression(
        boxes, losses, max_output_size=loss_config.miner_num_hard_examples,
        iou_threshold=loss_config.miner_iou_threshold)
    targets = tf.gather(cls_targets, selected)
    positive = targets > 0
    negative = tf.equal(targets, 0)
    num_positive = tf.reduce_sum(tf.cast(positive, tf.int32))
    # float32 product, truncated: the API's cast of max_negatives_per_positive * positives
    by_ratio = tf.cast(tf.constant(loss_config.negative_ratio, tf.float32)
                       * tf.cast(num_positive, tf.float32), tf.int32)
    max_negatives = tf.maximum(loss_config.min_negatives_per_image, by_ratio)
    first_negatives = tf.logical_and(negative, tf.cumsum(tf.cast(negative, tf.int32)) <= max_negatives)
    kept = tf.boolean_mask(selected, tf.logical_or(positive, first_negatives))
    hits = tf.scatter_nd(kept[:, tf.newaxis], tf.ones_like(kept), tf.shape(losses, out_type=kept.dtype))
    return hits > 0


def tfod_hard_examples(cls_losses: tf.Tensor, predicted_boxes: tf.Tensor, cls_targets: tf.Tensor,
                       loss_config) -> tf.Tensor:
    """[B, A] bool: the anchors the API's miner keeps (module docstring).

    cls_losses: [B, A] per-anchor classification loss (0 for ignored anchors, as the API weighs
    them); predicted_boxes: [B, A, 4] the decoded box predictions, [ymin, xmin, ymax, xmax];
    loss_config: negative_ratio, miner_num_hard_examples, miner_iou_threshold,
    min_negatives_per_image.
    """
    cls_losses = tf.stop_gradient(tf.cast(cls_losses, tf.float32))
    predicted_boxes = tf.stop_gradient(tf.cast(predicted_boxes, tf.float32))
    cls_targets = tf.convert_to_tensor(cls_targets, tf.int32)
    return tf.map_fn(lambda args: _tfod_image(*args, loss_config),
                     (cls_losses, predicted_boxes, cls_targets), fn_output_signature=tf.bool)
