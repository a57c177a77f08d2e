"""`serpent train`: the training loop, its checkpoints, and the data pipeline of seeded crops."""
