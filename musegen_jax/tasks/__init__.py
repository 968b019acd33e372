"""Training objectives, one file each: each gives init, train_step, eval_step, sample."""
