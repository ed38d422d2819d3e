"""Resuming from the newest checkpoint that restores, and keeping the history.

A run that is killed, or whose disk fills up, can leave the checkpoints of a
`tf.train.CheckpointManager` damaged: a truncated or corrupted
`ckpt-N.data-*` or `ckpt-N.index` file, or a damaged or missing `checkpoint`
index file (the `CheckpointState` that names the latest checkpoint).
TensorFlow then raises from its reader (`IndexError: Read less bytes than
requested`, `DataLossError`, ...) or silently forgets every checkpoint.

`restore_newest` looks for checkpoints on disk as well as in the index file,
tries them newest first, each into fresh objects (so one that fails halfway
leaves nothing behind), names the damaged files and the error, moves the
unusable checkpoints aside, and rewrites the index file so that a
`tf.train.CheckpointManager` continues from the one that restored. With no
usable checkpoint it raises `NoUsableCheckpointError`, or starts over if
asked to.

`merge_history` and `write_json` keep a metrics file with one record per
epoch across runs, written atomically.
"""

import dataclasses
import json
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional

from absl import logging
import tensorflow as tf

STATE_FILENAME = "checkpoint"
_NUMBERED = re.compile(r"^(.*-(\d+))\.(index|data-\d{5}-of-\d{5})$")


class NoUsableCheckpointError(RuntimeError):
  """Checkpoints exist but none restores (and starting over was not asked)."""


@dataclasses.dataclass
class Unusable:
  """A checkpoint that did not restore: the files to blame and the error."""
  prefix: str
  files: List[str]
  error: str
  damaged: bool  # False: the files read, but do not match the objects.

  def describe(self) -> str:
    what = "damaged" if self.damaged else "does not match the model"
    return f"{', '.join(self.files)} ({what}: {self.error})"


@dataclasses.dataclass
class Recovered:
  """What `restore_newest` found and did.

  Attributes:
    checkpoint: The `tf.train.Checkpoint` to train with: the one the newest
      usable checkpoint was restored into, or a fresh one.
    restored: The prefix of the restored checkpoint, or None.
    unusable: The checkpoints that were tried and did not restore, newest
      first.
    state_problem: What was wrong with the `checkpoint` index file, or None.
    moved_to: The folder that the unusable files were moved to, or None.
    started_over: True if checkpoints existed and none was used.
  """
  checkpoint: tf.train.Checkpoint
  restored: Optional[str] = None
  unusable: List[Unusable] = dataclasses.field(default_factory=list)
  state_problem: Optional[str] = None
  moved_to: Optional[str] = None
  started_over: bool = False

  def summary(self) -> Dict[str, Any]:
    """A JSON-ready record of the recovery."""
    return {
        "restored": self.restored,
        "unusable": [dataclasses.asdict(u) for u in self.unusable],
        "state_problem": self.state_problem,
        "moved_to": self.moved_to,
        "started_over": self.started_over,
    }


def _step(prefix: str) -> int:
  match = re.search(r"-(\d+)$", prefix)
  return int(match.group(1)) if match else -1


def _files_of(prefix: str) -> List[str]:
  return sorted(tf.io.gfile.glob(prefix + ".index") +
                tf.io.gfile.glob(prefix + ".data-?????-of-?????"))


def _read_state(directory: str):
  """Returns (listed prefixes, latest prefix, problem or None)."""
  path = os.path.join(directory, STATE_FILENAME)
  if not tf.io.gfile.exists(path):
    return [], None, None
  try:
    state = tf.train.get_checkpoint_state(directory)
  except (ValueError, tf.errors.OpError) as e:
    return [], None, f"{path} is damaged ({type(e).__name__}: {e})"
  if state is None:
    return [], None, f"{path} is damaged (it does not parse)"
  listed = list(state.all_model_checkpoint_paths)
  if state.model_checkpoint_path not in listed:
    listed.append(state.model_checkpoint_path)
  missing = [p for p in listed if not tf.io.gfile.exists(p + ".index")]
  problem = None
  if missing:
    problem = f"{path} lists checkpoints without an .index file: {missing}"
  return listed, state.model_checkpoint_path, problem


def _find(directory: str):
  """Returns (prefixes newest first, latest in the state, state problem)."""
  listed, latest, problem = _read_state(directory)
  on_disk = set()
  for path in tf.io.gfile.glob(os.path.join(directory, "*")):
    match = _NUMBERED.match(path)
    if match:
      on_disk.add(match.group(1))
  prefixes = sorted(set(listed) | on_disk, key=lambda p: (_step(p), p),
                    reverse=True)
  if on_disk and not tf.io.gfile.exists(
      os.path.join(directory, STATE_FILENAME)):
    problem = (f"{os.path.join(directory, STATE_FILENAME)} is missing; "
               f"found {len(on_disk)} checkpoint(s) on disk")
  return prefixes, latest, problem


