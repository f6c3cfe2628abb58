"""Data validation with Great Expectations: the real splits and every synthetic shard, before they are used.

`kr.data` already refuses files it cannot read (bad MD5, keys, shapes, dtypes, label range). What it cannot see is
whether the data are fit to train and evaluate on: an image that sits in both train and val/test inflates every
held-out metric and the privacy audit's non-member set, a class with a handful of images cannot be learnt or
scored, and a shard with a NaN logit or a skewed class mix silently poisons distillation. Those checks live here,
as Great Expectations suites over small tables, so that each run leaves Data Docs (static HTML) beside its other
artifacts and a failure names every problem in plain words before any training starts.

`tables` builds the tables from images, `suites` holds the expectations and their messages, `runner` runs them.
"""

from kr.config import ValidationConfig
from kr.validation.runner import DOCS_SITE, REPORT_FILE, SHARD_KEYS, ValidationFailed, validate_real, validate_shard
from kr.validation.tables import class_count_table, image_table

__all__ = [
    "DOCS_SITE",
    "REPORT_FILE",
    "SHARD_KEYS",
    "ValidationConfig",
    "ValidationFailed",
    "class_count_table",
    "image_table",
    "validate_real",
    "validate_shard",
]
