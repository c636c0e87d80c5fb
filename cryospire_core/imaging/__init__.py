"""Image formation: rotations, the CTF, Fourier transforms, the lattice, FSC and the Gaussian renderer (numbers in, numbers out; no files)."""
