"""The constructor arguments both faces take, checked and stored one way.

Keras's thirteen arguments of `keras.optimizers.Adadelta`, in the order its
`get_config` writes them, then this library's four keyword-only ones.
"""

import re
from typing import Any, Dict, Optional, Sequence

from tf_adadelta import learning_rate as lr_lib
from tf_adadelta import validation
from tf_adadelta import variables as variables_lib

KERAS_DEFAULTS = dict(
    learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None,
    clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
    ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
    gradient_accumulation_steps=None, name="adadelta")
OWN_DEFAULTS = dict(jit_compile=None, skip_nonfinite_steps=False,
                    skip_gradients_aggregation=False, sparse_updates="keras")
# The order of `get_config` (Keras's, then ours).
_CONFIG_ORDER = ("name", "learning_rate", "weight_decay", "clipnorm",
                 "global_clipnorm", "clipvalue", "use_ema", "ema_momentum",
                 "ema_overwrite_frequency", "loss_scale_factor",
                 "gradient_accumulation_steps", "rho", "epsilon",
                 *OWN_DEFAULTS)


def check(arguments: Dict[str, Any], kwargs) -> None:
  """Validates the constructor arguments (`kwargs`: unrecognized ones).

  Raises:
    TypeError: An argument has the wrong type, or is not recognized.
    ValueError: An argument is out of range, or several clipping modes are set.
  """
  validation.check_constructor_args(kwargs=kwargs, **{
      k: v for k, v in arguments.items()
      if k != "skip_gradients_aggregation"})


def store(face, arguments: Dict[str, Any]) -> None:
  """Sets checked arguments as `face`'s attributes.

  `learning_rate` and `name` are left to the face, which keeps them in its
  own way.
  """
  for name, value in arguments.items():
    if name in ("learning_rate", "name"):
      continue
    if name in ("rho", "epsilon"):
      value = float(value)
    elif name in ("use_ema", "skip_nonfinite_steps",
                  "skip_gradients_aggregation"):
      value = bool(value)
    setattr(face, name, value)


def get_config(face, learning_rate) -> Dict[str, Any]:
  """`face`'s arguments as `keras.optimizers.Adadelta` writes them."""
  config = {name: getattr(face, name) for name in _CONFIG_ORDER
            if name not in ("name", "learning_rate")}
  config["name"] = face.name
  config["learning_rate"] = lr_lib.serialize(learning_rate)
  return {name: config[name] for name in _CONFIG_ORDER}


def from_config_args(config: Dict[str, Any], custom_objects=None
                     ) -> Dict[str, Any]:
  """Constructor arguments from `get_config()` (or a Keras Adadelta config)."""
  config = dict(config)
  if "learning_rate" in config:
    config["learning_rate"] = lr_lib.deserialize(config["learning_rate"],
                                                 custom_objects)
  return config


class WeightDecayExclusions:
  """Which variables weight decay skips (`exclude_from_weight_decay`)."""

  def __init__(self):
    self._keys = frozenset()
    self._pattern = None

  def set(self, var_list: Optional[Sequence[Any]],
          var_names: Optional[Sequence[str]]) -> None:
    """Excludes `var_list` and the variables whose name matches `var_names`."""
    self._keys = frozenset(variables_lib.key(v) for v in (var_list or []))
    self._pattern = (re.compile("|".join(sorted(set(var_names))))
                     if var_names else None)

  def uses_weight_decay(self, variable) -> bool:
    if variables_lib.key(variable) in self._keys:
      return False
    return self._pattern is None or not self._pattern.search(
        variables_lib.display_name(variable))
