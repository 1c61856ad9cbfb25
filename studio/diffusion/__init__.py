"""Diffusion math: noise schedules, scheduler selection, guidance and losses."""
