"""Trainers: one accelerate loop (`training.loop.train`) and one small module per family."""
