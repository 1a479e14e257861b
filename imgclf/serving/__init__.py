"""The predict function: HTTP events, inputs, safe URL fetching, the models, auth, the console.

This package and the core modules it imports (``settings``, ``errors``, ``storage``, ``layout``,
``preprocess``, ``runtime``, ``artifact``, ``captures``, ``registry``, ``feedback``) are all that
the serve image copies; they run with ``requirements-lambda.txt`` alone and never import
TensorFlow, Keras, scikit-learn or matplotlib (``tests/deploy/test_dockerfile.py`` proves it).
"""
