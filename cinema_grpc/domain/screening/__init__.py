"""Cinemas, halls and their seat grids, movies and showtimes."""
