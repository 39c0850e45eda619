"""The camera-side service: a watched folder and a DICOM C-STORE listener feeding one queue.

``hemoseg-edge watch IN_DIR --out OUT_DIR`` and ``hemoseg-edge dicom-listen --out OUT_DIR``;
the folder layout and the guarantees are described in ``docs/service.md`` and ``folders.py``.
"""
