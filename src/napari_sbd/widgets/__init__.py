"""Thin napari dock widgets over :mod:`napari_sbd.core` (Qt lives only here)."""
