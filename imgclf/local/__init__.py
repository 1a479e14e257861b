"""The local stack: S3/SQS on loopback, an API gateway and an S3-event bridge, with one command.

Run it with ``python -m imgclf.local`` (``make run``). Nothing here is imported by the Lambda code.
"""
