"""Cross-validation of multi-environment genomic prediction: schemes CV1, CV2, CV2t, CV0, CV00
(:mod:`hetvc.cv.schemes`), one fold's fits and predictions (:mod:`hetvc.cv.task`), the runner
:func:`cross_validate` (:mod:`hetvc.cv.run`) and the summary (:mod:`hetvc.cv.result`); the
formulas are in docs/design.md §5, the use in docs/cv.md."""

from .result import CVResult
from .run import cross_validate
from .schemes import SCHEMES, Fold, cv0, cv00, cv1, cv2, cv2t, line_folds, make_folds

__all__ = ["cross_validate", "CVResult", "SCHEMES", "Fold", "cv1", "cv2", "cv2t", "cv0", "cv00", "line_folds",
           "make_folds"]
