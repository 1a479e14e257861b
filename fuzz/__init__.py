"""The hostile-input harness: every kind of bad, odd and costly request through the real handler.

``cases`` makes the requests (the pinned Pillow's test images, seeded mutations, files made by
``craft``, malformed requests, refused URLs), ``runner`` answers each in a forked, limited child of
a warmed-up parent, ``report`` counts the outcomes. ``python -m fuzz`` (``make fuzz``) runs it all
and writes docs/fuzz.md; tests/serving/test_hostile_input.py runs the part made by code.
"""
