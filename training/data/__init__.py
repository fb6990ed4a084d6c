"""Data for the build: the seeded shop generator and real data sets (MovieLens-100K)."""
