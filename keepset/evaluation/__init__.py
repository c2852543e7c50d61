"""Stage 6 of the data flow: detection metrics, dataset-quality error, benchmark runners."""

from keepset.evaluation.metrics import auroc, detection_metrics, quality_error

__all__ = ["auroc", "detection_metrics", "quality_error"]
