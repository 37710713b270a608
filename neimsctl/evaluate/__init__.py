"""L3: evaluation: spectrum similarity, library matching, Recall@K, validation splits, eval reports."""
