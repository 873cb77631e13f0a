r"""Exports a trained SSD as a SavedModel for serving (see ssd/export.py for the signatures).

  python export.py --model_dir=runs/ssd300 --export_dir=exported/ssd300 \
      [--checkpoint_path=runs/ssd300/ckpt-120000] [--overwrite]

The config is model_dir/config.json; the weights come from model_dir's latest checkpoint unless
--checkpoint_path is given. Serving example:

  detect = tf.saved_model.load("exported/ssd300").signatures["serving_default"]
  out = detect(images=tf.constant([open("dog.jpg", "rb").read()]))
  out["pixel_boxes"], out["scores"], out["class_names"], out["num_detections"]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python export.py` from anywhere: make `ssd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from absl import app, flags

from ssd import config as config_lib

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Training directory: config.json and checkpoints.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix or a directory (its latest); "
                    "default: the latest in --model_dir.")
flags.DEFINE_string("export_dir", None, "Where the SavedModel is written.")
flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --export_dir.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation precision of the "
                  "exported network; bfloat16 about doubles CPU throughput where the CPU has bf16 "
                  "instructions, with scores differing in the third significant digit.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("model_dir", "export_dir"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")

    from ssd import checkpoints
    from ssd.detector import build_inference_model
    from ssd.export import export_saved_model

    try:
        config = config_lib.load_saved_config(FLAGS.model_dir)
        checkpoint = checkpoints.find_checkpoint(FLAGS.model_dir, FLAGS.checkpoint_path)
        model = build_inference_model(config, FLAGS.precision)
        step = checkpoints.restore_checkpoint(model, checkpoint, config)
        path = export_saved_model(model, config, FLAGS.export_dir, overwrite=FLAGS.overwrite)
    except (config_lib.ConfigError, checkpoints.NoCheckpointError, checkpoints.CheckpointMismatchError,
            checkpoints.CheckpointRemovedError,
            checkpoints.DamagedCheckpointError, FileExistsError) as e:
        sys.exit(f"export.py: error: {e}")
    print(f"exported {checkpoint} (step {step}) to {path}")


if __name__ == "__main__":
    app.run(main)
