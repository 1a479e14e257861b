"""Serverless image classification on AWS Lambda with a TFLite runtime.

Modules that the serving path imports (``errors``, ``settings``, ``preprocess``, ``runtime`` and the
serving modules) must never import TensorFlow or Keras; training modules may.
"""

__version__ = "0.1.0"
