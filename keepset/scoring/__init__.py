"""Stage 4 of the data flow: each scorer turns (model, reference, data or recorded dynamics) into one float per sample."""
