"""`savedmodel_examples/fit_keras.py` trains, saves a `.keras` file and resumes.

The example itself checks that the resumed process's losses equal this
process's; the test runs it with few examples and checks what it wrote.
"""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "savedmodel_examples", "fit_keras.py")


def test_fit_example_resumes_from_the_keras_file_in_a_fresh_process(tmp_path):
  result = subprocess.run(
      [sys.executable, EXAMPLE, f"--output_dir={tmp_path}",
       "--train_examples=256", "--epochs=2", "--resume_epochs=2",
       "--batch_size=32"],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed" in result.stdout and "agree" in result.stdout
  with open(tmp_path / "fit_metrics.json") as f:
    metrics = json.load(f)
  steps_per_epoch = 256 // 32
  assert metrics["resumed"]["iterations"] == 4 * steps_per_epoch
  np.testing.assert_allclose(metrics["resumed"]["losses"],
                             metrics["continued"]["losses"], rtol=1e-5)
  # Training went on from the saved state, not from scratch.
  assert metrics["resumed"]["losses"][0] < metrics["train"]["loss"][0]
  assert (tmp_path / "model.keras").exists()
