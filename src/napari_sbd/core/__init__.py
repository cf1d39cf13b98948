"""Pure numpy/torch compute: no Qt, no napari imports here."""
