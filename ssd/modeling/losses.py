"""SSD training losses: confidence loss with hard negative mining, smooth L1 box loss, weight decay.

Target convention (from `ssd.modeling.boxes.encode_targets`): cls_targets > 0 are positives (class labels),
0 are background candidates for mining, -1 are ignored and take no part in any loss.
Everything is computed in float32, whatever the dtype of the model outputs.
"""

from __future__ import annotations

import tensorflow as tf

from ssd.modeling.ssdlite import BACKBONE_DEPTHWISE_SUFFIX

NORM_SCALE_LAYER = "conv4_3_norm"
NORM_SCALE_WEIGHT = "scale"
_DECAYED_WEIGHTS = ("kernel",)
_BIAS_WEIGHTS = ("bias",)
_NORMALIZATION_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")


def background_loss(cls_logits: tf.Tensor) -> tf.Tensor:
    """[..., C] logits -> [...] -log(softmax background probability), the mining score."""
    return -tf.nn.log_softmax(tf.cast(cls_logits, tf.float32), axis=-1)[..., 0]


def hard_negative_mask(cls_logits: tf.Tensor, cls_targets: tf.Tensor,
                       negative_ratio: float) -> tf.Tensor:
    """[B, A] bool: the negatives kept for the confidence loss, chosen per image.

    In each image the background anchors (cls_targets == 0) are ranked by background loss, highest
    first, and the top k are kept, k = min(floor(negative_ratio * positives in the image),
    negatives in the image) (Caffe's integer cast). Equal scores rank the lower anchor index first.
    The ranking is not differentiated through.
    """
    cls_targets = tf.convert_to_tensor(cls_targets, tf.int32)
    negative = tf.equal(cls_targets, 0)
    num_positive = tf.reduce_sum(tf.cast(cls_targets > 0, tf.float32), axis=1)
    num_negative = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1)
    num_mined = tf.minimum(tf.cast(tf.floor(negative_ratio * num_positive), tf.int32), num_negative)

    scores = tf.stop_gradient(background_loss(cls_logits))
    scores = tf.where(negative, scores, -float("inf"))
    order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1)  # inverse permutation: the rank of each anchor
    return tf.logical_and(negative, rank < num_mined[:, None])


def smooth_l1(x: tf.Tensor, beta: float) -> tf.Tensor:
    """0.5 x^2 / beta where |x| < beta, |x| - 0.5 beta elsewhere (elementwise)."""
    abs_x = tf.abs(x)
    return tf.where(abs_x < beta, 0.5 * tf.square(x) / beta, abs_x - 0.5 * beta)


def detection_losses(cls_logits: tf.Tensor, box_encodings: tf.Tensor, cls_targets: tf.Tensor,
                     loc_targets: tf.Tensor, loss_config, normalizer: tf.Tensor | float | None = None
                     ) -> dict[str, tf.Tensor]:
    """The SSD multibox loss of a batch.

    Args:
      cls_logits: [B, A, C] class logits (class 0 = background); box_encodings: [B, A, 4].
      cls_targets: [B, A] int32; loc_targets: [B, A, 4] encoded ground truths.
      loss_config: a `LossConfig` (negative_ratio, smooth_l1_beta).
      normalizer: what the summed losses are divided by (after max(normalizer, 1)); defaults to
        the number of positives in this batch. A multi-replica trainer passes the global count.
    Returns:
      cls_loss: softmax cross-entropy summed over positives and mined negatives, normalized.
      loc_loss: smooth L1 summed over the 4 offsets of the positives, normalized.
      num_positives: float32 number of positives in this batch.
      seen: [B, A] bool, the anchors the confidence loss covers (positives and mined negatives).
    """
    cls_logits = tf.cast(cls_logits, tf.float32)
    box_encodings = tf.cast(box_encodings, tf.float32)
    loc_targets = tf.cast(loc_targets, tf.float32)
    cls_targets = tf.convert_to_tensor(cls_targets, tf.int32)

    positive = cls_targets > 0
    kept = tf.logical_or(positive,
                         hard_negative_mask(cls_logits, cls_targets, loss_config.negative_ratio))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(cls_targets, 0), logits=cls_logits)
    cls_sum = tf.reduce_sum(tf.where(kept, cross_entropy, 0.0))

    box_loss = tf.reduce_sum(smooth_l1(box_encodings - loc_targets, loss_config.smooth_l1_beta),
                             axis=-1)
    loc_sum = tf.reduce_sum(tf.where(positive, box_loss, 0.0))

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
