"""Looking at a model's results: a self-contained HTML report and a FiftyOne dataset."""
