"""Makes tests/assets/shapes_ssd300_cpu/: a trained model for the tests that need one that detects.

The TFLite tests compare quantized and float detections, which means something only for a model
whose scores are spread out and that finds the objects. Training one takes 5 (AVX-512) to 14
(AVX2 only) minutes on 2 cores, so it is trained once, by this script, and kept: the demo recipe
(configs/ssd300_shapes_cpu.json, SSD300 at 1/8 width) from scratch for TRAIN_STEPS steps on the
synthetic shapes set of `dataset/make_shapes.py` (NUM_TRAIN images, seed 0). The model directory
keeps the resolved config and a weights-only checkpoint (no optimizer slots), as
`import_weights.py` writes them; the apps and `load_saved_config` read it like any model directory.

    python tests/assets/make_shapes_model.py    # rewrites tests/assets/shapes_ssd300_cpu/
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.assets.shapes_model import (CLASSES, LR_BOUNDARIES, MODEL_DIR, NUM_TEST, NUM_TRAIN,  # noqa: E402
                                       SEED, TRAIN_STEPS)


def _run(command):
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main():
    import tensorflow as tf

    from dataset.make_shapes import make_shapes_dataset
    from ssd.config.loading import load_saved_config, save_config
    from ssd.inference.detector import build_inference_model
    from ssd.modeling import checkpoints

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        make_shapes_dataset(base / "voc", NUM_TRAIN, NUM_TEST, seed=SEED)
        _run([sys.executable, "dataset/convert_voc.py", f"--voc_root={base / 'voc'}", "--splits=trainval",
              f"--classes={','.join(CLASSES)}", f"--output_directory={base / 'records'}",
              "--name=shapes_trainval"])
        trained = base / "model"
        _run([sys.executable, "train.py", "--config=ssd300_shapes_cpu",
              f"--data_dir={base / 'records'}/shapes_trainval-*", f"--model_dir={trained}",
              "--pretrained=none", f"--max_steps={TRAIN_STEPS}", "--set=train.save_checkpoints_steps=1000",
              f"--set=train.lr_boundaries={LR_BOUNDARIES}", f"--set=train.seed={SEED}"])
        config = load_saved_config(trained)
        model = build_inference_model(config)
        step = checkpoints.restore_checkpoint(model, tf.train.latest_checkpoint(str(trained)), config)
        shutil.rmtree(MODEL_DIR, ignore_errors=True)
        MODEL_DIR.mkdir(parents=True)
        save_config(config, MODEL_DIR)
        global_step = tf.Variable(step, dtype=tf.int64, trainable=False, name=checkpoints.GLOBAL_STEP)
        checkpoints.Checkpointer(checkpoints.training_items(model, global_step), str(MODEL_DIR),
                                 max_to_keep=1).save(step)
    print(f"wrote {MODEL_DIR} (step {step})")


if __name__ == "__main__":
    main()
