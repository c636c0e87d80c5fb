"""Runs: the stages in order in a run folder, and the machine they run on (threads)."""