def _check_files(prefix: str) -> Optional[Unusable]:
  """Reads every tensor of `prefix`; returns what is damaged, or None."""
  index = prefix + ".index"
  data_files = sorted(tf.io.gfile.glob(prefix + ".data-?????-of-?????"))
  if not tf.io.gfile.exists(index):
    return Unusable(prefix, [index], "the file is missing", True)
  try:
    reader = tf.train.load_checkpoint(prefix)
  except Exception as e:  # pylint: disable=broad-except
    return Unusable(prefix, [index], f"{type(e).__name__}: {e}", True)
  try:
    for key in reader.get_variable_to_shape_map():
      reader.get_tensor(key)
  except Exception as e:  # pylint: disable=broad-except
    message = f"{type(e).__name__}: {e}"
    named = [f for f in data_files if os.path.basename(f) in message]
    if not named and not data_files:
      named = [prefix + ".data-00000-of-00001"]
    return Unusable(prefix, named or data_files, message, True)
  return None


def _try_restore(prefix: str, make_checkpoint):
  """Restores `prefix` into fresh objects; returns (checkpoint, Unusable)."""
  damage = _check_files(prefix)
  if damage is not None:
    return None, damage
  checkpoint = make_checkpoint()
  try:
    checkpoint.restore(prefix).assert_consumed()
  except Exception as e:  # pylint: disable=broad-except
    # The objects may be partly overwritten: they are dropped.
    return None, Unusable(prefix, _files_of(prefix),
                          f"{type(e).__name__}: {e}", False)
  return checkpoint, None


def _aside_folder(directory: str) -> str:
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
  folder = os.path.join(directory, f"damaged-{stamp}")
  suffix = 1
  while tf.io.gfile.exists(folder):
    suffix += 1
    folder = os.path.join(directory, f"damaged-{stamp}-{suffix}")
  return folder


def _move(paths: List[str], folder: str) -> List[str]:
  tf.io.gfile.makedirs(folder)
  moved = []
  for path in paths:
    if tf.io.gfile.exists(path):
      target = os.path.join(folder, os.path.basename(path))
      tf.io.gfile.rename(path, target, overwrite=True)
      moved.append(target)
  return moved


def _write_state(directory: str, prefixes: List[str]) -> None:
  """Writes the `checkpoint` index file listing `prefixes` (oldest first)."""
  timestamps = [tf.io.gfile.stat(p + ".index").mtime_nsec / 1e9
                for p in prefixes]
  lines = [f"model_checkpoint_path: {json.dumps(os.path.basename(prefixes[-1]))}"]
  lines += [f"all_model_checkpoint_paths: {json.dumps(os.path.basename(p))}"
            for p in prefixes]
  lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in timestamps]
  # The manager keeps (and later deletes) checkpoints newer than this.
  lines.append(f"last_preserved_timestamp: {min(timestamps) - 1.0!r}")
  path = os.path.join(directory, STATE_FILENAME)
  temporary = path + ".tmp"
  with tf.io.gfile.GFile(temporary, "w") as f:
    f.write("\n".join(lines) + "\n")
  tf.io.gfile.rename(temporary, path, overwrite=True)


