"""Looking at an enhanced dataset: figures drawn from the shards."""
