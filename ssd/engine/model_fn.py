"""The SSD model function for `ssd.engine.estimator.Estimator`: loss, learning rate, optimizer, summaries.

`SSDModelFn(config, context)` is created once per Estimator inside the strategy scope and holds
the config, the Keras network, the default boxes and the optimizer. Calling it with
`(features, labels)` gives a training step's `EstimatorSpec`: total loss = cls_loss +
loc_loss + l2_loss (SSD_FACTS "Loss"). The confidence and box losses are sums over the global
batch divided by N, the number of positive default boxes in the GLOBAL batch: each replica
divides its own sums by N all-reduced across replicas. Keras 3 optimizers SUM gradients across
replicas, so the replicas' shares add up to the loss (and gradient) of one replica on the whole
batch; the weight decay term is added once, as 1/num_replicas of it on every replica. Logged
alongside: each component, `accuracy` (argmax = target over the anchors the loss sees: positives
and mined negatives) and `num_positives` (global N).

Inference (evaluation, prediction, export) is `SSDInference` (`SSDModelFn.inference`): the one
inference path, `ssd.inference.detector.Detector`, over a checkpoint, so that what eval.py,
visualize.py and the SavedModel compute is what the Estimator computes. It reads checkpoints into
a float32 network without XLA, as eval.py does by default, whatever precision training runs in.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ssd.modeling import boxes as box_ops
from ssd.modeling.anchors import generate_anchors
from ssd.config.loading import Config
from ssd.engine import checkpoint_evaluation, evaluation_reports
from ssd.engine.estimator import EstimatorSpec, ModelContext, ModelFunction
from ssd.inference.detector import Detector, build_inference_model, unbatch
from ssd.inference.saved_model import export_saved_model
from ssd.modeling.checkpoints import restore_checkpoint
from ssd.engine.optimizers import gradient_multiplier, make_optimizer
from ssd.modeling.losses import classification_accuracy, detection_losses, weight_decay_loss
from ssd.modeling.build import build_model
from ssd.data.preprocessing import to_display

SUMMARY_IMAGES = 3  # training images drawn with their ground truth for TensorBoard


class SSDInference:
    """The Estimator's evaluate / predict / export for SSD: the Detector over a checkpoint."""

    def __init__(self, config: Config, model_dir: str):
        self.config = config
        self.model_dir = model_dir
        self._detector: Detector | None = None  # built on first use

    def _built(self) -> Detector:
        if self._detector is None:
            self._detector = Detector(build_inference_model(self.config), self.config)
        return self._detector

    def _restored(self, checkpoint_path: str) -> tuple[Detector, int]:
        detector = self._built()
        return detector, restore_checkpoint(detector.model, checkpoint_path, self.config)

    def evaluate(self, checkpoint_path: str, input_fn, data_files=None, write_summaries: bool = True) -> dict:
        """eval.metric's summary of the checkpoint, as eval.py computes it, into TensorBoard
        (model_dir/eval) with `write_summaries`; the COCO metric finds the category map beside
        `data_files`. The summary's keys: "mAP" (VOC) or the 12 numbers (COCO), "classes",
        "num_images", "metric", "step", "checkpoint"."""
        return checkpoint_evaluation.evaluate_checkpoint(
            self._built(), checkpoint_path, input_fn, self.config.eval.metric, output_dir=None,
            summary_dir=evaluation_reports.summary_dir(self.model_dir) if write_summaries else None,
            print_table=None, data_files=data_files)

    def predict(self, checkpoint_path: str, dataset):
        """The Detector's outputs (numpy), plus image_id when the features have it, per example."""
        detector, _ = self._restored(checkpoint_path)
        for element in dataset:
            features = element[0] if isinstance(element, tuple) and len(element) == 2 else element
            yield from unbatch(detector.detect_features(features))

    def export(self, checkpoint_path: str, export_dir: str) -> int:
        """The serving SavedModel (ssd.inference.saved_model) of the checkpoint; returns its step."""
        detector, step = self._restored(checkpoint_path)
        export_saved_model(detector.model, self.config, export_dir)
        return step


