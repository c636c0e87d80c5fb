"""Runs: the run folder (layout, lock, typed accessors), its config and profiles, the stages in order, and the CPU threads they use."""
