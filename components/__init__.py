"""The pipeline's KFP components: one per step, each a thin adapter from KFP artifacts to `kr.steps`.

A component turns its artifacts into paths, calls one function of the library's public step API (`kr.steps`), and
writes the typed result as its `result` artifact (plus KFP metrics where the UI should show numbers). Components are
built by `build_components(image)`, so the image is chosen when the pipeline is compiled; the local runner runs the
same code in this environment.
"""

from __future__ import annotations

from types import SimpleNamespace

from kfp import dsl

from kr.components.audit_privacy import audit_privacy
from kr.components.evaluate_gates import evaluate_gates
from kr.components.finalize_run import finalize_run
from kr.components.plan_shards import plan_shards
from kr.components.promote import promote
from kr.components.record_rejection import record_rejection
from kr.components.regenerate import regenerate
from kr.components.resolve_config import resolve_config
from kr.components.select_generator import select_generator
from kr.components.summarize import summarize
from kr.components.train_generator import train_generator
from kr.components.train_naive import train_naive
from kr.components.train_student import train_student
from kr.components.train_teacher import train_teacher
from kr.components.validate_data import validate_data

STEP_FUNCTIONS = (
    resolve_config,
    validate_data,
    train_teacher,
    train_generator,
    select_generator,
    plan_shards,
    regenerate,
    train_student,
    train_naive,
    audit_privacy,
    evaluate_gates,
    promote,
    record_rejection,
    summarize,
    finalize_run,
)


def build_components(image: str) -> SimpleNamespace:
    """Every step as a KFP component running in `image` (which must have kr installed), by step name."""
    return SimpleNamespace(
        **{fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False) for fn in STEP_FUNCTIONS}
    )
