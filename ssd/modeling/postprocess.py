"""From network outputs to detections: decode, score, per-class NMS, keep the best per image.

Batched TensorFlow ops with static output shapes, usable inside tf.function and a SavedModel
serving signature (the batch size may be unknown). Per image, following SSD's DetectionOutput:
  1. decode the box encodings against the default boxes and clip them to the image ([0, 1]);
     clipping comes first, so NMS and the size filter see the clipped boxes (as in the seed);
  2. class scores from the logits (`object_class_scores`: softmax over the classes, or a sigmoid per
     class when loss.classification is "sigmoid"); for every object class (background 0 dropped)
     keep the boxes with score > eval.score_threshold and, when eval.min_box_size > 0, height and
     width > min_box_size;
  3. per class, the eval.pre_nms_top_k best of those, then greedy NMS: a box is dropped when its IoU
     with a higher-scoring kept box of the same class is > eval.nms_iou_threshold;
  4. the eval.max_detections best survivors of all classes.

Ties are broken deterministically: equal scores within a class go to the lower default-box index
(tf.math.top_k and the NMS kernel both prefer the lower index), and across classes in step 4 to the
lower class, then to the earlier survivor of that class.

Outputs are padded to K = eval.max_detections: rows past num_detections have score 0, class 0 and
an all-zero box.

Step 3 has two implementations with identical results, chosen by `postprocess(..., nms=...)`:
  "combined"   (default) tf.image.combined_non_max_suppression, one multi-threaded kernel for all
               (image, class) pairs: the fast path in TensorFlow;
  "per_class"  one NonMaxSuppressionV4 per (image, class), in a loop unrolled when the graph is
               built (a tf.map_fn over images when the batch size is unknown). Every op it uses is
               a TensorFlow Lite built-in, so a model with post-processing inside converts without
               Flex ops (combined_non_max_suppression has no TFLite kernel).
Both are given rank keys rather than scores (see `_rank_keys`), so neither depends on how its kernel
orders equal scores, and both stop a class's greedy loop after min(pre_nms_top_k, max_detections)
survivors: a class's survivors beyond its first max_detections cannot reach step 4, where at least
max_detections of the same class score as high and come first. The result is unchanged; the loop,
which compares each candidate with every survivor so far, does a fraction of the work when many
candidates survive (an untrained network, or many classes).
"""

from __future__ import annotations

import tensorflow as tf

from ssd.modeling import boxes as box_ops

_NOT_A_CANDIDATE = -1.0  # score given to boxes that failed the threshold or size filter
NMS_IMPLEMENTATIONS = ("combined", "per_class")


def _static_dim(tensor: tf.Tensor, axis: int, what: str) -> int:
    size = tensor.shape[axis]
    if size is None:
        raise ValueError(f"postprocess: the number of {what} (axis {axis} of shape {tensor.shape}) "
                         f"must be known when the graph is built")
    return int(size)


def _rank_keys(candidate_scores: tf.Tensor, k: int, score_threshold: float) -> tf.Tensor:
    """Scores [..., k] sorted decreasingly -> NMS keys: (k - r) / k for candidate r, -1 when its
    score is not above score_threshold.

    NMS kernels order equal scores in their own ways; the keys are distinct and follow the
    candidates' (deterministic) order, so the greedy loop visits exactly the sequence of plain NMS.
    """
    rank = tf.range(k, dtype=tf.float32)
    return tf.where(candidate_scores > score_threshold, (k - rank) / k, -1.0)


def _combined_nms(candidate_boxes: tf.Tensor, keys: tf.Tensor, iou_threshold: float,
                  max_survivors: int) -> tf.Tensor:
    """All (image, class) pairs in tf.image.combined_non_max_suppression, at most `max_survivors`
    per class; survivors' ranks are read back from their keys."""
    k = _static_dim(keys, 2, "candidates per class")
    num_classes = _static_dim(keys, 1, "object classes")
    batch_size = tf.shape(keys)[0]
    pool = num_classes * k
    most_kept = num_classes * max_survivors
    _, kept_keys, kept_classes, num_kept = tf.image.combined_non_max_suppression(
        tf.transpose(candidate_boxes, [0, 2, 1, 3]), tf.transpose(keys, [0, 2, 1]),
        max_output_size_per_class=max_survivors, max_total_size=most_kept, iou_threshold=iou_threshold,
        score_threshold=0.0, pad_per_class=False, clip_boxes=False)
    kept_rank = tf.cast(tf.round(k - tf.cast(kept_keys, tf.float64) * k), tf.int32)
    slot = tf.cast(kept_classes, tf.int32) * k + kept_rank
    valid = tf.range(most_kept)[tf.newaxis, :] < num_kept[:, tf.newaxis]
    slot = tf.where(valid, slot, pool)  # padding rows land in a spare slot that is cut off
    image = tf.broadcast_to(tf.range(batch_size)[:, tf.newaxis], tf.shape(slot))
    hits = tf.scatter_nd(tf.stack([image, slot], axis=-1), tf.ones_like(slot), [batch_size, pool + 1])
    return tf.reshape(hits[:, :pool] > 0, [batch_size, num_classes, k])


