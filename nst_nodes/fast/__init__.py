"""Fast style transfer: a feed-forward network (Johnson et al. 2016) trained on a graph's own objective.

network.py is the network, train.py trains it on an objective (the terms the optimizer minimizes), and
store.py keeps it in safetensors files that no one can hide code in."""
