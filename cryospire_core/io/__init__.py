"""Files: particle formats (STAR, .cs, cryoDRGN), MRC maps and stacks, atomic writes, output-path checks and the run folder."""
