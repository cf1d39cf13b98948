"""Training on simulated images: dataset, augmentation, loop, ``napari-sbd-train``."""
