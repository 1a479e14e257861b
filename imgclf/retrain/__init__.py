"""Retraining: ingesting uploads, the job lock, job records, launching, and the job itself.

``ingest`` validates and stores uploads; ``lock`` lets one job run at a time; ``records`` holds the
typed job record; ``launch`` decides and starts a job on a backend; ``job`` is the job every
backend runs (``python -m imgclf.retrain.job``), which runs the pipeline's stages in subprocesses.
``python -m imgclf.retrain list | request`` is the command line. Only ``job`` imports the training
stack (scikit-learn, matplotlib; TensorFlow only in its subprocesses).
"""