def _image_per_class_nms(boxes: tf.Tensor, keys: tf.Tensor, iou_threshold: float,
                         max_survivors: int) -> tf.Tensor:
    """One image: boxes [C', k, 4], keys [C', k] -> [C', k] survivors, one NMS per class.

    NonMaxSuppressionV4 (TFLite's NON_MAX_SUPPRESSION_V4) returns the selected candidates' indices
    padded to max_survivors and how many are valid; as the keys decrease with the rank, an index
    is the rank.
    """
    num_classes = _static_dim(keys, 0, "object classes")
    k = _static_dim(keys, 1, "candidates per class")
    masks = []
    for c in range(num_classes):
        selected, num_valid = tf.raw_ops.NonMaxSuppressionV4(
            boxes=boxes[c], scores=keys[c], max_output_size=max_survivors, iou_threshold=iou_threshold,
            score_threshold=0.0, pad_to_max_output_size=True)
        valid = tf.range(max_survivors) < num_valid  # the padding indices (0) are not selections
        masks.append(tf.reduce_max(tf.one_hot(selected, k) * tf.cast(valid, tf.float32)[:, tf.newaxis],
                                   axis=0) > 0)
    return tf.stack(masks)


def _per_class_nms(candidate_boxes: tf.Tensor, keys: tf.Tensor, iou_threshold: float,
                   max_survivors: int) -> tf.Tensor:
    """[B, C', k, 4] boxes, [B, C', k] keys -> [B, C', k] survivors, with TFLite built-ins only."""
    batch_size = keys.shape[0]
    if batch_size is not None:
        return tf.stack([_image_per_class_nms(candidate_boxes[b], keys[b], iou_threshold, max_survivors)
                         for b in range(batch_size)])
    return tf.map_fn(lambda args: _image_per_class_nms(args[0], args[1], iou_threshold, max_survivors),
                     (candidate_boxes, keys), fn_output_signature=tf.bool)


def _check_shapes(cls_logits: tf.Tensor, anchors: tf.Tensor) -> tuple[int, int]:
    """(default boxes, classes incl. background) of the network's outputs, which must fit."""
    num_anchors = _static_dim(cls_logits, 1, "default boxes")
    num_classes = _static_dim(cls_logits, 2, "classes")
    if _static_dim(anchors, 0, "default boxes") != num_anchors:
        raise ValueError(f"postprocess: {anchors.shape[0]} default boxes but the network outputs "
                         f"{num_anchors} per image")
    if num_classes < 2:
        raise ValueError(f"postprocess: need background + at least one class, got {num_classes} logits")
    return num_anchors, num_classes


def object_class_scores(cls_logits: tf.Tensor, classification: str) -> tf.Tensor:
    """[B, A, C] logits -> [B, A, C-1] float32 scores of the object classes 1..C-1.

    The score of the loss the network was trained with (`loss.classification`): "softmax" over all
    C logits, or "sigmoid" of each logit (the TF Object Detection API's `score_converter:
    SIGMOID`); either way the background column is computed, then dropped, as the API does.
    """
    num_classes = _static_dim(cls_logits, 2, "classes")
    logits = tf.cast(cls_logits, tf.float32)
    if classification == "softmax":
        scores = tf.nn.softmax(logits, axis=-1)
    elif classification == "sigmoid":
        scores = tf.sigmoid(logits)
    else:
        raise ValueError(f"loss.classification: must be 'softmax' or 'sigmoid', got {classification!r}")
    # the object classes by gather rather than a slice: TFLite's int8 quantizer requantizes a
    # slice of the softmax to int8 (steps of 1/256) even when told to keep post-processing float
    return tf.gather(scores, tf.range(1, num_classes), axis=2)


def _candidate_scores(cls_logits: tf.Tensor, boxes: tf.Tensor, config) -> tf.Tensor:
    """Steps 1-2: object class scores [B, C-1, A], _NOT_A_CANDIDATE below the score threshold
    or for boxes no larger than min_box_size."""
    eval_config = config.eval
    scores = tf.transpose(object_class_scores(cls_logits, config.loss.classification), [0, 2, 1])
    eligible = scores > eval_config.score_threshold
    if eval_config.min_box_size > 0:
        heights = boxes[..., 2] - boxes[..., 0]
        widths = boxes[..., 3] - boxes[..., 1]
        large = (heights > eval_config.min_box_size) & (widths > eval_config.min_box_size)
        eligible &= large[:, tf.newaxis, :]
    return tf.where(eligible, scores, _NOT_A_CANDIDATE)


