"""SSD training losses: confidence loss over the mined anchors, smooth L1 box loss, weight decay.

Target convention (from `ssd.modeling.boxes.encode_targets`): cls_targets > 0 are positives (class labels),
0 are background candidates for mining, -1 are ignored and take no part in any loss.
The confidence loss is `loss.classification` ("softmax" or "sigmoid", `anchor_classification_loss`);
which anchors it (and the box loss) covers is `loss.hard_example_mining` (ssd.modeling.mining).
Everything is computed in float32, whatever the dtype of the model outputs.
"""

from __future__ import annotations

import tensorflow as tf

from ssd.modeling.mining import ssd_hard_negatives, tfod_hard_examples
from ssd.modeling.ssdlite import BACKBONE_DEPTHWISE_SUFFIX

NORM_SCALE_LAYER = "conv4_3_norm"
NORM_SCALE_WEIGHT = "scale"
_DECAYED_WEIGHTS = ("kernel",)
_BIAS_WEIGHTS = ("bias",)
_NORMALIZATION_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")


def background_loss(cls_logits: tf.Tensor) -> tf.Tensor:
    """[..., C] logits -> [...] -log(softmax background probability), the softmax mining score."""
    return -tf.nn.log_softmax(tf.cast(cls_logits, tf.float32), axis=-1)[..., 0]


def hard_negative_mask(cls_logits: tf.Tensor, cls_targets: tf.Tensor,
                       negative_ratio: float) -> tf.Tensor:
    """[B, A] bool: SSD's mined negatives for a softmax loss, ranked by background loss
    (`ssd.modeling.mining.ssd_hard_negatives`: per image, at most floor(negative_ratio x positives),
    equal scores to the lower anchor index)."""
    return ssd_hard_negatives(background_loss(cls_logits), cls_targets, negative_ratio)


def anchor_classification_loss(cls_logits: tf.Tensor, cls_targets: tf.Tensor,
                               classification: str) -> tf.Tensor:
    """[B, A, C] logits, [B, A] targets -> [B, A] loss per anchor, 0 for ignored anchors.

    "softmax": cross-entropy of the softmax over the C logits at the target class (0: background).
    "sigmoid": the TF Object Detection API's weighted sigmoid loss with its background class: the
      target is one-hot over all C columns including background (column 0 is 1 for a background
      anchor, 0 for a positive), each column an independent sigmoid cross-entropy, summed over C.
    """
    cls_logits = tf.cast(cls_logits, tf.float32)
    cls_targets = tf.convert_to_tensor(cls_targets, tf.int32)
    labels = tf.maximum(cls_targets, 0)
    if classification == "softmax":
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=cls_logits)
    elif classification == "sigmoid":
        one_hot = tf.one_hot(labels, tf.shape(cls_logits)[-1], dtype=tf.float32)
        loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=one_hot, logits=cls_logits),
                             axis=-1)
    else:
        raise ValueError(f"loss.classification: must be 'softmax' or 'sigmoid', got {classification!r}")
    return tf.where(cls_targets >= 0, loss, 0.0)


def mined_anchors(cls_logits: tf.Tensor, anchor_cls_loss: tf.Tensor, cls_targets: tf.Tensor,
                  loss_config, predicted_boxes: tf.Tensor | None) -> tf.Tensor:
    """[B, A] bool: the anchors the confidence loss covers, by `loss.hard_example_mining`.

    "ssd": the positives and SSD's hard negatives, ranked by background loss with softmax and by
    the anchor's (sigmoid) classification loss with sigmoid. "tfod": the API's miner
    (ssd.modeling.mining), which needs the decoded `predicted_boxes` [B, A, 4].
    """
    positive = cls_targets > 0
    if loss_config.hard_example_mining == "ssd":
        if loss_config.classification == "softmax":
            negatives = hard_negative_mask(cls_logits, cls_targets, loss_config.negative_ratio)
        else:
            negatives = ssd_hard_negatives(anchor_cls_loss, cls_targets, loss_config.negative_ratio)
        return tf.logical_or(positive, negatives)
    if loss_config.hard_example_mining == "tfod":
        if predicted_boxes is None:
            raise ValueError("loss.hard_example_mining 'tfod' runs NMS over the predicted boxes: "
                             "pass predicted_boxes (the decoded box encodings)")
        return tfod_hard_examples(anchor_cls_loss, predicted_boxes, cls_targets, loss_config)
    raise ValueError(f"loss.hard_example_mining: must be 'ssd' or 'tfod', "
                     f"got {loss_config.hard_example_mining!r}")


def smooth_l1(x: tf.Tensor, beta: float) -> tf.Tensor:
    """0.5 x^2 / beta where |x| < beta, |x| - 0.5 beta elsewhere (elementwise)."""
    abs_x = tf.abs(x)
    return tf.where(abs_x < beta, 0.5 * tf.square(x) / beta, abs_x - 0.5 * beta)