def restore_newest(directory: str,
                   make_checkpoint: Callable[[], tf.train.Checkpoint],
                   start_over: bool = False,
                   start_over_flag: str = "start_over") -> Recovered:
  """Restores the newest checkpoint in `directory` that restores completely.

  Checkpoints are found in the `checkpoint` index file and on disk
  (`<name>-<number>.index` / `.data-*`), and tried by number, newest first.
  Each try reads every tensor of the checkpoint (so a damaged file is named)
  and restores it into a new `make_checkpoint()` with `assert_consumed`; a
  try that fails drops its objects, so a checkpoint that fails halfway
  leaves nothing behind. Once one restores, the newer ones that did not are
  moved to `directory/damaged-<time>/` and the index file is rewritten to
  list the checkpoints left (a damaged index file is moved there too), so a
  `tf.train.CheckpointManager` created afterwards continues from the
  restored one. Nothing is moved or rewritten when nothing is wrong.

  Args:
    directory: The `tf.train.CheckpointManager` directory.
    make_checkpoint: Returns a new `tf.train.Checkpoint` over new objects.
    start_over: With checkpoints present but none usable: if True, move them
      all aside and return a fresh `make_checkpoint()`; if False, raise.
    start_over_flag: The name of the option that sets `start_over`, for the
      error message.

  Returns:
    A `Recovered`.

  Raises:
    NoUsableCheckpointError: Checkpoints (or an index file) exist, none
      restores, and `start_over` is False. Nothing was moved.
  """
  prefixes, latest, state_problem = _find(directory)
  if state_problem:
    logging.warning("Checkpoint index file: %s.", state_problem)
  unusable = []
  restored_checkpoint, restored = None, None
  for prefix in prefixes:
    checkpoint, failure = _try_restore(prefix, make_checkpoint)
    if failure is None:
      restored_checkpoint, restored = checkpoint, prefix
      break
    logging.warning("Checkpoint %s does not restore: %s.", prefix,
                    failure.describe())
    unusable.append(failure)

  state_path = os.path.join(directory, STATE_FILENAME)
  if restored is None and not unusable and not state_problem:
    return Recovered(make_checkpoint())  # Nothing there: a new run.
  if restored is None and not start_over:
    found = [u.describe() for u in unusable] or ["no checkpoint files"]
    raise NoUsableCheckpointError(
        f"No checkpoint in {directory} restores"
        + (f" ({state_problem})" if state_problem else "") + ":\n  "
        + "\n  ".join(found) + "\nNothing was changed. Pass "
        f"--{start_over_flag} to move these files aside and train from "
        "the start.")

  result = Recovered(restored_checkpoint, restored, unusable, state_problem)
  if restored is not None and not unusable and not state_problem and (
      latest == restored):
    return result  # The normal resume: nothing to repair.

  aside = [f for u in unusable for f in _files_of(u.prefix)]
  if restored is None:
    # Starting over: every checkpoint, and the index file, goes aside.
    aside += [f for p in prefixes for f in _files_of(p)]
    result.checkpoint = make_checkpoint()
    result.started_over = True
  if (state_problem or restored is None) and tf.io.gfile.exists(state_path):
    aside.append(state_path)
  aside = [f for f in dict.fromkeys(aside) if tf.io.gfile.exists(f)]
  if aside:
    result.moved_to = _aside_folder(directory)
    moved = _move(aside, result.moved_to)
    logging.warning("Moved %d file(s) aside to %s: %s", len(moved),
                    result.moved_to,
                    ", ".join(os.path.basename(f) for f in moved))
  if restored is not None:
    kept = [p for p in prefixes if _step(p) <= _step(restored) and
            tf.io.gfile.exists(p + ".index")]
    _write_state(directory, sorted(kept, key=_step))
    logging.warning("Resuming from %s; rewrote %s to list %s.", restored,
                    state_path, [os.path.basename(p) for p in
                                 sorted(kept, key=_step)])
  else:
    logging.warning("No checkpoint in %s restores; starting over (--%s).",
                    directory, start_over_flag)
  return result


def merge_history(previous: Optional[Dict[str, Any]], start_step: int,
                  history: Dict[str, List]) -> Dict[str, List]:
  """The metrics of earlier runs up to `start_step`, then this run's.

  Args:
    previous: The metrics file of earlier runs in the same directory (with
      "losses" per step and "epochs" records), or None.
    start_step: The step this run started at: earlier records after it were
      lost with their checkpoint and are redone (and replaced) by this run.
    history: This run's "losses" and "epochs" (see `loop.train`).

  Returns:
    "losses" (one per step from 0) and "epochs" (one per epoch, in order).
  """
  previous = previous or {}
  losses = list(previous.get("losses", []))[:start_step]
  epochs = {e["epoch"]: e for e in previous.get("epochs", [])
            if e["iterations"] <= start_step}
  if len(losses) < start_step:
    logging.warning("The metrics of earlier runs have %d of the %d steps "
                    "before step %d.", len(losses), start_step, start_step)
  epochs.update({e["epoch"]: e for e in history["epochs"]})
  return {"losses": losses + list(history["losses"]),
          "epochs": [epochs[k] for k in sorted(epochs)]}


def write_json(path: str, value: Any) -> None:
  """Writes `value` to `path` atomically (a temporary file, then a rename)."""
  temporary = f"{path}.tmp-{os.getpid()}"
  try:
    with open(temporary, "w") as f:
      json.dump(value, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def read_json(path: str) -> Optional[Any]:
  """`path`'s JSON, or None if it is missing (or unreadable: moved aside)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    aside = f"{path}.unreadable-{int(time.time())}"
    os.replace(path, aside)
    logging.warning("%s is unreadable (%s); moved it to %s.", path, e, aside)
    return None
