"""Cross-validation of multi-environment genomic prediction: schemes CV1, CV2, CV0, CV00
(:mod:`hetvc.cv.schemes`) and :func:`cross_validate` (:mod:`hetvc.cv.run`)."""

from .run import CVResult, cross_validate
from .schemes import SCHEMES, Fold, cv0, cv00, cv1, cv2, line_folds, make_folds

__all__ = ["cross_validate", "CVResult", "SCHEMES", "Fold", "cv1", "cv2", "cv0", "cv00", "line_folds",
           "make_folds"]