class SSDModelFn(ModelFunction):
    """Holds the config, SSD network, default boxes and optimizer; called for a training step. Its
    `gradient_multiplier(variable)` gives the training step Caffe's bias learning rate."""

    inference = SSDInference  # what the Estimator evaluates, predicts with and exports through

    def __init__(self, config: Config, context: ModelContext):
        self.config = config
        self.model = build_model(config)
        self.optimizer = make_optimizer(config.train, context.global_step)
        self.anchors = tf.constant(generate_anchors(config), tf.float32)
        self._network = context.compile(self.model)

    def gradient_multiplier(self, variable) -> float:
        """Read by the training step (`ssd.engine.training.make_train_step`) for each variable."""
        return gradient_multiplier(variable, self.config.train)

    def __call__(self, features, labels) -> EstimatorSpec:
        cls_logits, box_encodings = self._network(features["image"], training=True)
        return self._train_spec(features, labels, cls_logits, box_encodings)

    def _train_spec(self, features, labels, cls_logits, box_encodings) -> EstimatorSpec:
        cls_targets = labels["cls_targets"]
        replica = tf.distribute.get_replica_context()
        positive = cls_targets > 0
        # the losses divide by the global count of positives, which only the replicas together
        # know: compute that count first, and the mined anchors once, inside the losses
        global_positives = tf.stop_gradient(replica.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.cast(positive, tf.float32))))
        losses = detection_losses(cls_logits, box_encodings, cls_targets, labels["loc_targets"],
                                  self.config.loss, normalizer=global_positives,
                                  predicted_boxes=self._predicted_boxes(box_encodings))
        seen = losses["seen"]
        local_seen = tf.reduce_sum(tf.cast(seen, tf.float32))
        global_seen = tf.stop_gradient(replica.all_reduce(tf.distribute.ReduceOp.SUM, local_seen))
        l2_loss = weight_decay_loss(self.model, self.config.loss) / replica.num_replicas_in_sync
        loss = losses["cls_loss"] + losses["loc_loss"] + l2_loss
        accuracy = classification_accuracy(cls_logits, cls_targets, mask=seen)
        correct_share = accuracy * local_seen / tf.maximum(global_seen, 1.0)
        scalars = {"cls_loss": losses["cls_loss"], "loc_loss": losses["loc_loss"], "l2_loss": l2_loss,
                   "accuracy": correct_share, "num_positives": losses["num_positives"]}
        summary = {"image": features["image"][:SUMMARY_IMAGES],
                   "cls_targets": cls_targets[:SUMMARY_IMAGES],
                   "loc_targets": labels["loc_targets"][:SUMMARY_IMAGES]}
        return EstimatorSpec(loss=loss, scalars=scalars, summary_tensors=summary)

    def _predicted_boxes(self, box_encodings) -> tf.Tensor | None:
        """The decoded boxes the "tfod" miner's NMS runs over (unclipped, as the API's); None
        for the "ssd" miner, which does not need them."""
        if self.config.loss.hard_example_mining != "tfod":
            return None
        return box_ops.decode(tf.cast(box_encodings, tf.float32), self.anchors[tf.newaxis],
                              self.config.matching.variances)

    def summary_images(self, tensors) -> dict[str, tf.Tensor]:
        """Training images (un-preprocessed, RGB) with the ground truth of their positive boxes."""
        images = to_display(tensors["image"], self.config)
        decoded = box_ops.decode(tf.cast(tensors["loc_targets"], tf.float32), self.anchors,
                                 self.config.matching.variances).numpy()
        positive = tensors["cls_targets"].numpy() > 0
        drawn = []
        for image, boxes, mask in zip(tf.unstack(images), decoded, positive):
            # every positive default box of an object decodes to that object's box
            gt_boxes = np.unique(np.round(boxes[mask], 5), axis=0).astype(np.float32)
            if len(gt_boxes):
                image = tf.image.draw_bounding_boxes(image[tf.newaxis], gt_boxes[tf.newaxis],
                                                     np.array([[0.0, 1.0, 0.0]], np.float32))[0]
            drawn.append(image)
        return {"train/images_with_ground_truth": tf.stack(drawn)}
