"""Emulated clusters for tests and demos: kmock's API emulator and the twin that plays the
cluster dynamics. Needs the `emulate` extra (kubernetes, kmock)."""
