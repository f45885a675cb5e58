"""The bottom layer: files and the output policy, manifests, options and commands, records,
shards, models, statistics. It imports no other layer of rlaif."""
