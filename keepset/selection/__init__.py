"""Stage 5 of the data flow: scores in, keep masks out."""
