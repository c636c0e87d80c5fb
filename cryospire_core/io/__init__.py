"""Files: particle formats (STAR, .cs, cryoDRGN), MRC maps and stacks, checked arrays and mixtures, atomic writes and output-path checks."""
