"""Runs on disk: ``rundir`` (run directories, resume, ``certify_run``), ``ray`` (the Ray backend),
``demo`` (the main job)."""

from .rundir import RunDir, RunError, atomic_write_bytes, certify_run, model_record, save_boxes_atomic

__all__ = ["RunDir", "RunError", "atomic_write_bytes", "certify_run", "model_record", "save_boxes_atomic"]
