"""Training and evaluation data: the paper's datasets on the cluster, deterministic fixtures offline."""
