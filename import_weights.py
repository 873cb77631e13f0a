r"""Imports trained SSD weights of another implementation into a new model directory.

  python import_weights.py --source=tf1 --input=ssd300_tf1/model.ckpt-120000 --model_dir=runs/tf1
  python import_weights.py --source=caffe --input=VGG_VOC0712_SSD_300x300_iter_120000.caffemodel \
      --model_dir=runs/caffe300 [--config=RECIPE] [--set section.field=value ...]
  python import_weights.py --source=torchvision --input=ssd300_vgg16_coco-b556d3b4.pth \
      --model_dir=runs/torchvision

Sources (ssd/weights/importing.py and one module each):
  tf1          the TF1 original's SSD300 checkpoint (a prefix: FILE.index and FILE.data-*);
  caffe        the paper's Caffe SSD300 / SSD512 .caffemodel (VOC or COCO), either layer layout;
  torchvision  torchvision's ssd300_vgg16 state_dict (torch.save zip).
The recipe and the overrides that make this project compute what the source computes (input
channel order and means, anchors, padding) are chosen from the file; --config replaces the recipe
and --set overrides any field on top. The model directory gets config.json and a training
checkpoint at step 0, as training would have written them: eval.py, visualize.py and export.py
use it, and train.py --model_dir=DIR fine-tunes from it. Nothing is written when the file does
not fit the model (a variable missing, one left over or of another shape).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python import_weights.py` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

from absl import app, flags, logging

from ssd.config import loading as config_lib

FLAGS = flags.FLAGS

flags.DEFINE_enum("source", None, ["tf1", "caffe", "torchvision"], "Where the weights come from.")
flags.DEFINE_string("input", None, "The file (tf1: the checkpoint prefix).")
flags.DEFINE_string("model_dir", None, "The model directory to create (must not exist or be empty).")
flags.DEFINE_string("config", None, "A recipe name or JSON file instead of the one the file's "
                    "shapes select.")
flags.DEFINE_multi_string("set", [], "Config override section.field=value (value parsed as JSON "
                          "when it parses), applied after the source's; repeatable.")


def overrides_from_flags() -> config_lib.Overrides:
    overrides = config_lib.Overrides()
    for text in FLAGS.set:
        key, value = config_lib.parse_override(text)
        overrides.set(key, value, f"--set {text}")
    return overrides


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("source", "input", "model_dir"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    try:
        overrides = overrides_from_flags()
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from None

    from ssd.weights.importing import WeightsImportError, import_weights

    logging.set_verbosity(logging.WARNING)  # TensorFlow's saver logs its sharding at INFO

    try:
        report = import_weights(FLAGS.source, FLAGS.input, FLAGS.model_dir, FLAGS.config, overrides)
    except (WeightsImportError, config_lib.ConfigError, FileNotFoundError, ImportError,
            ValueError) as e:  # the readers name the file in their ValueErrors
        sys.exit(f"import_weights.py: error: {e}")
    config = report["config"]
    model_dir = report["model_dir"]
    if report["description"]:
        print(f"read {report['description']}")
    print(f"config: {report['recipe']} ({config.model.architecture}, {config.model.num_classes} "
          f"outputs, anchors {config.anchors.preset}, {config.data.preprocessing} with mean_rgb "
          f"{config.data.mean_rgb})")
    for field, value in report["overrides"].items():
        print(f"  {field} = {value}")
    print(f"imported {report['variables']} variables ({report['parameters']:,} values) in "
          f"{report['seconds']:.1f} s into {model_dir}: config.json, {Path(report['checkpoint']).name} "
          f"(step 0)")
    print("next:")
    print(f"  python eval.py --model_dir={model_dir} --data_dir=TEST_TFRECORDS")
    print(f"  python visualize.py --model_dir={model_dir} --images=PICTURES --output_dir=drawn")
    print(f"  python export.py --model_dir={model_dir} --export_dir=exported")


if __name__ == "__main__":
    cli.run(main)
