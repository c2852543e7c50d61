"""Stage 6 of the data flow: detection metrics, dataset-quality error, benchmark runners."""
