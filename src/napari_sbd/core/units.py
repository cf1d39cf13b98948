"""The papers' operating point, named once (Mohan et al.; Vincent et al. 2021)."""

PAPERS_PIXEL_SIZE_PM = 6.1  #: pixel size of the papers' data, picometres
PAPERS_DOSE = 0.45  #: vacuum dose of the papers' data, counts (electrons) per pixel per frame
