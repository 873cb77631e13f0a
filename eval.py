r"""Evaluates a trained SSD on a test set with the PASCAL VOC or the COCO metric.

  python eval.py --model_dir=runs/ssd300 --data_dir=tfrecords/voc07_test-* \
      [--checkpoint_path=runs/ssd300/ckpt-120000] [--metric=voc07|voc12|coco] [--output_dir=DIR]
  python eval.py --model_dir=runs/ssd300 --data_dir=tfrecords/voc07_test-* --watch \
      [--watch_timeout_secs=3600] [--watch_interval_secs=30]
  python eval.py --exported_model=exported/ssd300 --data_dir=tfrecords/voc07_test-* \
      [--metric=...] [--output_dir=DIR]

The config is the one training saved in model_dir/config.json; the checkpoint is model_dir's
latest unless --checkpoint_path is given. Prints the per-class AP table and the mAP, and writes
into <output_dir>/<metric> (--output_dir defaults to model_dir/eval_<step>; each metric has its
own directory, so evaluating a checkpoint with another metric keeps the first one's files): the
VOC result files (results/
comp4_det_test_<class>.txt), summary.json (metric, per-class APs, mAP, step, checkpoint, number
of images) and precision_recall.png. The mAP and per-class APs also go to TensorBoard
(model_dir/eval) at the checkpoint's step.

--metric=coco (pycocotools' COCOeval) prints COCO's 12 numbers (AP@[.5:.95], AP50, AP75,
small/medium/large, AR@1/10/100) and a per-class AP table, and writes detections.json (a COCO
results JSON: image_id, category_id, bbox [x, y, w, h] in original-image pixels, score), summary.json
(the numbers unrounded and per-class APs under the keys of `python -m ssd.coco.eval --output_json`,
plus step and checkpoint) and, for records without a COCO category map (VOC-format data),
ground_truth.json, the COCO annotations built from the records that the detections were scored
against. Records converted by dataset/convert_coco.py are scored with COCO's own image and
category ids (the map `<name>_categories.json` beside the shards; its names must be the model's
classes). TensorBoard gets the 12 numbers ("coco/AP", ...) and per-class APs ("coco_classes/<name>").

--watch evaluates every new checkpoint as training writes it (the newest when several are
waiting), each into <output_dir or model_dir>/eval_<step>/<metric>, and stops after evaluating the
checkpoint at train.max_steps or when no new checkpoint appears for --watch_timeout_secs.

--exported_model scores what export.py wrote instead of a checkpoint: a SavedModel directory, a
.tflite file or the directory holding model.tflite (ssd.engine.exported_evaluation). The config
and class names are the ones exported beside the model; the SavedModel gets the encoded images,
the TFLite model each image resized to uint8 S x S as an app does. Same tables and report files;
summary.json adds exported_model, format and quantize (step and checkpoint from the export's
export.json). Reports go to <--output_dir>/<metric>, output_dir default beside the model (<model>_eval:
exported/ssd300_eval, exported/lite/model_eval for exported/lite/model.tflite); nothing to
TensorBoard.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval.py` from anywhere: make `ssd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

from absl import app, flags

from ssd.config import loading as config_lib

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Training directory: config.json and checkpoints.")
flags.DEFINE_string("exported_model", None, "Score an exported model instead of a checkpoint: a "
                    "SavedModel directory, a .tflite file or export.py's directory holding model.tflite.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix (e.g. model_dir/ckpt-1000) or a "
                    "directory (its latest); default: the latest in --model_dir.")
flags.DEFINE_string("data_dir", None, "Test TFRecords: a glob, comma-separated globs, or a directory "
                    "holding one data set's *-of-* shards.")
flags.DEFINE_enum("metric", None, ["voc07", "voc12", "coco"], "voc07: 11-point AP; voc12: all-point "
                  "AP; coco: COCO AP@[.5:.95] and its 12 numbers. Default: eval.metric of the config.")
flags.DEFINE_string("output_dir", None, "Reports go into its subdirectory named after the metric; "
                    "default model_dir/eval_<step> (with --exported_model: <model>_eval beside it).")
flags.DEFINE_integer("batch_size", None, "Images per inference call; default eval.batch_size.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Inference precision.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the network (post-processing is not).")
flags.DEFINE_bool("watch", False, "Evaluate each new checkpoint as training writes it.")
flags.DEFINE_float("watch_timeout_secs", 3600.0, "With --watch: stop when no new checkpoint "
                   "appears for this long (<= 0: wait forever).")
flags.DEFINE_float("watch_interval_secs", 30.0, "With --watch: seconds between looks for a new checkpoint.")


CHECKPOINT_ONLY_FLAGS = ("model_dir", "checkpoint_path", "precision", "jit_compile", "watch",
                         "watch_timeout_secs", "watch_interval_secs")


def evaluate_exported_model() -> None:
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required")
    given = [f"--{name}" for name in CHECKPOINT_ONLY_FLAGS if FLAGS[name].present]
    if given:
        raise app.UsageError(f"{', '.join(given)}: for checkpoints only, not with --exported_model")

    from ssd.engine.exported_evaluation import evaluate_exported

    # a bad model, config or data set raises a UserError: one line (cli.run)
    summary = evaluate_exported(FLAGS.exported_model, FLAGS.data_dir, metric=FLAGS.metric,
                                output_dir=FLAGS.output_dir, batch_size=FLAGS.batch_size)
    print(f"{FLAGS.exported_model}: reports in {summary['output_dir']}")


def main(argv) -> None:
    cli.kernels_for_precision(FLAGS.precision)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.exported_model:
        return evaluate_exported_model()
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir (or --exported_model) is required")
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required")

    if FLAGS.watch and FLAGS.checkpoint_path:
        raise app.UsageError("--watch follows the checkpoints of --model_dir; do not give "
                             "--checkpoint_path")

    from ssd.data import record_classes
    from ssd.engine.checkpoint_evaluation import run_evaluation

    # a bad config, checkpoint or data set raises a UserError: one line (cli.run)
    config = config_lib.with_eval_batch_size(config_lib.load_saved_config(FLAGS.model_dir),
                                             FLAGS.batch_size, FLAGS.model_dir)
    record_classes.check_record_classes(FLAGS.data_dir, config.data.class_names,
                                       remedy=record_classes.evaluation_remedy)
    timeout = FLAGS.watch_timeout_secs if FLAGS.watch_timeout_secs > 0 else None
    summaries = run_evaluation(
        config, FLAGS.model_dir, FLAGS.data_dir, checkpoint_path=FLAGS.checkpoint_path,
        metric=FLAGS.metric, output_dir=FLAGS.output_dir, watch=FLAGS.watch,
        watch_timeout_secs=timeout, watch_interval_secs=FLAGS.watch_interval_secs,
        precision=FLAGS.precision, jit_compile=FLAGS.jit_compile)
    for summary in summaries:
        if "output_dir" in summary:
            print(f"step {summary['step']}: reports in {summary['output_dir']}")


if __name__ == "__main__":
    cli.run(main)
