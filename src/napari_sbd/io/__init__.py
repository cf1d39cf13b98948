"""Readers for microscope files (DM3/DM4, Velox EMD, TIA SER, MRC, TIFF) and the TIFF writer."""
