"""Paper B's study: contrastive vs triplet loss, variance and greediness (see run.py)."""
