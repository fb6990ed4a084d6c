"""Matrix-factorisation recall: training, tuning, evaluation and packaging of the recall component."""