def detection_losses(cls_logits: tf.Tensor, box_encodings: tf.Tensor, cls_targets: tf.Tensor,
                     loc_targets: tf.Tensor, loss_config, normalizer: tf.Tensor | float | None = None,
                     predicted_boxes: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """The SSD multibox loss of a batch.

    Args:
      cls_logits: [B, A, C] class logits (class 0 = background); box_encodings: [B, A, 4].
      cls_targets: [B, A] int32; loc_targets: [B, A, 4] encoded ground truths.
      loss_config: a `LossConfig` (classification, hard_example_mining, negative_ratio, the miner's
        fields, smooth_l1_beta).
      normalizer: what the summed losses are divided by (after max(normalizer, 1)); defaults to
        the number of positives in this batch. A multi-replica trainer passes the global count.
      predicted_boxes: [B, A, 4] the decoded box encodings; needed by the "tfod" miner only.
    Returns:
      cls_loss: `anchor_classification_loss` summed over the mined anchors, normalized.
      loc_loss: smooth L1 summed over the 4 offsets of the positives ("tfod": the mined
        positives), normalized.
      num_positives: float32 number of positives in this batch.
      seen: [B, A] bool, the anchors the confidence loss covers (`mined_anchors`).
    """
    cls_logits = tf.cast(cls_logits, tf.float32)
    box_encodings = tf.cast(box_encodings, tf.float32)
    loc_targets = tf.cast(loc_targets, tf.float32)
    cls_targets = tf.convert_to_tensor(cls_targets, tf.int32)

    positive = cls_targets > 0
    anchor_cls_loss = anchor_classification_loss(cls_logits, cls_targets, loss_config.classification)
    kept = mined_anchors(cls_logits, anchor_cls_loss, cls_targets, loss_config, predicted_boxes)
    cls_sum = tf.reduce_sum(tf.where(kept, anchor_cls_loss, 0.0))

    box_loss = tf.reduce_sum(smooth_l1(box_encodings - loc_targets, loss_config.smooth_l1_beta),
                             axis=-1)
    located = tf.logical_and(positive, kept)  # every positive is kept except by the "tfod" NMS
    loc_sum = tf.reduce_sum(tf.where(located, box_loss, 0.0))

    num_positives = tf.reduce_sum(tf.cast(positive, tf.float32))
    if normalizer is None:
        normalizer = num_positives
    denominator = tf.maximum(tf.cast(normalizer, tf.float32), 1.0)
    return {"cls_loss": cls_sum / denominator, "loc_loss": loc_sum / denominator,
            "num_positives": num_positives, "seen": kept}


def classification_accuracy(cls_logits: tf.Tensor, cls_targets: tf.Tensor,
                            mask: tf.Tensor | None = None) -> tf.Tensor:
    """Fraction of anchors whose arg-max class equals the target, for training logs.

    Counts the anchors with cls_targets >= 0 (ignored ones never count), restricted further to
    `mask` when given (e.g. positives or'ed with `hard_negative_mask`, the anchors the loss sees).
    0 when no anchor counts.
    """
    cls_targets = tf.convert_to_tensor(cls_targets, tf.int32)
    counted = cls_targets >= 0
    if mask is not None:
        counted = tf.logical_and(counted, tf.cast(mask, tf.bool))
    predicted = tf.argmax(tf.cast(cls_logits, tf.float32), axis=-1, output_type=tf.int32)
    correct = tf.logical_and(counted, tf.equal(predicted, cls_targets))
    return tf.math.divide_no_nan(tf.reduce_sum(tf.cast(correct, tf.float32)),
                                 tf.reduce_sum(tf.cast(counted, tf.float32)))


def _weight_name(variable) -> str:
    """The last part of a Keras variable path ("fc7/bias" -> "bias")."""
    return variable.path.split("/")[-1]


def is_bias(variable) -> bool:
    """Whether `variable` is a convolution or dense bias: the variables that Caffe's recipes
    exclude from weight decay and train at `train.bias_lr_multiplier` x the learning rate."""
    return _weight_name(variable) in _BIAS_WEIGHTS


def _decay_multiplier(variable, loss_config) -> float:
    """How much of `weight_decay` a trainable variable gets, decided from its Keras path."""
    path = variable.path
    parts = path.split("/")
    name = _weight_name(variable)
    if name == NORM_SCALE_WEIGHT and NORM_SCALE_LAYER in parts[:-1]:
        return loss_config.norm_scale_decay_multiplier
    if name in _DECAYED_WEIGHTS:
        if len(parts) > 1 and parts[-2].endswith(BACKBONE_DEPTHWISE_SUFFIX):
            return 1.0 if loss_config.decay_backbone_depthwise_kernels else 0.0
        return 1.0
    if is_bias(variable):
        return 1.0 if loss_config.decay_biases else 0.0
    if name in _NORMALIZATION_WEIGHTS:
        return 0.0
    raise ValueError(f"weight decay: no rule for trainable variable {path!r} (known weights: "
                     f"kernel, bias, batch-norm gamma/beta, {NORM_SCALE_LAYER}/{NORM_SCALE_WEIGHT})")


def weight_decay_loss(model, loss_config) -> tf.Tensor:
    """weight_decay * sum of l2_loss(v) (= sum(v^2) / 2) over the model's trainable variables.

    Conv and dense kernels are decayed fully (MobileNetV2's depthwise kernels when
    `decay_backbone_depthwise_kernels`), biases when `decay_biases`, the conv4_3 L2-norm scale
    (`conv4_3_norm/scale`) at `norm_scale_decay_multiplier`, batch-norm variables not at all.
    Frozen (non-trainable) variables are left out. An unrecognised trainable variable is an error
    rather than being silently skipped.
    """
    terms = []
    for variable in model.trainable_variables:
        multiplier = _decay_multiplier(variable, loss_config)
        if multiplier:
            terms.append(multiplier * tf.nn.l2_loss(tf.cast(variable, tf.float32)))
    if not terms or loss_config.weight_decay == 0:
        return tf.constant(0.0, tf.float32)
    return loss_config.weight_decay * tf.add_n(terms)