def _best_of_image(kept_scores: tf.Tensor, top_boxes: tf.Tensor, eval_config) -> dict[str, tf.Tensor]:
    """Step 4: the highest-scoring survivors of each image, padded to max_detections rows."""
    batch_size = tf.shape(kept_scores)[0]
    k = kept_scores.shape[2]
    max_detections = eval_config.max_detections
    # all survivors of an image in one row, class-major, so top_k's lower-index rule prefers the
    # lower class and then the higher-ranked candidate on equal scores
    pool = kept_scores.shape[1] * k
    pool_scores = tf.reshape(kept_scores, [batch_size, pool])
    pool_boxes = tf.reshape(top_boxes, [batch_size, pool, 4])
    take = min(max_detections, pool)
    final_scores, final_index = tf.math.top_k(pool_scores, k=take, sorted=True)
    final_boxes = tf.gather(pool_boxes, final_index, batch_dims=1)
    final_classes = final_index // k + 1

    valid = final_scores > eval_config.score_threshold
    final_scores = tf.where(valid, final_scores, 0.0)
    final_classes = tf.where(valid, final_classes, 0)
    final_boxes = tf.where(valid[..., tf.newaxis], final_boxes, 0.0)
    if take < max_detections:
        pad = max_detections - take
        final_scores = tf.pad(final_scores, [[0, 0], [0, pad]])
        final_classes = tf.pad(final_classes, [[0, 0], [0, pad]])
        final_boxes = tf.pad(final_boxes, [[0, 0], [0, pad], [0, 0]])
    return {
        "boxes": final_boxes,
        "scores": final_scores,
        "classes": tf.cast(final_classes, tf.int32),
        "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
    }


def postprocess(cls_logits: tf.Tensor, box_encodings: tf.Tensor, anchors, config,
                nms: str = "combined") -> dict[str, tf.Tensor]:
    """cls_logits [B, A, C], box_encodings [B, A, 4], anchors [A, 4] -> padded detections.

    `nms`: "combined" or "per_class", the implementation of step 3 (module docstring).

    Returns dict(boxes [B, K, 4] normalized [ymin, xmin, ymax, xmax], scores [B, K] float32,
    classes [B, K] int32 (1-based, 0 on padding), num_detections [B] int32), K = eval.max_detections,
    rows sorted by decreasing score.
    """
    if nms not in NMS_IMPLEMENTATIONS:
        raise ValueError(f"postprocess: nms must be one of {NMS_IMPLEMENTATIONS}, got {nms!r}")
    ev = config.eval
    cls_logits = tf.convert_to_tensor(cls_logits)
    box_encodings = tf.convert_to_tensor(box_encodings)
    anchors = tf.convert_to_tensor(anchors, dtype=tf.float32)
    num_anchors, _ = _check_shapes(cls_logits, anchors)
    k = min(ev.pre_nms_top_k, num_anchors)

    boxes = box_ops.decode(tf.cast(box_encodings, tf.float32), anchors[tf.newaxis], config.matching.variances)
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    scores = _candidate_scores(cls_logits, boxes, config)  # [B, C-1, A]
    top_scores, top_anchor = tf.math.top_k(scores, k=k, sorted=True)  # [B, C-1, k]
    top_boxes = tf.gather(boxes, top_anchor, batch_dims=1)  # [B, C-1, k, 4]

    keys = _rank_keys(top_scores, k, ev.score_threshold)
    max_survivors = min(k, ev.max_detections)
    if nms == "combined":
        survives = _combined_nms(top_boxes, keys, ev.nms_iou_threshold, max_survivors)
    else:
        survives = _per_class_nms(top_boxes, keys, ev.nms_iou_threshold, max_survivors)
    kept_scores = tf.where(survives, top_scores, _NOT_A_CANDIDATE)
    return _best_of_image(kept_scores, top_boxes, ev)


def to_pixels(boxes: tf.Tensor, original_shape: tf.Tensor) -> tf.Tensor:
    """Normalized boxes [B, K, 4] -> continuous pixel edges [B, K, 4] (ymin*H, xmin*W, ymax*H, xmax*W).

    original_shape: [B, 2] (height, width). A box covering the whole image becomes [0, 0, H, W].
    """
    boxes = tf.convert_to_tensor(boxes)
    hw = tf.cast(original_shape, boxes.dtype)
    return boxes * tf.concat([hw, hw], axis=-1)[:, tf.newaxis, :]
